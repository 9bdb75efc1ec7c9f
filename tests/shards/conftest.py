"""Fixtures for the shard converter tests: generated seed-layout data (real photos); readers in tests/helpers."""

import pytest

from tests.helpers.seed_data import plant_bad_records, write_seed_dataset


@pytest.fixture(scope="session")
def clean_seed(tmp_path_factory):
    """(folder, {split: SeedSplit}) of a valid dataset; tests must not modify it."""
    root = tmp_path_factory.mktemp("clean_seed")
    return root, write_seed_dataset(str(root), {"train": 40, "valid": 12, "test": 9})


@pytest.fixture
def bad_seed(tmp_path):
    """(folder, train SeedSplit, expected rejects) with one record of every bad kind planted in train."""
    root = tmp_path / "bad_seed"
    truth = write_seed_dataset(str(root), {"train": 30, "valid": 6})
    expected = plant_bad_records(str(root), "train", truth["train"])
    return root, truth, expected
