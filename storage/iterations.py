"""Iterations (`/iterate`): candidates rendered by a kept model, curated by vote into the next
dataset version (lineage: `storage.lineage`; side-by-side comparisons: `storage.comparisons`).

The loop the strongest teams run: a finalized model renders many candidates of its character
in new contexts; the team keeps the on-model ones by vote; the kept images (captioned with the
prompt that made them) plus the original images become the next dataset version; the next job
trains on it with the same settings or exactly one setting changed; `/compare` renders both
models side by side.

Like `/generate`, the bot asks (a row), a worker renders it in its turn in the fair order with
training jobs (`storage.fair`; a lease with a heartbeat, `storage.requests`), completes it with an
outbox event in the same transaction, and the bot says it.
Events here carry no `job_id`, so the notifier routes them by kind (see ITERATION_KINDS).
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from storage.datasets import record_dataset
from storage.db import session_scope
from storage.events import emit
from storage.ingest import IngestOptions, IngestResult, ingest_zip
from storage.lineage import context_spread, dataset_version, newest_dataset
from storage.models import (
    Candidate,
    CandidateVote,
    Checkpoint,
    Dataset,
    DatasetLineage,
    Iteration,
    Job,
    utcnow,
)
from storage.requests import Lease, claim_oldest, holds, mark_failed
from storage.settings import Limits
from storage.states import JobState

MAX_CANDIDATES = 40
PAGE_SIZE = 10  # Discord: at most 10 attachments per message

ITERATION_RENDERED = "iteration_rendered"
ITERATION_FAILED = "iteration_failed"
ITERATION_FINISHED = "iteration_finished"
COMPARISON_RENDERED = "comparison_rendered"
COMPARISON_FAILED = "comparison_failed"
ITERATION_KINDS = frozenset(
    {
        ITERATION_RENDERED,
        ITERATION_FAILED,
        ITERATION_FINISHED,
        COMPARISON_RENDERED,
        COMPARISON_FAILED,
    }
)

KEEP, DISCARD = 1, -1


class IterationRefused(ValueError):
    """A request the bot answers with one line (unknown model, not finalized, bad count…)."""


class NothingToFinish(RuntimeError):
    """The iteration is not waiting for votes (not rendered yet, or already finished)."""


# --- shared worker-side helpers --------------------------------------------------------------


def winner_of(session: Session, job_id: int) -> tuple[Job, Checkpoint]:
    """A finalized job and its winning checkpoint (with its file), or `IterationRefused`."""
    job = session.get(Job, job_id)
    if job is None:
        raise IterationRefused(f"there is no job #{job_id}")
    checkpoint = session.get(Checkpoint, job.winner_checkpoint_id or 0)
    if job.state != JobState.FINALIZED or checkpoint is None or checkpoint.deleted:
        raise IterationRefused(f"job #{job_id} is not a finalized model")
    return job, checkpoint


# --- iterations ------------------------------------------------------------------------------


def request_iteration(
    session: Session,
    *,
    guild_id: int | None,
    channel_id: int | None,
    user_id: int,
    job_id: int,
    count: int,
    contexts: list[str] | None = None,
) -> Iteration:
    if not 1 <= count <= MAX_CANDIDATES:
        raise IterationRefused(f"count must be between 1 and {MAX_CANDIDATES}")
    job, checkpoint = winner_of(session, job_id)
    if guild_id is not None and job.guild_id not in (None, guild_id):
        raise IterationRefused(f"there is no job #{job_id}")
    iteration = Iteration(
        guild_id=guild_id,
        channel_id=channel_id,
        user_id=user_id,
        job_id=job_id,
        checkpoint_id=checkpoint.id,
        dataset_id=newest_dataset(session, job.dataset_id).id,  # type: ignore[arg-type]
        count=count,
        contexts=[c.strip() for c in contexts or [] if c.strip()][:20],
    )
    session.add(iteration)
    session.flush()
    return iteration


def claim_iteration(engine: Engine, worker_id: str) -> Iteration | None:
    return claim_oldest(engine, Iteration, worker_id)


def iteration_inputs(engine: Engine, iteration_id: int) -> tuple[Iteration, Job, Checkpoint]:
    with session_scope(engine) as session:
        iteration = session.get(Iteration, iteration_id)
        assert iteration is not None
        job = session.get(Job, iteration.job_id)
        checkpoint = session.get(Checkpoint, iteration.checkpoint_id)
        assert job is not None and checkpoint is not None
        return iteration, job, checkpoint


def complete_iteration(
    engine: Engine,
    iteration_id: int,
    candidates: list[dict[str, Any]],
    deadline: datetime,
    *,
    lease: Lease | None = None,
) -> bool:
    """Store the rendered candidates (dicts of Candidate fields) and ask the bot to post them;
    False (nothing written) when `lease` is no longer the iteration's claim."""
    with session_scope(engine) as session:
        iteration = session.get(Iteration, iteration_id)
        assert iteration is not None
        if not holds(iteration, lease):
            return False
        for position, fields in enumerate(candidates, start=1):
            session.add(Candidate(iteration_id=iteration_id, position=position, **fields))
        iteration.state, iteration.deadline = "voting", deadline
        emit(
            session,
            ITERATION_RENDERED,
            None,
            iteration_id=iteration_id,
            channel_id=iteration.channel_id,
            user_id=iteration.user_id,
        )
        return True


