"""Issue 15 part 3b: our shards serve an open_clip baseline. open_clip (``--dataset-type webdataset``) keeps only
samples with ``KEY.txt`` beside the image and sizes epochs from ``sizes.json``; read with its own pipeline
(``open_clip_train.data.get_wds_dataset``, from the package index), it yields every sample of our shards. Our loader
keeps reading captions from the json."""

import json
from argparse import Namespace

import pytest
import webdataset as wds

from cnclip_scale.data.pipeline import Reading, build_train_loader
from cnclip_scale.model.tokenizer import Tokenizer
from cnclip_scale.model.transforms import ImageTransform
from tests.helpers.data_shards import build_shard_set
from tests.helpers.shards import read_tar_samples

open_clip_data = pytest.importorskip("open_clip_train.data")


@pytest.fixture(scope="module", params=["image", "pair"])
def ours(request, tmp_path_factory):
    return build_shard_set(str(tmp_path_factory.mktemp(request.param)), 11, samples_per_shard=4, group=request.param)


def _expected_txt(shard_set) -> dict[str, str]:
    """key -> the caption open_clip should see: the first caption (group=image), the pair's (group=pair)."""
    from cnclip_scale.shards.samples import sample_key

    out = {}
    for text in shard_set.truth.texts:
        for image_id in text["image_ids"]:
            if shard_set.manifest["group"] == "pair":
                out[sample_key(str(image_id), text["text_id"])] = text["text"]
            else:
                out.setdefault(sample_key(str(image_id)), text["text"])
    return out


def _shards(shard_set) -> str:
    return f"{shard_set.url}/train-{{000000..{len(shard_set.sizes) - 1:06d}}}.tar"


def test_every_sample_has_its_caption_in_txt_and_sizes_json_counts_it(ours):
    sizes = json.loads(open(f"{ours.url}/sizes.json").read())
    assert sizes == {s["shard"]: s["samples"] for s in ours.manifest["shards"]}
    samples = read_tar_samples([f"{ours.url}/{name}" for name in sizes])
    expected = _expected_txt(ours)
    assert {k: s["txt"].decode() for k, s in samples.items() if "txt" in s} == expected
    for s in samples.values():  # the .txt is the json's first caption
        texts = json.loads(s["json"])["texts"]
        assert ("txt" in s) == bool(texts) and (not texts or s["txt"].decode() == texts[0]["text"])


def test_open_clip_get_wds_dataset_yields_every_sample(ours):
    """Its evaluation path (``is_train=False``): open_clip 3.3's training path groups tar members with its own
    ``group_by_keys_nothrow``, which needs the webdataset <= 0.2.86 its [training] extra pins (webdataset 1.x adds an
    end-of-shard marker it cannot read), so here it runs on the same select/decode/rename stages through webdataset's
    ``tarfile_to_samples``; the epoch size it would train with comes from our sizes.json."""
    total = ours.manifest["totals"]["samples"]
    assert open_clip_data.get_dataset_size(_shards(ours)) == (total, len(ours.sizes))
    args = Namespace(val_data=_shards(ours), val_num_samples=None, workers=0, batch_size=1)
    info = open_clip_data.get_wds_dataset(
        args, preprocess_img=lambda image: image.size, is_train=False, tokenizer=lambda text: [text]
    )
    batches = list(info.dataloader)
    texts = [text for _, (text,) in batches]
    expected = _expected_txt(ours)
    assert len(texts) == total == len(expected)
    assert sorted(texts) == sorted(expected.values())  # every sample, once, with its caption
    assert all(tuple(size) == (48, 48) for (size,), _ in batches)  # and its image, decoded


def test_open_clip_pipeline_pieces_see_every_key(ours):
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(_shards(ours)),
        wds.tarfile_to_samples(),
        wds.select(open_clip_data.filter_no_caption_or_no_image),
    )
    assert sorted(s["__key__"] for s in pipeline) == sorted(ours.keys())


def test_our_loader_still_reads_captions_from_the_json(ours):
    """A .txt beside the json does not change what our loader reads: group=image samples still draw from all
    captions of the image, with their text ids."""
    loader = build_train_loader(
        Reading(sources=ours.url, batch_size=4, workers=0, shuffle_buffer=0, shard_shuffle=False),
        tokenizer=Tokenizer(),
        transform=ImageTransform(resolution=32),
        rank=0,
        world_size=1,
        seed=1,
    )
    captions = ours.truth.captions()
    for batch in loader:
        for image_id, text_id in zip(batch["image_ids"], batch["text_ids"]):
            assert text_id in {str(t) for t, _ in captions[image_id]}
