"""Issue 13 item 6: evaluating `a::b` whose sources share image ids merged different images under one id
(16 read, 8 reported, texts mapped to the wrong images, no warning). Now it stops with one line naming the
first colliding id and both sources; sources with distinct ids still evaluate together."""

import pytest
import torch

from cnclip_scale.data.sources import DataError
from cnclip_scale.eval import evaluate_retrieval
from cnclip_scale.model import Tokenizer, build_model, model_config
from cnclip_scale.model.configs import TINY
from cnclip_scale.shards.convert import Options, convert_split
from cnclip_scale.shards.writer import Destination
from tests.helpers.seed_data import write_seed_split


def _shards(root, first_image_id, image_offset, first_text_id):
    write_seed_split(
        f"{root}/seed",
        "test",
        6,
        size=32,
        first_image_id=first_image_id,
        image_offset=image_offset,
        first_text_id=first_text_id,
    )
    convert_split(f"{root}/seed", "test", Destination(f"{root}/shards"), Options(samples_per_shard=4, progress=False))
    return f"{root}/shards/test"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(model_config(TINY)).eval()


@pytest.mark.parametrize("workers", [0, 2])
def test_sources_sharing_image_ids_stop_with_one_line(tmp_path, model, workers):
    a = _shards(tmp_path / "a", 1000000, 0, 1)
    b = _shards(tmp_path / "b", 1000000, 40, 100)  # other photos, other texts, the same image ids
    with pytest.raises(DataError) as caught:
        evaluate_retrieval(model, f"{a}::{b}", Tokenizer(), device="cpu", workers=workers)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("image id 1000000 is in two evaluated sources: ")
    assert a in message and b in message and "6 colliding id(s)" in message


def test_sources_with_distinct_ids_evaluate_together(tmp_path, model):
    a = _shards(tmp_path / "a", 1000000, 0, 1)
    b = _shards(tmp_path / "b", 2000000, 40, 100)
    got = evaluate_retrieval(model, f"{a}::{b}", Tokenizer(), device="cpu")
    assert (got["images"], got["texts"]) == (12, 12)


def test_sources_sharing_text_ids_stop_with_one_line(tmp_path, model):
    a = _shards(tmp_path / "a", 1000000, 0, 1)
    b = _shards(tmp_path / "b", 2000000, 40, 1)  # distinct images, but text ids 1.. again
    with pytest.raises(DataError, match=r"^text id 1 is in two evaluated sources: .* \(6 colliding id\(s\)\)"):
        evaluate_retrieval(model, f"{a}::{b}", Tokenizer(), device="cpu")
