"""Multi-concept datasets in the trainer: repeats per epoch, per-concept triggers, prompts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from storage.ingest import IngestOptions
from tests.storage.ingest_support import ingest, png
from tests.trainer.train_helpers import _one_thread, tiny_config
from trainer.data import BatchOrder, load_dataset
from trainer.validation import make_plan

__all__ = ["_one_thread"]


def _multi_concept_dataset(tmp_path: Path) -> Path:
    entries = [
        ("2_tkxw/a.png", png(1)),
        ("2_tkxw/a.txt", b"a cat on a sofa"),
        ("2_tkxw/b.png", png(2)),
        ("1_sks dog/c.png", png(3)),
        ("1_sks dog/d.png", png(4)),
        ("1_sks dog/e.png", png(5)),
        ("style/f.png", png(6)),
        ("concepts.json", json.dumps({"style": {"trigger": "zzq", "repeats": 3}}).encode()),
    ]
    return ingest(tmp_path, entries, IngestOptions(trigger="ohwx")).path


def test_each_image_is_seen_repeats_times_per_epoch(tmp_path):
    split = load_dataset(_multi_concept_dataset(tmp_path), tiny_config(resolution=64))
    assert split.heldout == []  # 6 images: too few to hold any out
    assert split.concepts == ["sks dog", "tkxw", "zzq"]
    expected = {e.index: e.repeats for e in split.train}
    assert sorted(expected.values()) == [1, 1, 1, 2, 2, 3]
    order = BatchOrder(split.train, 2, seed=5)
    assert order.batches_per_epoch == 5  # 10 draws in batches of 2 (one bucket)
    for epoch in range(2):
        draws = Counter(
            index
            for m in range(epoch * order.batches_per_epoch, (epoch + 1) * order.batches_per_epoch)
            for index in order.batch(m)
        )
        assert dict(draws) == expected
    again = BatchOrder(split.train, 2, seed=5)
    assert [again.batch(m) for m in range(10)] == [order.batch(m) for m in range(10)]


def test_captions_carry_their_concept_trigger_not_the_jobs(tmp_path):
    split = load_dataset(_multi_concept_dataset(tmp_path), tiny_config(resolution=64))
    captions = {e.concept: e.caption for e in split.train}
    assert captions["tkxw"] in ("tkxw, a cat on a sofa", "tkxw")
    assert captions["zzq"] == "zzq" and captions["sks dog"] == "sks dog"
    assert not any("ohwx" in e.caption for e in split.train)


def test_validation_prompts_cover_each_trigger_and_all_together():
    config = tiny_config(validation={"steps": 2, "seeds": [1], "prompts": []})
    plan = make_plan(config, concepts=["tkxw", "sks dog", "zzq"])
    assert plan.labels == ["tkxw", "sks dog", "zzq", "a photo of tkxw, sks dog and zzq"]
    assert make_plan(config, concepts=["tkxw"]).labels == make_plan(config).labels
    named = tiny_config(trigger="", validation={"steps": 2, "seeds": [1], "prompts": ["{trigger}"]})
    assert make_plan(named, concepts=["a", "b"]).labels == ["a and b"]


def test_trainer_uses_the_split_ingest_recorded(tmp_path):
    result = ingest(tmp_path, [(f"{i:02d}.png", png(i)) for i in range(12)])
    rows = [json.loads(line) for line in (result.path / "captions.jsonl").read_text().splitlines()]
    recorded = {row["file"] for row in rows if row["split"] == "heldout"}
    split = load_dataset(result.path, tiny_config(resolution=64))
    assert len(recorded) == 1 and {e.file for e in split.heldout} == recorded
    assert split.dataset_id == result.dataset_id
    recomputed = load_dataset(result.path, tiny_config(resolution=64, heldout_fraction=0.2))
    assert len(recomputed.heldout) == 2 and recorded <= {e.file for e in recomputed.heldout}
