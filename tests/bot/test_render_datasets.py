"""Render functions for datasets and the held-out / overfitting lines (pure, no Discord)."""

from __future__ import annotations

from bot import render
from trainer.heldout import overfitting_from

RISING = [
    (100, 0.30, 0.20),
    (200, 0.25, 0.18),
    (300, 0.20, 0.19),
    (400, 0.15, 0.21),
    (500, 0.12, 0.24),
]
FALLING = [(100, 0.30, 0.20), (200, 0.25, 0.18), (300, 0.20, 0.17), (400, 0.15, 0.16)]


def test_overfit_notice_for_a_rising_heldout_history() -> None:
    step = overfitting_from(RISING)
    assert step == 200
    assert render.overfit_notice(step) == (
        "⚠️ Checkpoints after step 200 may be overfitting: held-out loss rose twice while "
        "training loss fell."
    )


def test_no_overfit_notice_for_a_falling_history() -> None:
    assert overfitting_from(FALLING) is None
    assert render.overfit_notice(overfitting_from(FALLING)) == ""


def test_checkpoint_caption_shows_heldout_loss_and_trend() -> None:
    first = render.checkpoint_caption(100, 500, 0.3, None, 0.2, None)
    assert "loss 0.3000, held-out loss 0.2000." in first
    up = render.checkpoint_caption(200, 500, 0.25, None, 0.23, 0.2)
    assert "held-out loss 0.2300 ▲ +0.0300" in up
    down = render.checkpoint_caption(300, 500, 0.2, None, 0.19, 0.23)
    assert "held-out loss 0.1900 ▼ -0.0400" in down
    assert "held-out" not in render.checkpoint_caption(100, 500, 0.3, None)


def test_dataset_embed_shows_concepts_heldout_and_samples() -> None:
    report = {
        "images": 12,
        "trigger": "",
        "skipped": [],
        "captions": {"sidecar": 8},
        "concepts": [
            {
                "trigger": "ohwx woman",
                "images": 8,
                "repeats": 2,
                "held_out": 1,
                "captions": {"sidecar": 8},
                "missing_trigger": 3,
            },
            {"trigger": "tkxw", "images": 4, "repeats": 1, "held_out": 0, "captions": {}},
        ],
        "held_out": ["a.png"],
    }
    samples = [{"file": "images/0001.png", "text": "ohwx woman, red", "concept": "ohwx woman"}]
    embed = render.dataset_embed(
        "people", "two people", report, 7, samples=samples, thumbnails=(48, 60)
    )
    fields = {f.name: f.value for f in embed.fields}
    assert (
        "`ohwx woman`: 8 images × 2, 8 captioned, trigger added to 3, 1 held out"
        in fields["Concepts"]
    )
    assert "`tkxw`: 4 images × 1, 0 captioned" in fields["Concepts"]
    assert fields["Held out"].startswith("1 images kept out")
    assert "`0001` [ohwx woman] ohwx woman, red" in fields["Caption samples"]
    assert "first 48 of 60" in (embed.description or "")
    note = render.dataset_embed(
        "x", None, {"images": 3, "held_out_note": "too few to hold out"}, None
    )
    assert {f.name: f.value for f in note.fields}["Held out"] == "too few to hold out"


def test_job_qa_report_embed_has_the_concepts_too() -> None:
    report = {"images": 4, "concepts": [{"trigger": "a", "images": 4, "repeats": 3}]}
    embed = render.qa_report_embed(report, 1, 10.0, "a")
    assert any(f.name == "Concepts" and "`a`: 4 images × 3" in f.value for f in embed.fields)


def test_dataset_list_text() -> None:
    assert "No datasets yet" in render.dataset_list_text([])
    text = render.dataset_list_text(
        [{"name": "cats", "images": 6, "created_by": 5, "description": "six"}]
    )
    assert text == "• **cats** — 6 images, by <@5>: six"


def test_checkpoint_caption_and_vote_text_show_leakage_and_suggestion() -> None:
    text = render.checkpoint_caption(100, 500, 0.3, None, 0.2, None, 3.25)
    assert "Outside the trigger, images changed by **3.2/255**" in text
    assert "Outside the trigger" not in render.checkpoint_caption(100, 500, 0.3, None)
    suggested = render.suggestion_text([100, 200, 300], 200)
    assert suggested.startswith(f"⭐ Suggested: {render.NUMBER_EMOJI[1]} step 200")
    assert render.suggestion_text([100, 200], None) == ""
    assert render.suggestion_text([100, 200], 50) == ""  # not among the numbered checkpoints
