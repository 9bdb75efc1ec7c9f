"""Seed TSV/JSONL -> shards on local disk: exact rejects, exact accounting, byte-exact read-back."""

import base64
import json
import tarfile

import pytest
import webdataset as wds

from cnclip_scale.shards.convert import Options
from tests.helpers.seed_data import write_seed_split
from tests.helpers.shards import (
    convert,
    image_samples,
    read_tar_samples,
    reject_tuples,
    run_inspect,
    run_tool,
    shard_paths,
)


def test_every_bad_kind_is_rejected_with_its_reason_and_nothing_else(bad_seed, tmp_path):
    root, truth, expected = bad_seed
    out = tmp_path / "out"
    assert convert("--src", root, "--dst", out, "--splits", "train,valid", "--samples-per-shard", "8") == 0
    assert reject_tuples(out / "train") == expected
    assert reject_tuples(out / "valid") == []
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    records = manifest["records"]
    assert records["images"] == {"input": 39, "written": 31, "rejected": 8}
    n_texts = len(truth["train"].texts) - 2  # the generated ones; plant_bad_records added 2 good texts
    assert records["texts"] == {"input": n_texts + 11, "written": n_texts + 2, "rejected": 9}
    n_pairs = sum(len(t["image_ids"]) for t in truth["train"].texts[:n_texts])
    assert records["pairs"] == {"input": n_pairs + 5, "written": n_pairs + 2, "rejected": 3}
    assert manifest["rejects"]["images"] == {r: 1 for _, _, _, r in expected[:8]}
    # The good records, URL-safe base64 included, come back byte for byte with their captions.
    assert image_samples(read_tar_samples(shard_paths(out / "train"))) == {
        i: (data, truth["train"].captions()[i]) for i, data in truth["train"].images.items()
    }


def test_rejects_name_file_line_and_reason_on_the_console(bad_seed, tmp_path):
    root, _, _ = bad_seed
    result = run_tool("--src", root, "--dst", tmp_path / "out", "--splits", "train")
    assert result.returncode == 0
    assert "train_imgs.tsv:33: image 9000003: truncated_image (JPEG of" in result.stderr
    assert "train_texts.jsonl:35: text " in result.stderr and "unknown_image_id" in result.stderr
    assert "input = written + rejected" in result.stdout
    strict = run_tool("--src", root, "--dst", tmp_path / "out2", "--splits", "train", "--strict")
    assert strict.returncode == 1 and "input = written + rejected" in strict.stdout


