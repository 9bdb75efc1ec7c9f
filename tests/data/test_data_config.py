"""DataCfg -> what each split's loader reads."""

import pytest

from cnclip_scale.data.config import DataCfg, Reading


def test_train_reading_is_full_batches_shuffled_and_mixed():
    cfg = DataCfg(
        train=["a", "b"],
        train_weights=[1.0, 3.0],
        valid=["v"],
        batch_size=8,
        workers=2,
        resampled=True,
        epoch_samples=100,
        shuffle_buffer=50,
    )
    assert cfg.reading("train") == Reading(
        sources=["a", "b"],
        weights=[1.0, 3.0],
        batch_size=8,
        workers=2,
        resampled=True,
        epoch_samples=100,
        shuffle_buffer=50,
        shard_shuffle=True,
        drop_last=True,
    )


def test_valid_reading_is_every_sample_once_in_order():
    cfg = DataCfg(
        train=["a"],
        train_weights=[2.0],
        valid=["v"],
        batch_size=8,
        valid_batch_size=3,
        workers=2,
        resampled=True,
        epoch_samples=100,
    )
    assert cfg.reading("valid") == Reading(
        sources=["v"], batch_size=3, workers=2, resampled=False, shuffle_buffer=0, shard_shuffle=False, drop_last=False
    )


def test_an_unknown_split_is_refused():
    with pytest.raises(ValueError, match="split 'test'"):
        DataCfg().reading("test")
