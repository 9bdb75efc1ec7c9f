"""The training loader in one process (ranks simulated by the `rank` argument; real multi-process runs
are in tests/integration): batch format, exact and resampled epochs, caption choice, mixing, resume."""

import io
import json
import logging

import pytest
import torch
from PIL import Image

from cnclip_scale.data.decode import decode_image
from cnclip_scale.data.ids import id_hashes
from cnclip_scale.data.pipeline import Reading, build_train_loader
from cnclip_scale.model.tokenizer import Tokenizer
from cnclip_scale.model.transforms import ImageTransform


def _loader(shards, tokenizer, rank=0, world=2, workers=2, seed=7, augment=False, **reading):
    reading = Reading(**{"sources": shards, "batch_size": 3, "workers": workers, "shuffle_buffer": 4, **reading})
    return build_train_loader(
        reading,
        tokenizer=tokenizer,
        transform=ImageTransform(resolution=32, augment=augment),
        rank=rank,
        world_size=world,
        seed=seed,
    )


def _keys(loader):
    return [batch["keys"] for batch in loader]


def test_batches_have_the_documented_format(uneven, tokenizer):
    captions = uneven.truth.captions()
    batch = next(iter(_loader(uneven.url, Tokenizer(context_length=20))))
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (3, 3, 32, 32)
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (3, 20)
    assert batch["attention_mask"].dtype == torch.bool and batch["attention_mask"].shape == (3, 20)
    assert set(batch) == {
        "images",
        "input_ids",
        "attention_mask",
        "image_ids",
        "text_ids",
        "keys",
        "image_id_hashes",
        "text_id_hashes",
    }
    # the ids hashed in the worker, as the loss compares them (1 and "1" alike: shards store ids as text)
    assert torch.equal(batch["image_id_hashes"], id_hashes(batch["image_ids"]))
    assert torch.equal(batch["text_id_hashes"], id_hashes([str(t) for t in batch["text_ids"]]))
    assert len(set(batch["image_id_hashes"].tolist())) == len(set(batch["image_ids"]))
    for image_id, text_id, ids in zip(batch["image_ids"], batch["text_ids"], batch["input_ids"]):
        text = dict((str(t), s) for t, s in captions[image_id])[text_id]  # a caption of this very image
        assert ids.tolist() == tokenizer([text], 20)[0][0].tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_exact_epochs_cover_every_sample_once_with_equal_batches_per_rank(uneven, tokenizer, workers):
    epochs = []
    for epoch in range(2):
        seen, counts = [], []
        for rank in range(2):
            loader = _loader(uneven.url, tokenizer, rank=rank, workers=workers)
            loader.set_epoch(epoch)
            batches = _keys(loader)
            counts.append(len(batches))
            seen += [k for b in batches for k in b]
        assert counts == [loader.batches_per_epoch] * 2 == [3, 3]
        assert sorted(seen) == sorted(uneven.keys())
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # reshuffled per epoch


def test_resampled_epochs_are_reproducible_from_the_seed(uneven, tokenizer):
    def run(seed, rank):
        loader = _loader(uneven.url, tokenizer, rank=rank, resampled=True, epoch_samples=30, seed=seed)
        loader.set_epoch(1)
        return _keys(loader)

    first = [run(7, r) for r in range(2)]
    assert [len(b) for b in first] == [5, 5] and all(len(k) == 3 for b in first for k in b)
    assert first == [run(7, r) for r in range(2)]
    assert first != [run(8, r) for r in range(2)]
    assert set(k for b in first for batch in b for k in batch) <= uneven.keys()


