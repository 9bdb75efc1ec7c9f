"""Queries without ground truth (`"image_ids": []`): predictions for every query, recall over those with ground truth
only (equal to cn-clip 1.6.0's evaluation.py / evaluation_tr.py on that subset), from a seed folder and from our
shards alike; a split with no ground truth at all gives predictions and a not-scored output.json, exit 0.
One rank in this process (the 2-rank form is in tests/integration/test_eval_queries.py)."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from cnclip_scale.cli.evaluate import main as evaluate_main
from tests.helpers.seed_data import write_seed_split
from tests.helpers.shards import convert

CN_CLIP_EVAL = Path(__import__("cn_clip").__file__).parent / "eval"
N_QUERIES = 5


def write_split(root: Path, labelled: bool = True):
    """12 images; 6 labelled texts naming half of them (the other images are gallery-only) and 5 queries without
    ground truth among them. `labelled=False`: every text without ground truth."""
    truth = write_seed_split(str(root), "test", 12, texts_per_image=0.75, size=48)
    queries = [{"text_id": 900 + k, "text": f"{truth.texts[k]['text']}？", "image_ids": []} for k in range(N_QUERIES)]
    texts = truth.texts if labelled else [dict(t, image_ids=[]) for t in truth.texts]
    lines = [json.dumps(t, ensure_ascii=False) for t in [queries[0], *texts, *queries[1:]]]
    (root / "test_texts.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return texts, queries


def evaluate(ckpt: str, data, out: Path) -> int:
    return evaluate_main(
        ["--checkpoint", ckpt, "--data", str(data), "--split", "test", "--output", str(out), "--workers", "0"]
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def seed_script(script: str, *args, cwd: Path) -> None:
    subprocess.run(
        [sys.executable, str(CN_CLIP_EVAL / script), *map(str, args)],
        check=True,
        capture_output=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("mixed")
    texts, queries = write_split(root / "seed")
    assert convert("--src", root / "seed", "--dst", root / "shards", "--splits", "test", "--no-progress") == 0
    assert evaluate(tiny_checkpoint, root / "seed", root / "from_seed") == 0
    assert evaluate(tiny_checkpoint, root / "shards" / "test", root / "from_shards") == 0
    return root, texts, queries


@pytest.mark.parametrize("run", ["from_seed", "from_shards"])
def test_every_query_is_predicted_and_only_those_with_ground_truth_are_scored(mixed, run):
    root, texts, queries = mixed
    out = root / run
    predictions = lines(out / "test_predictions.jsonl")
    assert sorted(p["text_id"] for p in predictions) == sorted(t["text_id"] for t in texts + queries)
    assert all(len(p["image_ids"]) == 10 and all(isinstance(i, int) for i in p["image_ids"]) for p in predictions)
    assert len(lines(out / "test_tr_predictions.jsonl")) == 12  # every image, gallery-only ones too
    summary = json.loads((out / "summary.json").read_text())
    with_texts = len({i for t in texts for i in t["image_ids"]})
    assert summary["texts"] == len(texts) + N_QUERIES and summary["images"] == 12
    assert (summary["t2i"]["queries"], summary["t2i"]["predicted_only"]) == (len(texts), N_QUERIES)
    assert (summary["i2t"]["queries"], summary["i2t"]["predicted_only"]) == (with_texts, 12 - with_texts)
    # the reference holds the texts with ground truth only, as the seed's texts.jsonl lists them
    want = [dict(t, image_ids=sorted(t["image_ids"])) for t in sorted(texts, key=lambda t: t["text_id"])]
    assert lines(out / "test_texts.reference.jsonl") == want


def test_recall_equals_chinese_clip_evaluation_on_the_texts_with_ground_truth(mixed, tmp_path):
    """evaluation.py / evaluation_tr.py on our full prediction files and the seed texts that have image_ids."""
    root, texts, _ = mixed
    out = root / "from_shards"
    reference = tmp_path / "test_texts.jsonl"
    reference.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    seed_script("evaluation.py", reference, out / "test_predictions.jsonl", tmp_path / "t2i.json", cwd=tmp_path)
    seed_script("transform_ir_annotation_to_tr.py", "--input", reference, cwd=tmp_path)
    seed_script(
        "evaluation_tr.py",
        tmp_path / "test_texts.tr.jsonl",
        out / "test_tr_predictions.jsonl",
        tmp_path / "i2t.json",
        cwd=tmp_path,
    )
    for ours, theirs in [("output.json", "t2i.json"), ("output_tr.json", "i2t.json")]:
        want = json.loads((tmp_path / theirs).read_text())
        assert want["success"] is True, want
        assert (out / ours).read_text() == (tmp_path / theirs).read_text()
    # the seed's script on its own over every text would count the 5 queries as misses: ours must not
    everything = tmp_path / "all.jsonl"
    everything.write_text((root / "seed" / "test_texts.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    seed_script("evaluation.py", everything, out / "test_predictions.jsonl", tmp_path / "all.json", cwd=tmp_path)
    diluted = json.loads((tmp_path / "all.json").read_text())["scoreJson"]["r10"]
    assert diluted == pytest.approx(json.loads((out / "output.json").read_text())["scoreJson"]["r10"] * 6 / 11)


def test_seed_folder_and_shards_give_the_same_files(mixed):
    root, _, _ = mixed
    for name in (
        "test_predictions.jsonl",
        "test_tr_predictions.jsonl",
        "output.json",
        "output_tr.json",
        "test_texts.reference.jsonl",
    ):
        assert (root / "from_seed" / name).read_bytes() == (root / "from_shards" / name).read_bytes(), name


@pytest.mark.parametrize("layout", ["seed", "shards"])
def test_a_split_without_ground_truth_gives_predictions_and_no_score(tiny_checkpoint, tmp_path, caplog, layout):
    """MUGE's test set as shipped: every text has `"image_ids": []`. Exit 0, predictions for every text,
    output.json in the seed's not-scored form (success false, saying why), no recall in summary.json."""
    texts, queries = write_split(tmp_path / "seed", labelled=False)
    data = tmp_path / "seed"
    if layout == "shards":
        assert convert("--src", data, "--dst", tmp_path / "shards", "--splits", "test", "--no-progress") == 0
        data = tmp_path / "shards" / "test"
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="cnclip_scale.eval"):
        assert evaluate(tiny_checkpoint, data, out) == 0
    n = len(texts) + N_QUERIES
    assert len(lines(out / "test_predictions.jsonl")) == n
    for name in ("output.json", "output_tr.json"):
        result = json.loads((out / name).read_text())
        assert result["success"] is False and result["errorMsg"].startswith("no ground truth"), result
    summary = json.loads((out / "summary.json").read_text())
    assert summary["t2i"] == {"queries": 0, "predicted_only": n, "ground_truth": False}
    assert summary["i2t"] == {"queries": 0, "predicted_only": 12, "ground_truth": False}
    assert not (out / "test_texts.reference.jsonl").exists()
    assert "no ground truth" in (out / "report.html").read_text(encoding="utf-8")
    assert f"t2i no ground truth: nothing scored (0 text queries scored, {n} predicted only)" in caplog.text
