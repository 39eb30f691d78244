"""Queue throughput: claims per second with 1 and 4 worker processes, on SQLite and (when
ATELIER_TEST_POSTGRES_URL or --postgres is given) PostgreSQL. Prints JSON.

    python bench/queue.py [--jobs 400] [--postgres postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

# This file is named like the standard library's `queue`: run from the repository root instead
# of this folder, or psycopg would import this script as `queue`.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from storage.db import make_engine, session_scope  # noqa: E402
from storage.jobs import enqueue  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from storage.models import Dataset, Job  # noqa: E402

CLAIMER = """
import sys, time
from storage.db import make_engine
from storage.jobs import claim
engine = make_engine(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
start = time.time()
n = 0
while claim(engine, sys.argv[2]) is not None:
    n += 1
print(n, start, time.time())
"""


def fill(url: str, count: int) -> None:
    engine = make_engine(url)
    upgrade(engine)
    with session_scope(engine) as session:
        session.add(Dataset(id="bench", path="/tmp/bench", images=1))
        session.flush()
        for index in range(count):
            enqueue(
                session,
                Job(
                    owner_id=index % 10,
                    name="b",
                    method="lora",
                    base_model="tiny",
                    dataset_id="bench",
                    config={"steps": 1},
                ),
            )
    engine.dispose()


def run(url: str, workers: int, count: int) -> dict[str, float]:
    fill(url, count)
    root = Path(__file__).resolve().parents[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, url, f"w{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
        )
        for i in range(workers)
    ]
    for proc in procs:  # imports done before the clock starts
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    rows = [proc.communicate()[0].split() for proc in procs]
    claimed = sum(int(row[0]) for row in rows)
    seconds = max(float(r[2]) for r in rows) - min(float(r[1]) for r in rows)
    assert claimed == count, (claimed, count)
    return {
        "workers": workers,
        "jobs": count,
        "seconds": round(seconds, 3),
        "claims_per_second": round(count / seconds, 1),
    }


def postgres_db(base_url: str) -> str:
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{base_url.rsplit('/', 1)[0]}/{name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--postgres", default=os.environ.get("ATELIER_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"sqlite": []}
    with tempfile.TemporaryDirectory() as folder:
        for workers in (1, 4):
            url = f"sqlite:///{folder}/q{workers}.db"
            results["sqlite"].append(run(url, workers, args.jobs))
    if args.postgres:
        results["postgres"] = [run(postgres_db(args.postgres), w, args.jobs) for w in (1, 4)]
    print(json.dumps({"benchmark": "queue", "cpu_count": os.cpu_count(), **results}, indent=2))


if __name__ == "__main__":
    main()
