"""Container health check: `db` opens the configured database and runs SELECT 1;
`tcp PORT` checks that something listens on 127.0.0.1:PORT (the bot's link server).
Exit 0 when healthy, 1 otherwise. Imports only storage (no torch, no discord)."""

from __future__ import annotations

import socket
import sys


def check_db() -> None:
    from sqlalchemy import text

    from atelier.settings import get_settings
    from storage.db import make_engine

    engine = make_engine(get_settings().db_url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def check_tcp(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=3):
        pass


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["tcp"] and len(argv) == 2:
            check_tcp(int(argv[1]))
        elif argv == ["db"]:
            check_db()
        else:
            print("usage: atelier-healthcheck db | tcp PORT", file=sys.stderr)
            return 2
    except Exception as error:  # any failure means unhealthy
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