def fail_iteration(
    engine: Engine, iteration_id: int, reason: str, *, lease: Lease | None = None
) -> bool:
    with session_scope(engine) as session:
        iteration = session.get(Iteration, iteration_id)
        assert iteration is not None
        if not holds(iteration, lease):
            return False
        mark_failed(session, iteration, ITERATION_FAILED, reason)
        return True


def get_iteration(engine: Engine, iteration_id: int) -> Iteration | None:
    with session_scope(engine) as session:
        return session.get(Iteration, iteration_id)


def candidates(engine: Engine, iteration_id: int) -> list[Candidate]:
    with session_scope(engine) as session:
        return list(
            session.exec(
                select(Candidate)
                .where(Candidate.iteration_id == iteration_id)
                .order_by(col(Candidate.position))
            ).all()
        )


def set_iteration_thread(engine: Engine, iteration_id: int, thread_id: int) -> None:
    with session_scope(engine) as session:
        iteration = session.get(Iteration, iteration_id)
        assert iteration is not None
        iteration.thread_id = thread_id


def set_page_messages(
    engine: Engine, candidate_ids: list[int], page_message_id: int, discard_message_id: int
) -> None:
    with session_scope(engine) as session:
        for candidate_id in candidate_ids:
            candidate = session.get(Candidate, candidate_id)
            assert candidate is not None
            candidate.page_message_id = page_message_id
            candidate.discard_message_id = discard_message_id


def page_of_message(engine: Engine, message_id: int) -> tuple[int, list[Candidate]] | None:
    """(+1 keep or -1 discard, the page's candidates in order) for a page or discard message."""
    with session_scope(engine) as session:
        for value, column in (
            (KEEP, Candidate.page_message_id),
            (DISCARD, Candidate.discard_message_id),
        ):
            rows = session.exec(
                select(Candidate).where(column == message_id).order_by(col(Candidate.position))
            ).all()
            if rows:
                iteration = session.get(Iteration, rows[0].iteration_id)
                if iteration is None or iteration.state != "voting":
                    return None
                return value, list(rows)
    return None


def record_candidate_vote(
    engine: Engine, candidate_id: int, user_id: int, value: int, on: bool
) -> None:
    with session_scope(engine) as session:
        existing = session.exec(
            select(CandidateVote).where(
                CandidateVote.candidate_id == candidate_id,
                CandidateVote.user_id == user_id,
                CandidateVote.value == value,
            )
        ).first()
        if on and existing is None:
            session.add(CandidateVote(candidate_id=candidate_id, user_id=user_id, value=value))
        elif not on and existing is not None:
            session.delete(existing)


def net_votes(session: Session, iteration_id: int) -> dict[int, int]:
    """Candidate id → keeps minus discards."""
    rows = session.exec(
        select(CandidateVote.candidate_id, CandidateVote.value)
        .join(Candidate, col(Candidate.id) == col(CandidateVote.candidate_id))
        .where(Candidate.iteration_id == iteration_id)
    ).all()
    net: Counter[int] = Counter()
    for candidate_id, value in rows:
        net[candidate_id] += value
    return dict(net)


def due_iterations(engine: Engine, now: datetime | None = None) -> list[int]:
    moment = now or utcnow()
    with session_scope(engine) as session:
        rows = session.exec(select(Iteration).where(Iteration.state == "voting")).all()
        return [
            r.id
            for r in rows  # type: ignore[misc]
            if r.deadline is not None and _aware(r.deadline) <= moment
        ]