def test_group_image_picks_one_caption_per_visit_seeded(uneven, tokenizer):
    def picks(seed):
        out = []
        for epoch in range(6):
            loader = _loader(uneven.url, tokenizer, rank=0, world=1, workers=0, seed=seed)
            loader.set_epoch(epoch)
            out += [(i, t) for b in loader for i, t in zip(b["image_ids"], b["text_ids"])]
        return out

    chosen, captions = picks(3), uneven.truth.captions()
    assert all(t in {str(tid) for tid, _ in captions[i]} for i, t in chosen)
    multi = [i for i, c in captions.items() if len(c) > 1]
    assert multi and any(len({t for j, t in chosen if j == i}) > 1 for i in multi)  # varies across visits
    assert chosen == picks(3)


def test_weights_upsample_a_source_in_resampled_mode(uneven, other, tokenizer):
    def share(weights):
        loader = _loader(
            f"{uneven.url}::{other.url}",
            tokenizer,
            world=1,
            workers=0,
            resampled=True,
            epoch_samples=240,
            weights=weights,
            batch_size=10,
        )
        ids = [i for b in loader for i in b["image_ids"]]
        assert len(ids) == 240
        return sum(i.startswith("2") for i in ids) / len(ids)

    assert share("1::8") > share(None) + 0.25


@pytest.mark.parametrize("mode", ["exact", "resampled"])
@pytest.mark.parametrize("stop", [1, 2, 3, 4])
def test_resume_continues_the_exact_key_sequence(uneven, tokenizer, mode, stop):
    kw = dict(resampled=mode == "resampled", epoch_samples=24 if mode == "resampled" else None)
    full = []
    loader = _loader(uneven.url, tokenizer, **kw)
    for epoch in range(2):
        loader.set_epoch(epoch)
        full += _keys(loader)

    loader, got = _loader(uneven.url, tokenizer, **kw), []
    for epoch in range(2):
        loader.set_epoch(epoch)
        for batch in loader:
            got.append(batch["keys"])
            if len(got) == stop:
                break
        if len(got) == stop:
            break
    saved = json.loads(json.dumps(loader.state_dict()))  # JSON round trip, as a checkpoint would

    resumed = _loader(uneven.url, tokenizer, **kw)
    resumed.load_state_dict(saved)
    for epoch in range(resumed.epoch, 2):
        resumed.set_epoch(epoch)
        got += _keys(resumed)
    assert got == full


def test_position_counts_batches_taken_not_batches_prefetched(uneven, tokenizer):
    loader = _loader(uneven.url, tokenizer, workers=2)
    batches = iter(loader)
    next(batches)
    state = loader.state_dict()
    assert state["batches"] == 1 and set(state["positions"]) == {"0"}
    assert loader.stats()["batches"] == 1


def _take(loader, n):
    got = []
    for batch in loader:
        got.append(batch["keys"])
        if len(got) == n:
            break
    return got


def _gathered(loaders):
    """What ``state_dict(gather=True)`` returns under torch.distributed, for ranks simulated in-process."""
    states = [loader.state_dict() for loader in loaders]
    return {**states[0], "ranks": {str(s["rank"]): s["positions"] for s in states}}


def test_world_size_change_goes_on_with_the_samples_no_rank_took(uneven, tokenizer):
    old = [_loader(uneven.url, tokenizer, rank=r, world=2, workers=2) for r in range(2)]
    taken = []
    for loader in old:
        loader.set_epoch(1)
        taken += [k for b in _take(loader, 1) for k in b]
    state = json.loads(json.dumps(_gathered(old)))

    new = [_loader(uneven.url, tokenizer, rank=r, world=3, workers=1, batch_size=2) for r in range(3)]
    for loader in new:
        loader.load_state_dict(state)
        assert loader.epoch == 1
    counts = {loader.batches_per_epoch for loader in new}
    assert counts == {2}  # 17 - 6 taken = 11 left: 4, 4, 3 in 2 batches of <= 2
    # One more layout-preserving resume inside the resharded epoch: the chain is kept in the state.
    first = [_take(loader, 1) for loader in new]
    again = [_loader(uneven.url, tokenizer, rank=r, world=3, workers=1, batch_size=2) for r in range(3)]
    for loader, source in zip(again, new):
        loader.load_state_dict(json.loads(json.dumps(source.state_dict())))
    rest = [[k for b in first[r] + _keys(again[r]) for k in b] for r in range(3)]
    assert sorted(taken + [k for keys in rest for k in keys]) == sorted(uneven.keys())  # none repeated or lost
    for loader in again:
        loader.set_epoch(2)  # the next epoch is whole again
    assert sorted(k for loader in again for b in _keys(loader) for k in b) == sorted(uneven.keys())