def test_plain_webdataset_and_tarfile_read_back_the_input(clean_seed, tmp_path):
    root, truth = clean_seed
    out = tmp_path / "out"
    assert convert("--src", root, "--dst", out, "--samples-per-shard", "6", "--workers", "2") == 0
    for split, seed in truth.items():
        paths = shard_paths(out / split)
        assert len(paths) == -(-len(seed.images) // 6)
        via_tarfile = image_samples(read_tar_samples(paths))
        dataset = wds.WebDataset([str(p) for p in paths], shardshuffle=False)
        via_wds = image_samples({s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")} for s in dataset})
        expected = {i: (data, seed.captions()[i]) for i, data in seed.images.items()}
        assert via_tarfile == expected and via_wds == expected
        manifest = json.loads((out / split / "manifest.json").read_text())
        assert manifest["totals"]["images"] == len(seed.images)
        assert manifest["totals"]["texts"] == len(seed.texts)
        assert manifest["totals"]["pairs"] == sum(len(t["image_ids"]) for t in seed.texts)
        for entry in manifest["shards"]:  # stats agree with the tar on disk
            stats = json.loads((out / split / entry["shard"].replace(".tar", ".stats.json")).read_text())
            assert (
                stats["sha256"] == entry["sha256"] and stats["bytes"] == (out / split / entry["shard"]).stat().st_size
            )


def test_group_pair_is_exactly_chinese_clip_training_pairs(clean_seed, tmp_path):
    root, truth = clean_seed
    out = tmp_path / "out"
    assert (
        convert("--src", root, "--dst", out, "--splits", "train", "--group", "pair", "--samples-per-shard", "10") == 0
    )
    samples = read_tar_samples(shard_paths(out / "train"))
    got = sorted(
        (
            str(json.loads(s["json"])["image_id"]),
            json.loads(s["json"])["texts"][0]["text_id"],
            json.loads(s["json"])["texts"][0]["text"],
            s["jpg"],
        )
        for s in samples.values()
    )
    seed = truth["train"]
    assert got == sorted(
        (str(i), t["text_id"], t["text"], seed.images[str(i)]) for t in seed.texts for i in t["image_ids"]
    )


def test_workers_do_not_change_the_shards(clean_seed, tmp_path):
    root, _ = clean_seed
    digests = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        assert (
            convert(
                "--src", root, "--dst", out, "--splits", "train", "--samples-per-shard", "7", "--workers", str(workers)
            )
            == 0
        )
        manifest = json.loads((out / "train" / "manifest.json").read_text())
        digests.append([(s["shard"], s["sha256"]) for s in manifest["shards"]])
    assert digests[0] == digests[1] and len(digests[0]) == 6


def test_shard_byte_limit_and_odd_ids_make_safe_unique_keys(tmp_path):
    seed = write_seed_split(str(tmp_path / "seed"), "train", 6, size=96)
    lines = (tmp_path / "seed" / "train_imgs.tsv").read_text().splitlines()
    odd = ["a.b/c", "a_2Eb_2Fc", "图片 1", "x" * 120, "-", "a.b/c.d"]
    (tmp_path / "seed" / "train_imgs.tsv").write_text(
        "".join(f"{i}\t{line.split(chr(9))[1]}\n" for i, line in zip(odd, lines))
    )
    texts = [{"text_id": f"t.{k}", "text": f"说明{k}", "image_ids": [i]} for k, i in enumerate(odd)]
    (tmp_path / "seed" / "train_texts.jsonl").write_text(
        "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts)
    )
    out = tmp_path / "out"
    assert convert("--src", tmp_path / "seed", "--dst", out, "--splits", "train", "--max-shard-bytes", "7000") == 0
    paths = shard_paths(out / "train")
    assert len(paths) > 1
    keys = [m.name.split(".")[0] for p in paths for m in tarfile.open(p).getmembers()]
    assert len(set(keys)) == 6 and all("/" not in k and "." not in k for k in keys)
    got = image_samples(read_tar_samples(paths))
    assert {i: v[0] for i, v in got.items()} == dict(zip(odd, seed.images.values()))
    pair_out = tmp_path / "pairs"
    assert convert("--src", tmp_path / "seed", "--dst", pair_out, "--splits", "train", "--group", "pair") == 0
    assert len(read_tar_samples(shard_paths(pair_out / "train"))) == 6


def test_missing_input_and_unwritable_destination_fail_with_one_line(clean_seed, tmp_path):
    root, _ = clean_seed
    missing = run_tool("--src", root, "--dst", tmp_path / "out", "--splits", "train,nosuch")
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "missing input" in missing.stderr and "nosuch_imgs.tsv" in missing.stderr
    assert not (tmp_path / "out").exists()  # nothing written before every input was found
    (tmp_path / "file").write_text("x")
    blocked = run_tool("--src", root, "--dst", tmp_path / "file" / "out", "--splits", "train")
    assert blocked.returncode == 2 and blocked.stderr.startswith("to_shards: error: ")
    assert "Traceback" not in blocked.stderr


def test_images_without_texts_are_kept_in_image_mode_and_rejected_in_pair_mode(tmp_path):
    seed = write_seed_split(str(tmp_path), "test", 4)
    with open(tmp_path / "test_imgs.tsv", "a") as f:
        f.write(f"777\t{base64.b64encode(seed.images['1000000']).decode()}\n")
    assert convert("--src", tmp_path, "--dst", tmp_path / "img", "--splits", "test") == 0
    manifest = json.loads((tmp_path / "img" / "test" / "manifest.json").read_text())
    assert manifest["totals"]["images_without_texts"] == 1 and manifest["totals"]["images"] == 5
    assert convert("--src", tmp_path, "--dst", tmp_path / "pair", "--splits", "test", "--group", "pair") == 0
    assert reject_tuples(tmp_path / "pair" / "test") == [("image", "test_imgs.tsv", 5, "no_texts")]


def _prepend_bom(path):
    data = path.read_bytes()
    path.write_bytes(b"\xef\xbb\xbf" + data)


def test_a_utf8_bom_at_the_start_of_the_tsv_and_jsonl_is_stripped(tmp_path):
    """Issue 13 item 9: the first image was stored as "\\ufeff1000000" and the first text rejected as invalid JSON."""
    src = tmp_path / "src"
    truth = write_seed_split(str(src), "train", 6, size=32)
    for name in ("train_imgs.tsv", "train_texts.jsonl"):
        _prepend_bom(src / name)
    out = tmp_path / "out"
    assert convert("--src", src, "--dst", out, "--splits", "train") == 0
    assert reject_tuples(out / "train") == []
    got = image_samples(read_tar_samples(shard_paths(out / "train")))
    assert set(got) == set(truth.images)
    expected = {i: [(t, s) for t, s in c] for i, c in truth.captions().items()}
    assert {i: captions for i, (_, captions) in got.items()} == expected
    assert all(got[i][0] == truth.images[i] for i in truth.images)
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    assert manifest["records"]["texts"] == {"input": len(truth.texts), "written": len(truth.texts), "rejected": 0}


@pytest.mark.parametrize("group", ["image", "pair"])
def test_text_id_1_and_string_1_are_one_id(tmp_path, group):
    """Issue 13 item 7: both were kept, so --group pair wrote two members with one key and the evaluator merged
    the texts. The second is now a duplicate_text_id reject, and inspect --verify agrees with the manifest."""
    src = tmp_path / "src"
    truth = write_seed_split(str(src), "train", 4, size=32, first_text_id=1)
    ids = list(truth.images)
    with open(src / "train_texts.jsonl", "a", encoding="utf-8") as f:
        f.write(
            json.dumps(
                {"text_id": "1", "text": "另一段文字", "image_ids": [int(ids[0]), int(ids[1])]}, ensure_ascii=False
            )
            + "\n"
        )
    line = len(truth.texts) + 1
    out = tmp_path / "out"
    assert convert("--src", src, "--dst", out, "--splits", "train", "--group", group) == 0
    assert reject_tuples(out / "train") == [("text", "train_texts.jsonl", line, "duplicate_text_id")]
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    assert manifest["records"]["texts"] == {"input": line, "written": line - 1, "rejected": 1}
    samples = read_tar_samples(shard_paths(out / "train"))  # asserts no member name twice
    assert len(samples) == manifest["totals"]["samples"]
    texts = {(str(t["text_id"]), t["text"]) for s in samples.values() for t in json.loads(s["json"])["texts"]}
    assert ("1", "另一段文字") not in texts and ("1", truth.texts[0]["text"]) in texts
    verified = run_inspect(out / "train", "--verify")
    assert verified.returncode == 0 and "sha256 and sample counts match" in verified.stdout, verified.stdout


def test_an_empty_split_converts_to_zero_shards_with_a_warning(clean_seed, tmp_path):
    """Issue 13 item 12: an empty split used to convert to nothing without a word."""
    root, _ = clean_seed
    src = tmp_path / "src"
    src.mkdir()
    for name in ("train_imgs.tsv", "train_texts.jsonl"):
        (src / f"{name}").write_bytes((root / name).read_bytes())
    (src / "valid_imgs.tsv").write_bytes(b"")
    (src / "valid_texts.jsonl").write_bytes(b"")
    result = run_tool("--src", src, "--dst", tmp_path / "out", "--splits", "train,valid", "--no-progress")
    assert result.returncode == 0, result.stderr
    warning = (
        "to_shards: warning: valid: 0 shards written: the split is empty (0 image records in valid_imgs.tsv, "
        "0 text records in valid_texts.jsonl)"
    )
    assert [line for line in result.stderr.splitlines() if "warning" in line] == [warning]
    manifest = json.loads((tmp_path / "out" / "valid" / "manifest.json").read_text())
    assert manifest["totals"]["shards"] == 0 and manifest["shards"] == []
    assert "Traceback" not in result.stderr


def test_a_src_that_is_a_file_is_reported_as_a_file(clean_seed, tmp_path):
    """Issue 13 item 12: it was reported as "does not exist"."""
    root, _ = clean_seed
    result = run_tool("--src", root / "train_imgs.tsv", "--dst", tmp_path / "out", "--splits", "train")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"to_shards: error: --src {root / 'train_imgs.tsv'} is a file, not a folder: "
        f"pass the folder that holds train_imgs.tsv and train_texts.jsonl (or lmdb/)"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [{"group": "text"}, {"source_kind": "csv"}])
def test_options_refuse_a_mode_they_do_not_have(bad):
    # group="text" used to be accepted and wrote image shards under a manifest claiming "text"
    key, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=f"Options.{key}: '{value}' is not one of"):
        Options(**bad)
    assert Options(group="pair", source_kind="lmdb").group == "pair"
