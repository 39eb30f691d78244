#!/usr/bin/env bash
# Install Atelier into the current Python (3.11+) with exactly the versions CI tested.
#   requirements/torch-cpu.txt  torch 2.13.0, the CPU build (skipped when a torch is installed:
#                               on a GPU host install your CUDA build of torch 2.10–2.14 first)
#   requirements/lock.txt       every other package, pinned with hashes (refresh: ./scripts/lock.sh)
# --no-deps everywhere: the lock is the whole closure, so nothing is resolved on this machine;
# tests/test_lock.py fails if the environment ever differs from it.
set -euo pipefail
cd "$(dirname "$0")/.."
pip=(python -m pip install --quiet --disable-pip-version-check)
if ! python -c "import torch" 2>/dev/null; then
  "${pip[@]}" --require-hashes --no-deps -r requirements/torch-cpu.txt
fi
"${pip[@]}" --require-hashes --no-deps -r requirements/lock.txt
"${pip[@]}" --no-deps --no-build-isolation -e .
