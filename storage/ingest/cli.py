"""`atelier ingest ZIP ...`: ingest a zip from the command line and record the dataset row.

Exit codes: 0 accepted, 2 refused (one `error:` line on stderr), 1 unexpected failure
(also one `error:` line; never a traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from storage.ingest.errors import IngestError
from storage.ingest.options import METHODS, IngestOptions
from storage.ingest.pipeline import IngestResult, ingest_zip
from storage.ingest.report import render_report_text

EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 2


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one `error:` line instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="atelier ingest", description="Ingest a zip of images as a dataset.")
    parser.add_argument("zip", type=Path, help="the zip of images (and optional captions)")
    parser.add_argument("--trigger", default="", help="trigger phrase added to every caption")
    parser.add_argument("--caption-prefix", default="", help="text added before every caption")
    parser.add_argument("--method", choices=METHODS, default="lora")
    parser.add_argument("--resolution", type=int, default=512, help="training resolution")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def run_ingest_cli(argv: list[str]) -> int:
    """Parse, ingest, record, print; returns the process exit code."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as error:
        return _fail(str(error), EXIT_REFUSED)
    except SystemExit as done:  # --help
        return int(done.code or 0)
    try:
        result = _ingest(args)
    except IngestError as error:
        return _fail(error.message, EXIT_REFUSED)
    except Exception as error:  # settings or database trouble: one line, no traceback
        return _fail(f"{type(error).__name__}: {error}".splitlines()[0], EXIT_FAILED)
    _print(result, as_json=args.json)
    return EXIT_OK


def _ingest(args: argparse.Namespace) -> IngestResult:
    from storage.settings import get_settings

    settings = get_settings()
    zip_path: Path = args.zip
    if not zip_path.is_file():
        raise IngestError(f"no such file: {zip_path}")
    options = IngestOptions(
        trigger=args.trigger,
        caption_prefix=args.caption_prefix,
        method=args.method,
        resolution=args.resolution,
    )
    result = ingest_zip(zip_path, settings.datasets_dir, options, settings.limits)
    _record(settings, result)
    return result


def _record(settings: Any, result: IngestResult) -> None:
    """Insert the Dataset row (the same content gives the same row)."""
    from storage.datasets import record_dataset
    from storage.db import make_engine, session_scope
    from storage.migrate import ensure_schema

    engine = make_engine(settings.db_url)
    try:
        ensure_schema(engine)
        with session_scope(engine) as session:
            record_dataset(session, result)
    finally:
        engine.dispose()


def _print(result: IngestResult, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
        return
    state = "reused" if result.reused else "created"
    print(f"dataset {result.dataset_id} ({state}) at {result.path}")
    print(render_report_text(result.report))


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
