# syntax=docker/dockerfile:1
# Atelier Discord bot: discord.py + storage, NO torch. Build from the repository root:
#   docker build -f docker/bot.Dockerfile -t atelier-bot .
FROM python:3.11.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ATELIER_DATA_DIR=/data \
    ATELIER_DISCORD__LINK_HOST=0.0.0.0 \
    ATELIER_DISCORD__LINK_PORT=8765

# Same uid/gid as the worker image, so both can write the shared /data volume.
RUN groupadd --system --gid 10001 atelier \
    && useradd --system --uid 10001 --gid atelier --create-home --home-dir /home/atelier atelier \
    && mkdir -p /data \
    && chown atelier:atelier /data

WORKDIR /app

# Dependencies first (cached layer): hashed and pinned by ./scripts/lock.sh, torch-free.
COPY requirements/bot.txt requirements/bot.txt
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/bot.txt

# The project itself without its declared dependencies (pyproject lists torch).
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
EXPOSE 8765

# The bot is healthy when its signed-download-link server accepts connections.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "python /usr/local/bin/atelier-healthcheck tcp \"${ATELIER_DISCORD__LINK_PORT:-8765}\""]

ENTRYPOINT ["atelier"]
CMD ["bot"]
