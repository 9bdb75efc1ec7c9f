import pytest

from cnclip_scale.model.tokenizer import Tokenizer
from tests.helpers.data_shards import build_shard_set


@pytest.fixture(scope="session")
def tokenizer():
    return Tokenizer()


@pytest.fixture(scope="session")
def uneven(tmp_path_factory):
    """17 images in 3 shards of 7, 7 and 3 samples: uneven, and fewer shards than 2 ranks × 2 workers."""
    shard_set = build_shard_set(str(tmp_path_factory.mktemp("uneven")), 17, samples_per_shard=7)
    assert shard_set.sizes == [7, 7, 3]
    return shard_set


@pytest.fixture(scope="session")
def other(tmp_path_factory):
    """A second source with different image ids (for mixing), 10 images in 2 shards."""
    return build_shard_set(str(tmp_path_factory.mktemp("other")), 10, samples_per_shard=5, first_image_id=2000000)