def test_other_changes_restart_that_epoch(uneven, tokenizer, caplog):
    loader = _loader(uneven.url, tokenizer, workers=2)
    loader.set_epoch(1)
    next(iter(loader))
    other = _loader(uneven.url, tokenizer, workers=2, seed=99)
    with caplog.at_level(logging.WARNING, logger="cnclip_scale.data"):
        other.load_state_dict(loader.state_dict())
    assert "seed 7 -> 99" in caplog.text
    assert other.epoch == 1 and other.state_dict()["batches"] == 0 and other.batches_per_epoch == 3
    ungathered = _loader(uneven.url, tokenizer, workers=1)  # 2 ranks saved without gather=True
    ungathered.load_state_dict(loader.state_dict())
    assert ungathered.state_dict()["batches"] == 0 and ungathered.view.level == 0


def test_too_little_data_for_the_ranks_fails_at_build(uneven, tokenizer):
    with pytest.raises(ValueError, match="give no batch"):
        _loader(uneven.url, tokenizer, world=2, batch_size=10, drop_last=True)


def test_draft_decode_reduces_large_jpegs_but_never_below_the_target():
    big = io.BytesIO()
    Image.new("RGB", (800, 640), (200, 30, 30)).save(big, "JPEG")
    image = decode_image(big.getvalue(), 224)
    assert image.mode == "RGB" and image.size == (400, 320)  # 1/2 scale: both sides stay >= 224
    assert decode_image(big.getvalue(), 700).size == (800, 640)  # no reduction that would go below
    small = io.BytesIO()
    Image.new("L", (100, 80)).save(small, "PNG")
    assert decode_image(small.getvalue(), 224).mode == "RGB"


def test_augmentation_replays_and_leaves_the_callers_rng_alone(uneven, tokenizer):
    def images(seed, augment=True):
        loader = _loader(uneven.url, tokenizer, world=1, workers=0, augment=augment, seed=seed)
        return torch.cat([b["images"] for b in loader])

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = images(1)
    assert torch.equal(torch.rand(3), expected_next)  # workers=0 ran in this process
    assert torch.equal(first, images(1)) and not torch.equal(first, images(1, augment=False))


def test_augmentation_in_the_main_process_leaves_the_gpu_rng_alone(uneven, tokenizer, monkeypatch):
    """torch.manual_seed also re-seeds every CUDA generator, which fork_rng(devices=[]) does not restore: dropout on
    the GPU would follow the augmentation seed. The loader must seed only the CPU generator."""
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: seeded.append(seed))
    loader = _loader(uneven.url, tokenizer, world=1, workers=0, augment=True, seed=1)
    assert sum(len(b["keys"]) for b in loader) > 0
    assert seeded == []


def test_group_pair_shards_give_each_pair_once_with_its_own_caption(tmp_path, tokenizer):
    from tests.helpers.data_shards import build_shard_set

    pairs = build_shard_set(str(tmp_path), 9, samples_per_shard=4, group="pair")
    loader = _loader(pairs.url, tokenizer, world=1, workers=2)
    seen = [(k, i, t) for b in loader for k, i, t in zip(b["keys"], b["image_ids"], b["text_ids"])]
    assert sorted(k for k, _, _ in seen) == sorted(pairs.keys())
    linked = {(str(i), str(t["text_id"])) for t in pairs.truth.texts for i in t["image_ids"]}
    assert {(i, t) for _, i, t in seen} == linked