def _aware(moment: datetime) -> datetime:
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def finish_iteration(
    engine: Engine,
    iteration_id: int,
    datasets_dir: Path,
    limits: Limits,
    by_user: int | None = None,
) -> Dataset | None:
    """Close the vote: candidates with a net keep vote join the parent dataset's images in a new
    dataset version, built by `ingest_zip` (same checks, same atomic content-addressed folder).
    None when nothing was kept (the iteration still closes)."""
    with session_scope(engine) as session:
        iteration = session.get(Iteration, iteration_id)
        if iteration is None or iteration.state != "voting":
            raise NothingToFinish(f"iteration {iteration_id} is not waiting for votes")
        iteration.state = "finishing"  # claims the close; a second finish is refused
        parent = session.get(Dataset, iteration.dataset_id)
        job = session.get(Job, iteration.job_id)
        assert parent is not None and job is not None
        net = net_votes(session, iteration_id)
        kept = [
            c
            for c in session.exec(
                select(Candidate)
                .where(Candidate.iteration_id == iteration_id)
                .order_by(col(Candidate.position))
            ).all()
            if net.get(c.id or 0, 0) > 0 and c.image_path
        ]
        trigger = str(job.config.get("trigger", ""))
        method = job.method
    try:
        result = (
            build_version(Path(parent.path), kept, datasets_dir, limits, trigger, method)
            if kept
            else None
        )
    except Exception:
        with session_scope(engine) as session:
            back = session.get(Iteration, iteration_id)
            assert back is not None
            back.state = "voting"
        raise
    files = _last_files(Path(result.path), len(kept)) if result is not None else []
    added = [
        {
            "file": files[i - 1] if i <= len(files) else f"images/{parent.images + i:04d}",
            "prompt": c.prompt,
            "context": c.context,
            "style": c.style,
            "candidate": c.position,
        }
        for i, c in enumerate(kept, start=1)
    ]
    with session_scope(engine) as session:
        iteration = session.get(Iteration, iteration_id)
        assert iteration is not None
        iteration.state = "finished"
        dataset = None
        if result is not None:
            dataset = record_dataset(
                session, result, guild_id=iteration.guild_id, created_by=iteration.user_id
            )
            if session.get(DatasetLineage, dataset.id) is None and dataset.id != parent.id:
                session.add(
                    DatasetLineage(
                        dataset_id=dataset.id,
                        parent_id=parent.id,
                        iteration_id=iteration_id,
                        version=dataset_version(session, parent.id) + 1,
                        added=added,
                    )
                )
            iteration.result_dataset_id = dataset.id
        spread = context_spread(session, dataset.id if dataset else parent.id)
        emit(
            session,
            ITERATION_FINISHED,
            None,
            iteration_id=iteration_id,
            channel_id=iteration.channel_id,
            thread_id=iteration.thread_id,
            user_id=iteration.user_id,
            by=by_user,
            dataset_id=dataset.id if dataset else None,
            version=dataset_version(session, dataset.id) if dataset else None,
            added=added,
            spread=spread,
            images=dataset.images if dataset else parent.images,
            report=dataset.report if dataset else {},
        )
        return dataset


def concept_folders(rows: list[dict[str, Any]], trigger: str) -> dict[tuple[str, int], str]:
    """A zip folder per (concept, repeats) of the parent other than the job's own trigger at one
    repeat, so the next version keeps each image's concept and repeats."""
    keys = sorted(
        {
            (row["concept"], int(row.get("repeats", 1)))
            for row in rows
            if row.get("concept") and (row["concept"], int(row.get("repeats", 1))) != (trigger, 1)
        }
    )
    return {key: f"concept{number}/" for number, key in enumerate(keys, start=1)}


def concepts_file(folders: dict[tuple[str, int], str]) -> dict[str, dict[str, Any]]:
    """`concepts.json` for `concept_folders` (see storage.ingest.concepts)."""
    return {
        folder.rstrip("/"): {"trigger": concept, "repeats": repeats}
        for (concept, repeats), folder in folders.items()
    }


def build_version(
    parent_dir: Path,
    kept: list[Candidate],
    datasets_dir: Path,
    limits: Limits,
    trigger: str,
    method: str,
) -> IngestResult:
    """Parent images with their captions, then each kept image captioned with its prompt,
    packed as a zip (image + .txt side-car) and ingested like an upload."""
    rows = [
        json.loads(line)
        for line in (parent_dir / "captions.jsonl").read_text(encoding="utf-8").splitlines()
        if line
    ]
    options = json.loads((parent_dir / "dataset.json").read_text(encoding="utf-8")).get(
        "options", {}
    )
    folders = concept_folders(rows, trigger)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for index, row in enumerate(rows, start=1):
            folder = folders.get((row.get("concept"), row.get("repeats", 1)), "")
            suffix = Path(row["file"]).suffix or ".png"  # stored as uploaded: .jpg/.png/.webp
            zf.writestr(f"{folder}a{index:04d}{suffix}", (parent_dir / row["file"]).read_bytes())
            zf.writestr(f"{folder}a{index:04d}.txt", row.get("text", ""))
        if folders:
            zf.writestr("concepts.json", json.dumps(concepts_file(folders)))
        for index, candidate in enumerate(kept, start=1):
            zf.writestr(f"b{index:04d}.png", Path(str(candidate.image_path)).read_bytes())
            zf.writestr(f"b{index:04d}.txt", candidate.prompt)
    datasets_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".zip", dir=datasets_dir.parent, delete=True) as handle:
        handle.write(buf.getvalue())
        handle.flush()
        ingest = IngestOptions(
            trigger=trigger,
            caption_prefix="",  # captions carry the prefix
            method=options.get("method", method),  # type: ignore[arg-type]
            resolution=int(options.get("resolution", 512)),
        )
        return ingest_zip(Path(handle.name), datasets_dir, ingest, limits)


def _last_files(folder: Path, count: int) -> list[str]:
    """The stored names of a version's last `count` images (the kept candidates: their zip
    names sort after the parent's), as ingest wrote them (suffix included)."""
    lines = (folder / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return [str(row["file"]) for row in rows[-count:]] if count else []
