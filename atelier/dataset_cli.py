"""Datasets from the command line: `atelier ingest ZIP` (check a zip and store it, unnamed) and
`atelier dataset add|list|show|remove` (named datasets). One parser style, one runner.

CLI datasets have no guild (guild_id None). Exit codes: 0 done, 2 refused (one `error:` line
on stderr), 1 unexpected failure (also one `error:` line; never a traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


class Refused(Exception):
    """A refusal the user should read (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise Refused(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="atelier dataset", description="Named datasets.")
    actions = parser.add_subparsers(
        dest="action", metavar="ACTION", required=True, parser_class=_Parser
    )
    add = actions.add_parser("add", help="ingest a zip and store it under a name")
    add.add_argument("zip", type=Path)
    add.add_argument("--name", required=True)
    add.add_argument("--trigger", default="")
    add.add_argument("--caption-prefix", default="")
    add.add_argument("--description", default=None)
    add.add_argument("--json", action="store_true")
    listing = actions.add_parser("list", help="list the datasets")
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", help="a dataset's report")
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    remove = actions.add_parser("remove", help="delete a dataset and its folder")
    remove.add_argument("name")
    return parser


def build_ingest_parser() -> argparse.ArgumentParser:
    from storage.ingest.options import METHODS

    parser = _Parser(prog="atelier ingest", description="Ingest a zip of images as a dataset.")
    parser.add_argument("zip", type=Path, help="the zip of images (and optional captions)")
    parser.add_argument("--trigger", default="", help="trigger phrase added to every caption")
    parser.add_argument("--caption-prefix", default="", help="text added before every caption")
    parser.add_argument("--method", choices=METHODS, default="lora")
    parser.add_argument("--resolution", type=int, default=512, help="training resolution")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def dataset_cli(argv: list[str]) -> int:
    """`atelier dataset ACTION ...`; returns the process exit code."""
    return _run(build_parser(), argv, lambda args: ACTIONS[args.action](args), "dataset refused: ")


def ingest_cli(argv: list[str]) -> int:
    """`atelier ingest ZIP ...`: ingest, record the dataset row, print; the exit code."""
    return _run(build_ingest_parser(), argv, _ingest, "")


def _run(
    parser: argparse.ArgumentParser,
    argv: list[str],
    action: Callable[[argparse.Namespace], int],
    refused: str,
) -> int:
    """Parse and act; every failure is one `error:` line and an exit code, never a traceback."""
    try:
        args = parser.parse_args(argv)
    except Refused as error:
        return _fail(str(error), EXIT_REFUSED)
    except SystemExit as done:  # --help
        return int(done.code or 0)
    from storage.datasets import DatasetRefused
    from storage.ingest import IngestError

    try:
        return action(args)
    except IngestError as error:
        return _fail(f"{refused}{error.message}", EXIT_REFUSED)
    except (Refused, DatasetRefused) as error:
        return _fail(str(error), EXIT_REFUSED)
    except Exception as error:  # settings or database trouble: one line, no traceback
        return _fail(f"{type(error).__name__}: {error}".splitlines()[0], EXIT_FAILED)


def _engine(settings: Any) -> Any:
    from storage.db import make_engine
    from storage.migrate import ensure_schema

    engine = make_engine(settings.db_url)
    ensure_schema(engine)
    return engine


def _summary(row: Any) -> dict[str, Any]:
    return {
        "name": row.name,
        "id": row.id,
        "images": row.images,
        "path": row.path,
        "description": row.description,
        "created_at": row.created_at.isoformat() if row.created_at else None,
    }


def _ingest(args: argparse.Namespace) -> int:
    """Ingest an unnamed dataset and record its row (the same content gives the same row)."""
    from atelier.settings import get_settings
    from storage.datasets import record_dataset
    from storage.db import session_scope
    from storage.ingest import IngestError, IngestOptions, ingest_zip, render_report_text

    settings = get_settings()
    if not args.zip.is_file():
        raise IngestError(f"no such file: {args.zip}")
    options = IngestOptions(
        trigger=args.trigger,
        caption_prefix=args.caption_prefix,
        method=args.method,
        resolution=args.resolution,
    )
    result = ingest_zip(args.zip, settings.datasets_dir, options, settings.limits)
    engine = _engine(settings)
    try:
        with session_scope(engine) as session:
            record_dataset(session, result)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        state = "reused" if result.reused else "created"
        print(f"dataset {result.dataset_id} ({state}) at {result.path}")
        print(render_report_text(result.report))
    return EXIT_OK


def _add(args: argparse.Namespace) -> int:
    from atelier.settings import get_settings
    from storage.datasets import add_named_dataset, clean_name, find_dataset
    from storage.db import session_scope
    from storage.ingest import IngestOptions, ingest_zip

    settings = get_settings()
    name = clean_name(args.name)
    if not args.zip.is_file():
        raise Refused(f"no such file: {args.zip}")
    engine = _engine(settings)
    try:
        with session_scope(engine) as session:
            if find_dataset(session, None, name) is not None:
                raise Refused(f"there is already a dataset named '{name}'")
        options = IngestOptions(trigger=args.trigger, caption_prefix=args.caption_prefix)
        result = ingest_zip(args.zip, settings.datasets_dir, options, settings.limits)
        with session_scope(engine) as session:
            row = add_named_dataset(
                session, result, guild_id=None, name=name, description=args.description
            )
            data = {**_summary(row), "report": dict(row.report)}
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(data, ensure_ascii=False))
    else:
        print(f"dataset {data['name']} ({data['images']} images) stored as {data['id']}")
        print(report_text(data["report"]))
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from atelier.settings import get_settings
    from storage.datasets import list_datasets
    from storage.db import session_scope

    engine = _engine(get_settings())
    try:
        with session_scope(engine) as session:
            rows = [_summary(r) for r in list_datasets(session, None)]
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    elif not rows:
        print("no datasets")
    else:
        for row in rows:
            about = f" — {row['description']}" if row["description"] else ""
            print(f"{row['name']}\t{row['images']} images\t{row['id']}{about}")
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    from atelier.settings import get_settings
    from storage.datasets import caption_samples, find_dataset
    from storage.db import session_scope

    engine = _engine(get_settings())
    try:
        with session_scope(engine) as session:
            row = find_dataset(session, None, " ".join(args.name.split()))
            if row is None:
                raise Refused(f"no dataset named '{args.name}'")
            data = {**_summary(row), "report": dict(row.report)}
    finally:
        engine.dispose()
    samples = caption_samples(Path(data["path"]))
    if args.json:
        print(json.dumps({**data, "caption_samples": samples}, ensure_ascii=False))
        return EXIT_OK
    print(f"dataset {data['name']} ({data['images']} images) {data['id']} at {data['path']}")
    if data["description"]:
        print(data["description"])
    print(report_text(data["report"]))
    for sample in samples:
        concept = f"[{sample['concept']}] " if sample.get("concept") else ""
        print(f"caption {sample.get('file')}: {concept}{sample.get('text') or '(none)'}")
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    from atelier.settings import get_settings
    from storage.datasets import delete_folder, find_dataset, remove_dataset
    from storage.db import session_scope

    settings = get_settings()
    engine = _engine(settings)
    try:
        with session_scope(engine) as session:
            row = find_dataset(session, None, " ".join(args.name.split()))
            if row is None:
                raise Refused(f"no dataset named '{args.name}'")
            name = row.name
            folder = remove_dataset(session, row)
    finally:
        engine.dispose()
    delete_folder(folder, settings.datasets_dir)
    print(f"removed dataset {name}")
    return EXIT_OK


