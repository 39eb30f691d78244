"""The `atelier` console command: one entry point, subcommands imported only when used.

Heavy packages (torch, diffusers, discord.py) are imported inside each subcommand, so
`atelier --help` and `atelier db upgrade` start at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from atelier.settings import AtelierSettings, get_settings, load_settings
from storage.settings import SettingsError

SUBCOMMANDS: dict[str, str] = {
    "serve": "run the bot and one worker per GPU, supervised",
    "bot": "run the Discord bot only",
    "worker": "run one trainer worker (claims jobs from the database)",
    "train": "train headless from a dataset or a config file",
    "ingest": "check a dataset zip and store it",
    "dataset": "named datasets: add, list, show, remove",
    "generate": "render a prompt with a trained model file",
    "demo": "run the whole product offline against a local Discord",
    "doctor": "check settings, database, models, GPU and disk",
    "db": "database schema: upgrade, current",
}


def _run_db(argv: list[str]) -> int:
    from atelier.db_cli import db_cli

    return db_cli(argv)


def _run_ingest(argv: list[str]) -> int:
    from atelier.dataset_cli import ingest_cli

    return ingest_cli(argv)


def _run_dataset(argv: list[str]) -> int:
    from atelier.dataset_cli import dataset_cli

    return dataset_cli(argv)


def _run_train(argv: list[str]) -> int:
    from trainer.train_cli import train_cli

    return train_cli(argv, load_settings)


def _run_generate(argv: list[str]) -> int:
    from trainer.generate import generate_cli

    return generate_cli(argv)


def _run_worker(argv: list[str]) -> int:
    from trainer.worker import worker_cli

    return worker_cli(argv, get_settings)


def _run_bot(argv: list[str]) -> int:
    from bot.run import bot_cli

    return bot_cli(argv, get_settings)


def _run_serve(argv: list[str]) -> int:
    from atelier.serve import serve_cli

    return serve_cli(argv)


def _run_demo(argv: list[str]) -> int:
    from atelier.demo import demo_cli

    return demo_cli(argv)


def _run_doctor(argv: list[str]) -> int:
    from atelier.doctor import doctor_cli

    return doctor_cli(argv)


HANDLERS: dict[str, Callable[[list[str]], int]] = {
    "serve": _run_serve,
    "bot": _run_bot,
    "worker": _run_worker,
    "train": _run_train,
    "ingest": _run_ingest,
    "dataset": _run_dataset,
    "generate": _run_generate,
    "demo": _run_demo,
    "doctor": _run_doctor,
    "db": _run_db,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atelier",
        description="Train Stable Diffusion LoRA, DoRA and embeddings from Discord.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in SUBCOMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def _settings_or_none() -> AtelierSettings | None:
    try:
        return get_settings()
    except SettingsError:
        return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    namespace, rest = parser.parse_known_args(argv[:1])
    try:
        return HANDLERS[namespace.command](argv[1:] + rest)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # the traceback, with passwords and tokens masked
        from storage.redact import describe_crash

        print(describe_crash(error, _settings_or_none()), file=sys.stderr, end="")
        return 1


if __name__ == "__main__":
    sys.exit(main())
