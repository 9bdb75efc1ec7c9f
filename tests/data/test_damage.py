"""A broken JPEG and a truncated tar: those samples are skipped, counted and named in warnings; the
rest is delivered and every rank still yields its planned number of batches."""

import io
import logging
import shutil
import tarfile

import pytest

from cnclip_scale.data.pipeline import Reading, build_eval_loader, build_train_loader
from cnclip_scale.model.transforms import ImageTransform
from cnclip_scale.shards.samples import sample_key
from tests.helpers.data_shards import build_shard_set


def _rewrite_member(path, name, data):
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, payload in members:
            payload = data if member.name == name else payload
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))


def _truncate_inside(path, sample_index):
    """Cut the tar in the middle of the image of its `sample_index`-th sample; return the keys it held."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    keys = list(dict.fromkeys(m.name.split(".")[0] for m in members))
    image = next(m for m in members if m.name.startswith(keys[sample_index] + ".") and not m.name.endswith(".json"))
    with open(path, "r+b") as f:
        f.truncate(image.offset_data + image.size // 2)
    return keys


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    shard_set = build_shard_set(str(root), 12, samples_per_shard=4)
    assert shard_set.sizes == [4, 4, 4]
    broken_id = "1000001"
    _rewrite_member(
        f"{shard_set.url}/train-000000.tar",
        f"{sample_key(broken_id)}.jpg",
        b"\xff\xd8\xff\xe0" + b"\x13" * 300 + b"\xff\xd9",
    )
    keys = _truncate_inside(f"{shard_set.url}/train-000001.tar", 2)
    lost = set(keys[2:])  # the cut sample and everything after it
    return shard_set, {sample_key(broken_id)}, lost


def test_damaged_samples_are_skipped_counted_and_named(damaged, tokenizer, caplog):
    shard_set, broken, lost = damaged
    loader = build_train_loader(
        Reading(sources=shard_set.url, batch_size=3, shuffle_buffer=4),
        tokenizer=tokenizer,
        transform=ImageTransform(resolution=32),
        rank=0,
        world_size=1,
        seed=1,
    )
    with caplog.at_level(logging.WARNING, logger="cnclip_scale.data"):
        batches = [b["keys"] for b in loader]
    delivered = [k for b in batches for k in b]
    assert len(batches) == loader.batches_per_epoch == 4
    assert set(delivered) == shard_set.keys() - broken - lost
    stats = loader.stats()
    assert stats["corrupt_samples"] == 1 and stats["missing_samples"] == len(lost) == 2
    assert stats["unreadable_shards"] == 1
    # 9 good samples fill 3 batches; the planned 4th is kept (never empty) with one repeated sample.
    assert stats["filler_samples"] == 1 and len(delivered) == 10
    assert f"train-000000.tar key {next(iter(broken))}" in caplog.text
    assert "train-000001.tar: unreadable" in caplog.text


def test_damage_does_not_unbalance_ranks(damaged, tokenizer):
    shard_set, broken, lost = damaged
    delivered, counts, totals = [], [], {}
    for rank in range(2):
        loader = build_train_loader(
            Reading(sources=shard_set.url, batch_size=2, workers=2, shuffle_buffer=4),
            tokenizer=tokenizer,
            transform=ImageTransform(resolution=32),
            rank=rank,
            world_size=2,
            seed=1,
        )
        batches = [b["keys"] for b in loader]
        counts.append(len(batches))
        delivered += [k for b in batches for k in b]
        for name, n in loader.stats().items():
            totals[name] = totals.get(name, 0) + n if isinstance(n, int) else n
    assert counts == [3, 3]
    assert set(delivered) == shard_set.keys() - broken - lost
    assert (totals["corrupt_samples"], totals["missing_samples"]) == (1, 2)


def test_eval_reader_skips_damage_too(damaged):
    shard_set, broken, lost = damaged
    loader = build_eval_loader(shard_set.url, image_size=32, batch_size=5, workers=0, rank=0, world_size=1)
    keys = [k for b in loader for k in b["keys"]]
    assert sorted(keys) == sorted(shard_set.keys() - broken - lost)
    assert loader.stats()["corrupt_samples"] == 1 and loader.stats()["missing_samples"] == 2


def test_a_shard_that_vanished_after_start_is_counted_not_fatal(damaged, tokenizer, tmp_path):
    shard_set, _, _ = damaged
    copy = tmp_path / "copy"
    shutil.copytree(shard_set.url, copy)
    loader = build_train_loader(
        Reading(sources=str(copy), batch_size=4, shard_shuffle=False, shuffle_buffer=0),
        tokenizer=tokenizer,
        transform=ImageTransform(resolution=32),
        rank=0,
        world_size=1,
        seed=1,
    )
    (copy / "train-000002.tar").unlink()
    batches = [b["keys"] for b in loader]
    assert len(batches) == 3 and loader.stats()["missing_samples"] == 2 + 4
