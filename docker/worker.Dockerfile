# syntax=docker/dockerfile:1
# Atelier trainer worker (GPU): torch from the CUDA wheel index + diffusers/peft/accelerate.
# Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t atelier-worker .
# Override the CUDA build of torch to match the host driver, e.g.
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
#
# The torch wheels bundle the CUDA user-space libraries (cuBLAS, cuDNN, ...), so the "base"
# CUDA image is enough: it supplies the NVIDIA container-runtime settings, not duplicate libs.
FROM nvidia/cuda:12.8.1-base-ubuntu22.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    ATELIER_DATA_DIR=/data \
    ATELIER_WORKER__DEVICE=cuda \
    HF_HOME=/data/cache/huggingface

# Python 3.11 from Ubuntu 22.04 (jammy-updates) in a virtual environment.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && pip install --no-cache-dir --upgrade "pip==25.2"

# Same uid/gid as the bot image, so both can write the shared /data volume.
RUN groupadd --system --gid 10001 atelier \
    && useradd --system --uid 10001 --gid atelier --create-home --home-dir /home/atelier atelier \
    && mkdir -p /data \
    && chown atelier:atelier /data

WORKDIR /app

# torch first, from the pinned CUDA index (large, rarely changes: its own layer).
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# The rest of the dependencies, hashed and pinned by ./scripts/lock.sh (torch excluded; its
# CUDA build above is kept). --no-deps: the lock is the whole closure.
COPY requirements/worker.txt requirements/worker.txt
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/worker.txt \
    && pip check

# The project itself; its declared dependencies are all installed above.
COPY pyproject.toml README.md* ./
COPY atelier atelier
COPY storage storage
COPY bot bot
COPY trainer trainer
COPY discord_emulator discord_emulator
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info
COPY docker/healthcheck.py /usr/local/bin/atelier-healthcheck

USER 10001:10001
WORKDIR /home/atelier
VOLUME ["/data"]

# The worker is healthy while it can reach the shared database (SELECT 1).
HEALTHCHECK --interval=60s --timeout=20s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/bin/atelier-healthcheck", "db"]

ENTRYPOINT ["atelier"]
CMD ["worker"]
