"""`atelier db upgrade|current`."""

from __future__ import annotations

import argparse

from atelier.settings import get_settings
from storage.db import make_engine
from storage.migrate import current_revision, head_revision, upgrade


def db_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="atelier db", description="Database schema.")
    parser.add_argument("action", choices=["upgrade", "current"])
    args = parser.parse_args(argv)
    settings = get_settings()
    engine = make_engine(settings.db_url)
    if args.action == "upgrade":
        before = current_revision(engine)
        upgrade(engine)
        print(f"database at {head_revision()} (was {before or 'empty'})")
    else:
        print(f"database: {current_revision(engine) or 'empty'}; code: {head_revision()}")
    return 0
