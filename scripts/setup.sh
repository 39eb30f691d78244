#!/usr/bin/env bash
# Install Atelier and its dependencies into the current Python (3.11+).
# torch is installed first and pinned: an unpinned torch pulls a CUDA build of several GB.
# torch 2.13.0 is the CPU build; on a GPU host install your CUDA build of torch (2.4–2.14)
# before running this, and it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
pip=(python -m pip install --quiet --disable-pip-version-check)
python -c "import torch" 2>/dev/null || "${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[dev]"
