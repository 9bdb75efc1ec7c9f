"""Issue 15 part 3: the evaluator on shards img2dataset wrote (counts from its ``_stats.json``; captions from ``.txt``,
ids from the keys), in this process (one rank)."""

import json

from tests.eval.test_evaluate_command import evaluate
from tests.helpers.foreign_shards import write_img2dataset_shards


def test_evaluate_scores_img2dataset_shards(capsys, tiny_checkpoint, tmp_path):
    shards = write_img2dataset_shards(str(tmp_path / "laion"), [8, 5])
    rc, output = evaluate(
        capsys, "--checkpoint", tiny_checkpoint, "--data", shards.folder, "--output", str(tmp_path / "out")
    )
    assert rc == 0, output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    n = len(shards.captions)
    assert (summary["images"], summary["texts"], summary["pairs"]) == (n, n, n) == (10, 10, 10)
    assert summary["t2i"]["queries"] == n and summary["loader"].get("corrupt_samples", 0) == 0
    predictions = [json.loads(line) for line in (tmp_path / "out" / "test_predictions.jsonl").read_text().splitlines()]
    assert sorted(str(p["text_id"]) for p in predictions) == sorted(shards.captions)  # text ids: the keys
    assert {str(i) for p in predictions for i in p["image_ids"]} <= set(shards.captions)  # image ids: the keys
