"""Queries without ground truth on 2 gloo ranks (torchrun): the same prediction, score and reference files as on
1 rank, gathered and gallery-sharded, from shards whose split keeps its queries in queries.jsonl."""

import json

import pytest
import torch

from cnclip_scale.model import build_model, model_config
from cnclip_scale.model.configs import TINY
from cnclip_scale.model.weights import write_checkpoint
from tests.eval.test_queries_without_ground_truth import N_QUERIES, write_split
from tests.helpers.shards import convert
from tests.integration.test_eval_distributed import evaluate, ok

pytestmark = pytest.mark.integration
FILES = [
    "test_predictions.jsonl",
    "test_tr_predictions.jsonl",
    "output.json",
    "output_tr.json",
    "test_texts.reference.jsonl",
    "test_texts.txt_feat.npy",
]


def test_two_ranks_predict_every_query_and_score_the_same(tmp_path):
    torch.manual_seed(0)
    ckpt = str(tmp_path / "tiny.safetensors")
    write_checkpoint(build_model(model_config(TINY)).state_dict(), model_config(TINY), ckpt, "native")
    texts, _ = write_split(tmp_path / "seed")
    assert (
        convert(
            "--src", tmp_path / "seed", "--dst", tmp_path / "shards", "--splits", "test", "--samples-per-shard", "5"
        )
        == 0
    )
    data = str(tmp_path / "shards" / "test")
    one = ok(evaluate(tmp_path / "one", ckpt, data, 1, "--workers", "0"))
    two = ok(evaluate(tmp_path / "two", ckpt, data, 2, "--workers", "1"))
    sharded = ok(evaluate(tmp_path / "sharded", ckpt, data, 2, "--workers", "0", "--gallery-sharded"))
    for name in FILES:
        assert (one / name).read_bytes() == (two / name).read_bytes() == (sharded / name).read_bytes(), name
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["texts"] == len(texts) + N_QUERIES
    assert (summary["t2i"]["queries"], summary["t2i"]["predicted_only"]) == (len(texts), N_QUERIES)
    assert len((two / "test_predictions.jsonl").read_text().splitlines()) == len(texts) + N_QUERIES
