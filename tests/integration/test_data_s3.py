"""The pipeline against a real S3 server (SeaweedFS on loopback, the session `s3_server` fixture):
the same samples, in the same order, as from local disk — inside DataLoader workers too."""

import secrets

import pytest
import torch
import webdataset as wds

from cnclip_scale.data.pipeline import Reading, build_eval_loader, build_train_loader
from cnclip_scale.data.sources import SourceError, resolve_sources
from cnclip_scale.model.tokenizer import Tokenizer
from cnclip_scale.model.transforms import ImageTransform
from tests.helpers.data_shards import build_shard_set

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def both(s3_server, tmp_path_factory):
    """The same seed split converted to local disk and to s3://bucket/ds."""
    bucket = f"data-{secrets.token_hex(4)}"
    s3_server.make_bucket(bucket)
    local = build_shard_set(str(tmp_path_factory.mktemp("local")), 17, samples_per_shard=7)
    remote = build_shard_set(
        "",
        17,
        samples_per_shard=7,
        dst=f"s3://{bucket}/ds",
        storage_options=s3_server.storage_options(),
        seed_dir=local.seed_dir,
    )
    assert remote.sizes == local.sizes == [7, 7, 3]
    return local, remote, s3_server.storage_options()


def _take(loader):
    batches = list(loader)
    return [b["keys"] for b in batches], torch.cat([b["images"] for b in batches])


def test_train_loader_reads_the_same_from_s3_in_workers(both):
    local, remote, options = both
    args = dict(tokenizer=Tokenizer(), transform=ImageTransform(resolution=32), rank=0, world_size=1, seed=5)
    shape = dict(batch_size=4, workers=2, shuffle_buffer=4)
    pattern = f"{remote.url}/train-{{000000..000002}}.tar"  # brace pattern, counts from the manifest
    from_s3 = build_train_loader(Reading(sources=pattern, **shape), storage_options=options, **args)
    assert from_s3.mp_context.get_start_method() == "forkserver"  # no fork of a process that touched S3
    keys_s3, images_s3 = _take(from_s3)
    keys_local, images_local = _take(build_train_loader(Reading(sources=local.url, **shape), **args))
    assert keys_s3 == keys_local and sorted(k for b in keys_s3 for k in b) == sorted(local.keys())
    assert torch.equal(images_s3, images_local)
    assert from_s3.stats()["corrupt_samples"] == 0


def test_eval_loader_reads_the_same_from_s3(both):
    local, remote, options = both
    args = dict(image_size=32, batch_size=5, workers=0, rank=1, world_size=2)
    s3 = list(build_eval_loader(remote.manifest_url, storage_options=options, **args))
    disk = list(build_eval_loader(local.manifest_url, **args))
    assert [b["image_ids"] for b in s3] == [b["image_ids"] for b in disk]
    assert [b["texts"] for b in s3] == [b["texts"] for b in disk]


def test_plain_webdataset_opens_s3_through_the_registered_opener(both, s3_server, monkeypatch):
    _, remote, _ = both
    for name, value in s3_server.env().items():  # plain wds takes AWS_* variables
        monkeypatch.setenv(name, value)
    samples = list(wds.WebDataset(f"{remote.url}/train-000002.tar", shardshuffle=False, empty_check=False))
    assert len(samples) == 3 and all("json" in s for s in samples)


def test_a_missing_s3_shard_is_an_error_at_start(both, s3_server):
    _, remote, options = both
    fs = s3_server.filesystem()
    fs.copy(remote.url.removeprefix("s3://"), remote.url.removeprefix("s3://") + "-copy", recursive=True)
    fs.rm(remote.url.removeprefix("s3://") + "-copy/train-000001.tar")
    with pytest.raises(SourceError, match=r"1 shard\(s\) missing: s3://.*-copy/train-000001.tar"):
        resolve_sources(remote.url + "-copy", storage_options=options)
