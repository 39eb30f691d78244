from datetime import UTC, datetime

from bot import render


def test_progress_bar_clamps_and_fills() -> None:
    assert render.progress_bar(0, 10, width=10) == "░" * 10 + " 0%"
    assert render.progress_bar(5, 10, width=10) == "█" * 5 + "░" * 5 + " 50%"
    assert render.progress_bar(15, 10, width=10) == "█" * 10 + " 100%"
    assert render.progress_bar(3, 0, width=4) == "░░░░ 0%"


def test_duration() -> None:
    assert render.duration(45) == "45s"
    assert render.duration(200) == "3m 20s"
    assert render.duration(3720) == "1h 02m"
    assert render.duration(None) == "?"


def test_status_text_has_step_loss_speed_eta() -> None:
    text = render.status_text(
        3,
        "redfig",
        "training",
        {"step": 50, "total": 200, "loss": 0.12345, "steps_per_second": 2.5, "eta_seconds": 60},
    )
    assert "Job #3 · redfig" in text and "step 50/200" in text
    assert "loss 0.1235" in text and "2.50 it/s" in text and "ETA 1m 00s" in text
    done = render.status_text(3, "redfig", "awaiting_vote", {"step": 200, "total": 200})
    assert "ETA" not in done and "waiting for votes" in done


def test_truncate_fits_discord_limit() -> None:
    assert len(render.truncate("x" * 5000)) == 2000
    long = render.queue_lines(
        [
            {"id": i, "name": "n" * 90, "owner_id": 1, "state": "queued", "position": i}
            for i in range(100)
        ]
    )
    assert len(long) <= 2000


def test_comparison_text_numbers_and_deadline() -> None:
    deadline = datetime(2030, 1, 1, tzinfo=UTC)
    text = render.comparison_text([10, 20, 30], deadline.isoformat())
    assert "1️⃣ step 10" in text and "3️⃣ step 30" in text
    assert f"<t:{int(deadline.timestamp())}:R>" in text


def test_failure_texts_are_plain_words() -> None:
    assert "ran out of memory" in render.failure_text(
        "failed", {"reason": "the GPU ran out of memory", "step": 3}, 7
    )
    cancelled = render.failure_text("cancelled", {"by": 9, "step": 4}, 7)
    assert "cancelled at step 4 by <@9>" in cancelled
    lost = render.failure_text("requeued", {"lost_worker": "w", "step": 5}, 7)
    assert "stopped answering" in lost


def test_qa_report_embed() -> None:
    embed = render.qa_report_embed(
        {
            "images": 12,
            "skipped": [{"file": "a.gif", "reason": "not an image"}],
            "captions": {"sidecar": 12},
            "advice": ["more images"],
            "buckets": {"512x512": 12},
        },
        position=2,
        eta_seconds=90,
        trigger="ohwx",
    )
    fields = {f.name: f.value for f in embed.fields}
    assert "12" in (embed.description or "") and "a.gif: not an image" in fields["Skipped"]
    assert fields["Queue"].startswith("#2 in the queue")


def test_finalized_text_with_link() -> None:
    text = render.finalized_text(
        {"step": 20, "reason": "most votes (2)", "votes": {"10": 0, "20": 2}, "by": 5},
        ["https://x/dl/a"],
        datetime.now(UTC),
    )
    assert "step **20**" in text and "https://x/dl/a" in text and "<@5>" in text
    assert "Two files" not in text


def test_finalized_text_of_a_pivotal_lora_says_how_to_use_both_files() -> None:
    names = ["ohwx-step00000020.safetensors", "ohwx.safetensors"]
    text = render.finalized_text({"step": 20, "reason": "most votes (2)"}, (), None, names)
    assert "Two files" in text and "`ohwx.safetensors`" in text
    assert "write `ohwx` in the prompt" in text and "embedding:ohwx" in text
