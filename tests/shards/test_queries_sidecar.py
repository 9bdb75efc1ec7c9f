"""Texts without ground truth (`"image_ids": []`, the seed README's form for test texts) are kept, counted and
written beside the shards; reject lines name every id the record has (issue 15, parts 1 and 6)."""

import hashlib
import json
import secrets

import pytest

from tests.helpers.seed_data import write_seed_split
from tests.helpers.shards import convert, image_samples, read_tar_samples, run_inspect, run_tool, shard_paths

QUERIES = [{"text_id": 900 + k, "text": f"没有标注的查询{k}", "image_ids": []} for k in range(5)]


def write_query_split(root, split="test", n_images=12, queries=QUERIES):
    """A seed split whose texts name half the images (the rest are gallery-only), plus `queries` without
    ground truth mixed in among them (one first, the others after the labelled texts)."""
    truth = write_seed_split(str(root), split, n_images, texts_per_image=0.75, size=48)
    path = root / f"{split}_texts.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    extra = [json.dumps(q, ensure_ascii=False) for q in queries]
    path.write_text("\n".join(extra[:1] + lines + extra[1:]) + "\n", encoding="utf-8")
    return truth


def test_queries_without_ground_truth_are_kept_counted_and_written_beside_the_shards(tmp_path):
    truth = write_query_split(tmp_path / "seed")
    out = tmp_path / "out"
    result = run_tool("--src", tmp_path / "seed", "--dst", out, "--splits", "test", "--samples-per-shard", "5")
    assert result.returncode == 0, result.stderr
    assert "5 written text(s) have no image_ids: queries without ground truth, kept in test/queries.jsonl" in (
        result.stdout
    )
    manifest = json.loads((out / "test" / "manifest.json").read_text())
    n_gt = len(truth.texts)
    assert manifest["records"]["texts"] == {"input": n_gt + 5, "written": n_gt + 5, "rejected": 0}
    assert manifest["totals"]["texts"] == n_gt and manifest["totals"]["texts_without_images"] == 5
    assert manifest["totals"]["images_without_texts"] > 0  # gallery-only images are still written
    assert (out / "test" / "rejects.jsonl").read_text() == "" and manifest["rejects"] == {}
    body = (out / "test" / "queries.jsonl").read_bytes()
    assert [json.loads(line) for line in body.decode().splitlines()] == QUERIES  # seed format, input order
    assert manifest["queries"] == {
        "file": "queries.jsonl",
        "texts": 5,
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    # The shards hold exactly the images with their captions, as without the queries: no text-only sample.
    assert image_samples(read_tar_samples(shard_paths(out / "test"))) == {
        i: (data, truth.captions()[i]) for i, data in truth.images.items()
    }
    assert manifest["totals"]["samples"] == len(truth.images)
    inspected = run_inspect(out / "test", "--verify")
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    assert "5 texts without images (queries without ground truth) in queries.jsonl" in inspected.stdout
    (out / "test" / "queries.jsonl").write_bytes(body.replace("查询".encode(), "查找".encode()))  # same size
    damaged = run_inspect(out / "test", "--verify")
    assert damaged.returncode == 1 and "PROBLEM queries.jsonl: sha256 differs" in damaged.stdout
    (out / "test" / "queries.jsonl").write_bytes(body)

    # A rerun resumes every shard and writes the same sidecar; other input without queries removes it.
    assert convert("--src", tmp_path / "seed", "--dst", out, "--splits", "test", "--samples-per-shard", "5") == 0
    again = json.loads((out / "test" / "manifest.json").read_text())
    assert again["resumed_shards"] == len(again["shards"]) and again["queries"] == manifest["queries"]
    assert (out / "test" / "queries.jsonl").read_bytes() == body
    write_query_split(tmp_path / "seed", queries=[])
    assert (
        convert("--src", tmp_path / "seed", "--dst", out, "--splits", "test", "--samples-per-shard", "5", "--overwrite")
        == 0
    )
    plain = json.loads((out / "test" / "manifest.json").read_text())
    assert "queries" not in plain and plain["totals"]["texts_without_images"] == 0
    # the queries never touch a shard: the same tars, byte for byte, with and without them
    assert [s["sha256"] for s in plain["shards"]] == [s["sha256"] for s in manifest["shards"]]
    assert not (out / "test" / "queries.jsonl").exists()


def test_a_split_of_queries_only_converts_its_images_and_queries(tmp_path):
    """MUGE's test set as the seed ships it: every text has `"image_ids": []`."""
    seed = tmp_path / "seed"
    truth = write_seed_split(str(seed), "test", 6, size=48)
    (seed / "test_texts.jsonl").write_text(
        "".join(json.dumps(dict(t, image_ids=[]), ensure_ascii=False) + "\n" for t in truth.texts), encoding="utf-8"
    )
    out = tmp_path / "out"
    assert convert("--src", seed, "--dst", out, "--splits", "test") == 0
    manifest = json.loads((out / "test" / "manifest.json").read_text())
    n = len(truth.texts)
    assert manifest["records"]["texts"] == {"input": n, "written": n, "rejected": 0}
    assert manifest["records"]["pairs"] == {"input": 0, "written": 0, "rejected": 0}
    assert manifest["totals"]["texts_without_images"] == n and manifest["totals"]["texts"] == 0
    assert manifest["totals"]["images_without_texts"] == manifest["totals"]["images"] == 6
    assert len((out / "test" / "queries.jsonl").read_text().splitlines()) == n


def test_a_query_file_another_conversion_left_is_refused(tmp_path):
    write_query_split(tmp_path / "seed", queries=[])
    (tmp_path / "out" / "test").mkdir(parents=True)
    (tmp_path / "out" / "test" / "queries.jsonl").write_text("{}\n")
    result = run_tool("--src", tmp_path / "seed", "--dst", tmp_path / "out", "--splits", "test")
    assert result.returncode == 2 and "queries.jsonl" in result.stderr


def test_rejects_name_the_ids_their_records_have(bad_seed, tmp_path):
    """A JSON line without `text` keeps its text_id; a TSV line without a TAB is its own image id."""
    root, truth, _ = bad_seed
    result = run_tool("--src", root, "--dst", tmp_path / "out", "--splits", "train")
    assert result.returncode == 0, result.stderr
    rejects = [json.loads(line) for line in (tmp_path / "out" / "train" / "rejects.jsonl").read_text().splitlines()]
    by_reason = {}
    for r in rejects:
        by_reason.setdefault((r["record"], r["reason"]), []).append(r)
    assert by_reason[("image", "missing_base64_field")][0]["id"] == "9000004"
    assert by_reason[("image", "non_utf8")][0]["id"] is None  # its id is not UTF-8: nothing to name
    missing = by_reason[("text", "missing_field")]
    assert len(missing) == 3
    no_text, no_id, no_images = sorted(missing, key=lambda r: r["line"])
    first_new = max(t["text_id"] for t in truth["train"].texts[:-2]) + 1  # the planted texts' first id
    assert (no_text["text_id"], no_text["detail"]) == (first_new, "text")
    assert "text_id" not in no_id and no_id["detail"] == "text_id"
    assert (no_images["text_id"], no_images["detail"]) == (first_new + 1, "image_ids")
    assert "train_imgs.tsv:" in result.stderr and "image 9000004: missing_base64_field" in result.stderr
    assert f"text {first_new}: missing_field (text)" in result.stderr


@pytest.mark.integration
def test_queries_on_s3_reach_the_eval_loader(s3_server, tmp_path):
    """Written to S3 with the shards, read back by the evaluator's loader with the same storage options."""
    from cnclip_scale.data.pipeline import build_eval_loader

    write_query_split(tmp_path / "seed")
    bucket = f"queries-{secrets.token_hex(4)}"
    s3_server.make_bucket(bucket)
    options = s3_server.storage_options()
    dst = f"s3://{bucket}/ds"
    result = run_tool(
        "--src", tmp_path / "seed", "--dst", dst, "--splits", "test", "--storage-options", json.dumps(options)
    )
    assert result.returncode == 0, result.stderr
    for data in (f"{dst}/test", f"{dst}/test/manifest.json"):
        loader = build_eval_loader(
            data, image_size=32, batch_size=4, workers=0, rank=0, world_size=1, storage_options=options
        )
        assert loader.queries == [(str(q["text_id"]), q["text"], 0) for q in QUERIES]
    subset = build_eval_loader(
        f"{dst}/test/test-{{000000..000000}}.tar",
        image_size=32,
        batch_size=4,
        workers=0,
        rank=0,
        world_size=1,
        storage_options=options,
    )
    assert subset.queries == []  # a brace pattern names shards, not the split
