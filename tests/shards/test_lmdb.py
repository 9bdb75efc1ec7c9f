"""Chinese-CLIP's LMDB (made by its own build_lmdb_dataset.py) -> the same shards' samples as the TSV."""

import json
import os
import pickle
import shutil

import lmdb
import pytest

from tests.helpers.seed_data import build_lmdb_chinese_clip
from tests.helpers.shards import convert, image_samples, read_tar_samples, reject_tuples, shard_paths


@pytest.fixture
def seed_with_lmdb(clean_seed, tmp_path):
    root, truth = clean_seed
    copy = tmp_path / "seed"
    shutil.copytree(root, copy)
    return copy, truth, build_lmdb_chinese_clip(str(copy), ["train", "valid"])


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_lmdb_gives_the_same_samples_as_the_tsv(seed_with_lmdb, tmp_path):
    root, truth, lmdb_dir = seed_with_lmdb
    for group in ("image", "pair"):
        via_tsv, via_lmdb = tmp_path / f"tsv-{group}", tmp_path / f"lmdb-{group}"
        assert (
            convert("--src", root, "--from", "tsv", "--dst", via_tsv, "--splits", "train,valid", "--group", group) == 0
        )
        assert (
            convert(
                "--src",
                lmdb_dir,
                "--dst",
                via_lmdb,
                "--splits",
                "train,valid",
                "--group",
                group,
                "--workers",
                "2",
                "--samples-per-shard",
                "9",
            )
            == 0
        )
        for split in ("train", "valid"):
            a = read_tar_samples(shard_paths(via_tsv / split))
            b = read_tar_samples(shard_paths(via_lmdb / split))
            assert a == b and len(a) > 0
            manifest = json.loads((via_lmdb / split / "manifest.json").read_text())
            assert manifest["source"]["kind"] == "lmdb" and reject_tuples(via_lmdb / split) == []
    train = image_samples(read_tar_samples(shard_paths(tmp_path / "lmdb-image" / "train")))
    assert train == {i: (d, truth["train"].captions()[i]) for i, d in truth["train"].images.items()}


def test_crafted_pickle_and_bad_image_in_lmdb_are_rejected_and_listed(seed_with_lmdb, tmp_path):
    root, truth, lmdb_dir = seed_with_lmdb
    marker = tmp_path / "pwned"
    pairs = lmdb.open(os.path.join(lmdb_dir, "train", "pairs"), map_size=1 << 30)
    with pairs.begin(write=True) as txn:
        n = int(txn.get(b"num_samples"))
        txn.put(str(n).encode(), pickle.dumps((1000000, 5555, _Payload(marker))))
        txn.put(str(n + 1).encode(), pickle.dumps({"image_id": 1000000}))
        txn.put(b"num_samples", str(n + 2).encode())
    pairs.close()
    imgs = lmdb.open(os.path.join(lmdb_dir, "train", "imgs"), map_size=1 << 30)
    with imgs.begin(write=True) as txn:
        txn.put(b"1000001", b"not base64 at all!")
    imgs.close()
    out = tmp_path / "out"
    assert convert("--src", root, "--from", "lmdb", "--dst", out, "--splits", "train") == 0
    assert not marker.exists()
    assert reject_tuples(out / "train") == sorted(
        [
            ("image", "lmdb/train/imgs", "1000001", "invalid_base64"),
            ("pair", "lmdb/train/pairs", str(n), "unsafe_pickle"),
            ("pair", "lmdb/train/pairs", str(n + 1), "bad_pair"),
            *[
                ("pair", "lmdb/train/pairs", str(k), "image_rejected")
                for k in range(n)
                if pickle.loads(
                    lmdb.open(os.path.join(lmdb_dir, "train", "pairs"), readonly=True, lock=False)
                    .begin()
                    .get(str(k).encode())
                )[0]
                == 1000001
            ],
        ]
    )
    records = json.loads((out / "train" / "manifest.json").read_text())["records"]
    assert records["pairs"]["input"] == n + 2 and records["images"]["rejected"] == 1
    assert all(row["input"] == row["written"] + row["rejected"] for row in records.values())
