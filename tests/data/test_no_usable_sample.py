"""Issue 13 item 1: when no shard yields a usable sample, the training loader stops after a bounded number
of attempts with one DataError line naming the sources and what was wrong — in resampled epochs (which
used to draw shards forever) and exact ones (which used to end in a RuntimeError traceback), in the main
process and through DataLoader workers alike."""

import os

import pytest

from cnclip_scale.data.pipeline import DataError, Reading, build_train_loader
from cnclip_scale.errors import UserError
from cnclip_scale.model.transforms import ImageTransform
from cnclip_scale.shards.convert import Options, convert_split
from cnclip_scale.shards.writer import Destination
from tests.helpers.data_shards import build_shard_set
from tests.helpers.seed_data import write_seed_split


@pytest.fixture(scope="module")
def unreadable(tmp_path_factory):
    """Three shards whose tars are all garbage (the manifest still promises 12 samples)."""
    shard_set = build_shard_set(str(tmp_path_factory.mktemp("unreadable")), 12, samples_per_shard=4)
    for entry in shard_set.manifest["shards"]:
        with open(f"{shard_set.url}/{entry['shard']}", "wb") as f:
            f.write(b"not a tar at all" * 64)
    return shard_set.url


@pytest.fixture(scope="module")
def captionless(tmp_path_factory):
    """Readable shards of good images, none of which any text names (every sample has "texts": [])."""
    root = str(tmp_path_factory.mktemp("captionless"))
    write_seed_split(f"{root}/seed", "train", 8, size=32)
    with open(f"{root}/seed/train_texts.jsonl", "w"):
        pass
    convert_split(f"{root}/seed", "train", Destination(f"{root}/shards"), Options(samples_per_shard=4, progress=False))
    return f"{root}/shards/train"


def _drain(url, tokenizer, **kw):
    reading = Reading(**{"sources": url, "batch_size": 2, "shuffle_buffer": 4, **kw})
    with pytest.raises(DataError) as caught:
        for _ in build_train_loader(
            reading, tokenizer=tokenizer, transform=ImageTransform(resolution=32), rank=0, world_size=1, seed=3
        ):
            pass
    message = str(caught.value)
    assert isinstance(caught.value, UserError)  # what the commands print as one line, exit code 2
    assert "\n" not in message and "Traceback" not in message, message
    return message


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("resampled", [True, False])
def test_unreadable_shards_stop_with_one_line(unreadable, tokenizer, resampled, workers):
    message = _drain(unreadable, tokenizer, resampled=resampled, workers=workers)
    assert message.startswith("no usable sample in ")
    assert unreadable in message  # the source, as the user gave it
    assert "unreadable" in message  # what was wrong with it


@pytest.mark.timeout(60)
@pytest.mark.parametrize("resampled", [True, False])
def test_samples_without_captions_stop_with_one_line(captionless, tokenizer, resampled):
    message = _drain(captionless, tokenizer, resampled=resampled, workers=2)
    assert captionless in message and "no caption" in message


@pytest.mark.timeout(60)
def test_mixed_sources_name_every_source(unreadable, captionless, tokenizer):
    message = _drain(f"{unreadable}::{captionless}", tokenizer, resampled=True, weights="1::1")
    assert unreadable in message and captionless in message


@pytest.mark.timeout(120)
def test_a_mostly_broken_source_still_trains(unreadable, uneven, tokenizer):
    """The bound counts failures in a row: one good source among bad ones keeps the epoch going."""
    loader = build_train_loader(
        Reading(
            sources=f"{unreadable}::{uneven.url}",
            batch_size=2,
            shuffle_buffer=4,
            resampled=True,
            weights="20::1",
            epoch_samples=40,
        ),
        tokenizer=tokenizer,
        transform=ImageTransform(resolution=32),
        rank=0,
        world_size=1,
        seed=3,
    )
    batches = [b["keys"] for b in loader]
    assert len(batches) == loader.batches_per_epoch == 20
    assert {k for b in batches for k in b} <= uneven.keys()
    assert loader.stats()["unreadable_shards"] > 0
    assert os.path.isdir(unreadable)
