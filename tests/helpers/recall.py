"""Recall recomputed from the evaluator's written files, independently of its own code: what a user (or
Chinese-CLIP's evaluation.py) would compute from ``{split}_predictions.jsonl`` and the ground truth."""

from __future__ import annotations

import json
from pathlib import Path


def ground_truth(texts_jsonl: str | Path) -> tuple[dict, dict]:
    """({text_id: {image_id}}, {image_id: {text_id}}) from a seed ``{split}_texts.jsonl``."""
    t2i, i2t = {}, {}
    for line in Path(texts_jsonl).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["image_ids"]:
            t2i[record["text_id"]] = set(record["image_ids"])
        for image_id in record["image_ids"]:
            i2t.setdefault(image_id, set()).add(record["text_id"])
    return t2i, i2t


def recall_at(predictions: str | Path, truth: dict, k: int) -> float:
    """Percent of the queries with ground truth that have a true match among their first k results."""
    hits = total = 0
    for line in Path(predictions).read_text(encoding="utf-8").splitlines():
        query_id, results = json.loads(line).values()
        if query_id not in truth:  # a query without ground truth is predicted, not scored
            continue
        total += 1
        hits += bool(truth[query_id] & set(results[:k]))
    assert total == len(truth), f"{predictions}: {total} of the {len(truth)} queries with ground truth predicted"
    return 100.0 * hits / total


def assert_recall_matches_files(summary: dict, out_dir: str | Path, split: str, texts_jsonl: str | Path) -> None:
    """The summary's R@1/5/10 in both directions equal what its own prediction files give."""
    import pytest

    t2i, i2t = ground_truth(texts_jsonl)
    for direction, predictions, truth in (
        ("t2i", f"{split}_predictions.jsonl", t2i),
        ("i2t", f"{split}_tr_predictions.jsonl", i2t),
    ):
        for k in (1, 5, 10):
            expected = recall_at(Path(out_dir) / predictions, truth, k)
            assert summary[direction][f"r{k}"] == pytest.approx(expected, abs=1e-9), (direction, k)