def report_text(report: dict[str, Any]) -> str:
    """The stored QA report (a dict) as plain lines."""
    skipped = report.get("skipped") or []
    lines = [f"{report.get('images', 0)} images, {len(skipped)} skipped"]
    if report.get("trigger"):
        lines.append(f"trigger: {report['trigger']}")
    captions = ", ".join(f"{k} {n}" for k, n in (report.get("captions") or {}).items() if n)
    lines.append(f"captions: {captions or 'none'}")
    if report.get("buckets"):
        lines.append("buckets: " + ", ".join(f"{k} ({n})" for k, n in report["buckets"].items()))
    for concept in report.get("concepts") or []:
        caps = concept.get("captions") or {}
        captioned = int(caps.get("sidecar", 0)) + int(caps.get("metadata", 0))
        lines.append(
            f"concept '{concept.get('trigger')}': {concept.get('images')} images × "
            f"{concept.get('repeats', 1)} repeats, {captioned} captioned, "
            f"{concept.get('held_out', 0)} held out"
        )
    if report.get("held_out"):
        lines.append(f"held out from training: {len(report['held_out'])}")
    elif report.get("held_out_note"):
        lines.append(str(report["held_out_note"]))
    lines += [f"skipped {s['file']}: {s['reason']}" for s in skipped]
    lines += [f"warning: {w}" for w in report.get("warnings") or []]
    lines += [f"advice: {a}" for a in report.get("advice") or []]
    return "\n".join(lines)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


ACTIONS = {"add": _add, "list": _list, "show": _show, "remove": _remove}
