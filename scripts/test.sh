#!/usr/bin/env bash
# Run the whole test suite: starts a throw-away PostgreSQL on 127.0.0.1 so the database tests
# run on both backends, then pytest on two workers. pytest's "no tests collected" (exit 5)
# counts as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ATELIER_TEST_POSTGRES_URL:-}" ]; then
  if url=$(.ci/postgres.sh); then
    export ATELIER_TEST_POSTGRES_URL="$url"
  else
    echo "warning: could not start PostgreSQL; its tests will be skipped" >&2
  fi
fi
# Two workers (pytest-xdist; ATELIER_TEST_WORKERS to change, 0 for one process): much of the
# suite waits on subprocesses, sockets and single-threaded training, so two cores run two at once.
# worksteal: the few long tests do not hold a queue of short ones behind them.
python -m pytest -q -p no:cacheprovider -n "${ATELIER_TEST_WORKERS:-2}" --dist worksteal "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
