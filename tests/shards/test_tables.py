"""Images as files: a folder of real photos + a captions table (CSV / TSV / Parquet / JSONL) -> the same shards,
manifest, rejects and resume as the seed layout (cnclip_scale/shards/tables.py)."""

import csv
import json
import os
from pathlib import Path

import pytest

from tests.helpers.images import make_image
from tests.helpers.shards import convert, read_tar_samples, shard_paths

# (image reference, caption, split); several rows per image; one missing file, one non-image, one cut-short
# JPEG, one empty caption, one row without an image.
N_IMAGES = 8


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """(folder, {relative path: bytes}, rows) of real photos in nested folders, plus planted damage."""
    root = tmp_path_factory.mktemp("photos")
    files, rows = {}, []
    for i in range(N_IMAGES):
        data, caption = make_image(i, 96)
        rel = f"{'cats' if i % 2 else 'dogs'}/{i:03d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        files[rel] = data
        split = "valid" if i >= 6 else "train"
        rows.append((rel, caption, split))
        if i % 3 == 0:
            rows.append((f"./{rel}", f"另一个描述：{caption}", split))  # a second caption, spelt differently
    (root / "notes.jpg").write_bytes(b"not an image at all")
    good = files["dogs/000.jpg"]
    (root / "cut.jpg").write_bytes(good[: len(good) // 2])
    rows += [
        ("missing/none.jpg", "不存在的图片", "train"),
        ("notes.jpg", "不是图片", "train"),
        ("cut.jpg", "被截断的图片", "train"),
        ("cats/001.jpg", "   ", "train"),
        ("", "没有图片", "train"),
    ]
    return root, files, rows


def _write_table(path: Path, rows, fmt: str, columns=("image", "caption", "split")):
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({c: [r[k] for r in rows] for k, c in enumerate(columns)}), path)
    elif fmt == "jsonl":
        path.write_text(
            "".join(json.dumps(dict(zip(columns, r)), ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
    else:
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t" if fmt == "tsv" else ",")
            writer.writerow(columns)
            writer.writerows(rows)


def _samples(split_dir):
    """{image_id: (image bytes, [(text_id, text)])} from the shards."""
    out = {}
    for parts in read_tar_samples(shard_paths(split_dir)).values():
        meta = json.loads(parts["json"])
        out[meta["image_id"]] = (parts["jpg"], [(t["text_id"], t["text"]) for t in meta["texts"]])
    return out


def _expected(files, rows, split, line_of):
    out = {}
    for k, (ref, caption, row_split) in enumerate(rows):
        ref = os.path.normpath(ref) if ref else ref
        if row_split != split or ref not in files:
            continue
        entry = out.setdefault(ref, (files[ref], []))
        if caption.strip():
            entry[1].append((line_of(k), caption))
    return out


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl"])
def test_folder_with_captions_table_converts_every_split(photo_folder, tmp_path, fmt):
    root, files, rows = photo_folder
    src = tmp_path / "src"
    src.symlink_to(root, target_is_directory=True)
    table = tmp_path / f"captions.{fmt}"
    _write_table(table, rows, fmt)
    # --src the images folder, --captions the table; the splits come from the table's split column
    assert convert("--src", src, "--captions", table, "--dst", tmp_path / "out", "--no-progress") == 0
    line_of = (lambda k: k + 2) if fmt in ("csv", "tsv") else (lambda k: k + 1)  # header is line 1; Parquet: row
    assert sorted(os.listdir(tmp_path / "out")) == ["train", "valid"]
    for split in ("train", "valid"):
        assert _samples(tmp_path / "out" / split) == _expected(files, rows, split, line_of)
    manifest = json.loads((tmp_path / "out" / "train" / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "table" and manifest["source"]["images"] == table.name
    train_rows = [r for r in rows if r[2] == "train"]
    assert manifest["records"]["texts"] == {"input": len(train_rows), "written": 8, "rejected": 5}
    assert manifest["records"]["images"]["input"] == len({os.path.normpath(r[0]) for r in train_rows if r[0]})
    for row in manifest["records"].values():
        assert row["input"] == row["written"] + row["rejected"]
    rejects = [json.loads(x) for x in (tmp_path / "out" / "train" / "rejects.jsonl").read_text().splitlines()]
    lines = {r[0]: line_of(k) for k, r in reversed(list(enumerate(rows)))}
    got = {(r["record"], r.get("file"), r["line"], r["reason"]) for r in rejects}
    assert {
        ("image", "missing/none.jpg", lines["missing/none.jpg"], "missing_file"),
        ("image", "notes.jpg", lines["notes.jpg"], "not_an_image"),
        ("image", "cut.jpg", lines["cut.jpg"], "truncated_image"),
        ("text", None, line_of(len(rows) - 2), "empty_text"),
        ("text", None, line_of(len(rows) - 1), "missing_field"),
    } <= got
    assert all(r["source"] == table.name for r in rejects)


def test_a_table_as_src_with_renamed_columns_absolute_paths_and_file_urls(photo_folder, tmp_path):
    root, files, _ = photo_folder
    refs = {"cats/001.jpg": str(root / "cats/001.jpg"), "dogs/002.jpg": (root / "dogs/002.jpg").as_uri()}
    rows = [(ref, f"第{k}张", "train") for k, ref in enumerate(refs.values())]
    table = tmp_path / "urls.csv"
    _write_table(table, rows, "csv", columns=("url", "text", "part"))
    args = ["--src", table, "--dst", tmp_path / "out", "--image-column", "url", "--caption-column", "text"]
    assert convert(*args, "--split-column", "part", "--no-progress") == 0
    samples = _samples(tmp_path / "out" / "train")
    assert {ref: s[0] for ref, s in samples.items()} == {refs[k]: files[k] for k in refs}


def test_table_mistakes_exit_2_before_writing(photo_folder, tmp_path, capsys):
    root, _, rows = photo_folder
    table = tmp_path / "captions.csv"
    _write_table(table, [r[:2] for r in rows], "csv", columns=("image", "caption"))
    # no split column: the table is one split, so several --splits are refused ...
    assert convert("--src", root, "--captions", table, "--dst", tmp_path / "a", "--splits", "train,valid") == 2
    assert "no 'split' column" in capsys.readouterr().err
    # ... and without --splits it is "train"
    assert convert("--src", root, "--captions", table, "--dst", tmp_path / "b", "--no-progress") == 0
    assert os.listdir(tmp_path / "b") == ["train"]
    assert convert("--src", root, "--captions", table, "--dst", tmp_path / "c", "--caption-column", "text") == 2
    assert "has no column 'text'" in capsys.readouterr().err
    assert convert("--src", root, "--captions", tmp_path / "nope.csv", "--dst", tmp_path / "d") == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_captions_table_inside_src_is_found_and_a_rerun_resumes_exactly(photo_folder, tmp_path):
    root, _, rows = photo_folder
    src = tmp_path / "src"
    for rel in [p.relative_to(root) for p in root.rglob("*") if p.is_file()]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((root / rel).read_bytes())
    _write_table(src / "captions.parquet", rows, "parquet")
    out = tmp_path / "out"
    args = ("--src", src, "--dst", out, "--samples-per-shard", "2", "--workers", "2", "--no-progress")
    assert convert(*args) == 0
    first = {p.name: p.read_bytes() for p in sorted((out / "train").iterdir())}
    assert len([n for n in first if n.endswith(".tar")]) >= 3
    # one shard's tar lost, another shard never finished: both rebuilt, the rest kept, the bytes equal
    tars = sorted(n for n in first if n.endswith(".tar"))
    (out / "train" / tars[0]).unlink()
    (out / "train" / tars[1]).unlink()
    (out / "train" / tars[1].replace(".tar", ".stats.json")).unlink()
    assert convert(*args) == 0
    again = {p.name: p.read_bytes() for p in sorted((out / "train").iterdir())}
    assert again.keys() == first.keys()
    for name in first:
        if name.endswith(".tar") or name == "rejects.jsonl":
            assert again[name] == first[name], name
    manifest = json.loads(again["manifest.json"])
    assert manifest["resumed_shards"] == len([n for n in first if n.endswith(".stats.json")]) - 2


def test_the_seed_layout_wins_over_a_stray_captions_table_unless_from_table(clean_seed, photo_folder, tmp_path):
    seed, truth = clean_seed
    root, files, rows = photo_folder
    src = tmp_path / "both"
    src.mkdir()
    for name in os.listdir(seed):
        (src / name).symlink_to(seed / name)
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    _write_table(src / "captions.csv", [r for r in rows if r[0] in files], "csv")
    assert convert("--src", src, "--dst", tmp_path / "seed", "--splits", "train", "--no-progress") == 0
    assert json.loads((tmp_path / "seed/train/manifest.json").read_text())["source"]["kind"] == "tsv"
    assert convert("--src", src, "--dst", tmp_path / "table", "--from", "table", "--no-progress") == 0
    assert json.loads((tmp_path / "table/train/manifest.json").read_text())["source"]["kind"] == "table"
    assert convert("--src", seed, "--dst", tmp_path / "none", "--from", "table") == 2


def test_group_pair_from_a_table_is_one_sample_per_row(photo_folder, tmp_path):
    root, files, rows = photo_folder
    _write_table(tmp_path / "captions.tsv", rows, "tsv")
    out = tmp_path / "out"
    assert convert("--src", root, "--captions", tmp_path / "captions.tsv", "--dst", out, "--group", "pair") == 0
    samples = read_tar_samples(shard_paths(out / "train"))
    good = [k for k, r in enumerate(rows) if r[2] == "train" and os.path.normpath(r[0] or ".") in files]
    expected = {(k + 2, rows[k][1]) for k in good if rows[k][1].strip()}
    got = set()
    for parts in samples.values():
        meta = json.loads(parts["json"])
        assert parts["jpg"] == files[meta["image_id"]]
        got |= {(t["text_id"], t["text"]) for t in meta["texts"]}
    assert got == expected and len(samples) == len(expected)
