"""Issue 15 part 3: WebDataset shards another tool wrote (img2dataset's layout, no manifest of ours) train and evaluate:
counts from img2dataset's ``_stats.json`` or open_clip's ``sizes.json``, or from ``cnclip inspect DIR --index``, which
scans the tars once (in parallel, resumable) and writes a manifest."""

import json
import os

import pytest

from cnclip_scale.cli.inspect import main as inspect_main
from cnclip_scale.data.pipeline import Reading, build_eval_loader, build_train_loader
from cnclip_scale.data.sources import SourceError, resolve_sources
from cnclip_scale.model.transforms import ImageTransform
from cnclip_scale.shards import index as shard_index
from tests.helpers.foreign_shards import write_img2dataset_shards


@pytest.fixture(scope="module")
def laion(tmp_path_factory):
    """3 img2dataset shards of 8, 8 and 5 rows, every 4th row failed: 6 + 6 + 4 samples."""
    shards = write_img2dataset_shards(str(tmp_path_factory.mktemp("laion")), [8, 8, 5])
    assert shards.sizes == [6, 6, 4]
    return shards


def _copy_without_counts(src, dst):
    """The tars alone (a folder no tool left counts in)."""
    os.makedirs(dst)
    for name in sorted(os.listdir(src)):
        if name.endswith(".tar"):
            with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
                g.write(f.read())
    return str(dst)


def _loader(sources, tokenizer, workers=2, world=1, rank=0):
    reading = Reading(sources=sources, batch_size=3, workers=workers, shuffle_buffer=4)
    return build_train_loader(
        reading, tokenizer=tokenizer, transform=ImageTransform(resolution=32), rank=rank, world_size=world, seed=3
    )


def _train_keys(sources, tokenizer, workers=2, world=1, rank=0):
    loader = _loader(sources, tokenizer, workers, world, rank)
    return loader, list(loader)


def test_img2dataset_stats_give_the_counts_and_the_trainer_loader_reads_every_sample(laion, tokenizer):
    (source,) = resolve_sources(laion.folder)
    assert [s.samples for s in source.shards] == laion.sizes  # "successes", not "count"
    assert [s.url.rsplit("/", 1)[-1] for s in source.shards] == laion.shard_names()
    pattern = f"{laion.folder}/{{00000..00002}}.tar"
    assert [s.samples for s in resolve_sources(pattern)[0].shards] == laion.sizes
    seen = {}
    for rank in range(2):  # exact epochs over 2 ranks: every sample once
        loader, batches = _train_keys(pattern, tokenizer, world=2, rank=rank)
        assert len(batches) == loader.batches_per_epoch
        for batch in batches:
            for key, image_id, text_id, ids in zip(
                batch["keys"], batch["image_ids"], batch["text_ids"], batch["input_ids"]
            ):
                assert key not in seen
                seen[key] = True
                assert image_id == key and text_id == key  # ids from the keys (and the json's "key")
                assert ids.tolist() == tokenizer([laion.captions[key]], 52)[0][0].tolist()  # caption from .txt
    assert set(seen) == set(laion.captions)
    assert loader.stats()["corrupt_samples"] == 0


def test_the_evaluator_reads_img2dataset_shards(laion):
    batches = list(build_eval_loader(laion.folder, image_size=32, batch_size=4, workers=0, rank=0, world_size=1))
    image_ids = [i for b in batches for i in b["image_ids"]]
    texts = [t for b in batches for t in b["texts"]]
    assert image_ids == sorted(laion.captions)  # every image once, in shard order
    assert texts == [[(k, laion.captions[k])] for k in image_ids]


def test_open_clip_sizes_json_gives_the_counts(laion, tmp_path):
    folder = _copy_without_counts(laion.folder, tmp_path / "openclip")
    with open(os.path.join(folder, "sizes.json"), "w") as f:
        json.dump(dict(zip(laion.shard_names(), laion.sizes)), f)
    assert [s.samples for s in resolve_sources(folder)[0].shards] == laion.sizes
    with open(os.path.join(folder, "sizes.json"), "w") as f:
        json.dump({"00000.tar": -1}, f)
    with pytest.raises(SourceError, match=r"sizes.json: field 00000.tar must be a non-negative integer"):
        resolve_sources(folder)


def test_tars_without_counts_are_refused_with_the_way_out(laion, tmp_path):
    folder = _copy_without_counts(laion.folder, tmp_path / "bare")
    with pytest.raises(SourceError, match=r"no sample count for .*00000.tar: .*_stats.json.* --index"):
        resolve_sources(folder)


def test_index_writes_a_manifest_with_exact_counts(laion, tmp_path, capsys, tokenizer):
    folder = _copy_without_counts(laion.folder, tmp_path / "bare")
    assert inspect_main([folder, "--index", "--workers", "2"]) == 0
    manifest = json.loads(open(os.path.join(folder, "manifest.json")).read())
    assert [(s["shard"], s["samples"]) for s in manifest["shards"]] == list(zip(laion.shard_names(), laion.sizes))
    assert manifest["totals"]["samples"] == sum(laion.sizes) and manifest["format"] == "cnclip_scale.index/1"
    on_disk = [os.path.getsize(os.path.join(folder, n)) for n in laion.shard_names()]
    assert [s["bytes"] for s in manifest["shards"]] == on_disk
    assert not os.path.exists(os.path.join(folder, shard_index.PROGRESS))  # progress records removed at the end
    assert "16 samples" in capsys.readouterr().out
    assert inspect_main([folder, "--show", "2"]) == 2  # not a to_shards split: says so in one line
    assert "manifest.json was written by --index (16 samples in 3 shards" in capsys.readouterr().err
    # exact epochs, and resume, from the indexed manifest
    (source,) = resolve_sources(folder)
    assert [s.samples for s in source.shards] == laion.sizes
    loader, batches = _train_keys(folder, tokenizer, workers=0)
    assert sorted(k for b in batches for k in b["keys"]) == sorted(laion.captions)
    loader = _loader(folder, tokenizer, workers=0)
    it = iter(loader)
    taken = [next(it)["keys"] for _ in range(2)]
    resumed = _loader(folder, tokenizer, workers=0)
    resumed.load_state_dict(json.loads(json.dumps(loader.state_dict())))
    rest = [b["keys"] for b in resumed]
    assert taken + rest == [b["keys"] for b in batches]


def test_a_killed_index_run_continues_with_the_shards_it_had_not_counted(laion, tmp_path, monkeypatch):
    folder = _copy_without_counts(laion.folder, tmp_path / "bare")
    real, calls = shard_index.count_samples, []

    def dies_on_the_third(fileobj):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill would: no manifest, two shards' progress saved
        return real(fileobj)

    monkeypatch.setattr(shard_index, "count_samples", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        shard_index.index_folder(folder, workers=1, log=lambda *_: None)
    assert not os.path.exists(os.path.join(folder, "manifest.json"))
    assert sorted(os.listdir(os.path.join(folder, shard_index.PROGRESS))) == ["00000.tar.json", "00001.tar.json"]
    calls.clear()
    monkeypatch.setattr(shard_index, "count_samples", lambda f: (calls.append(1), real(f))[1])
    manifest = shard_index.index_folder(folder, workers=1, log=lambda *_: None)
    assert len(calls) == 1 and manifest["resumed_shards"] == 2  # only the shard it had not counted
    assert [s["samples"] for s in manifest["shards"]] == laion.sizes


def test_index_refuses_a_split_to_shards_wrote(uneven, capsys):
    assert inspect_main([uneven.url, "--index"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("inspect_shards: error: ") and "manifest.json exists and was not written by --index" in err


def test_a_damaged_tar_is_one_line_naming_it_and_the_others_stay_counted(laion, tmp_path, capsys):
    folder = _copy_without_counts(laion.folder, tmp_path / "bare")
    with open(os.path.join(folder, "00001.tar"), "r+b") as f:
        f.write(b"not a tar header" * 40)
    assert inspect_main([folder, "--index", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("inspect_shards: error: ") and "00001.tar: not a readable tar" in err and "\n" not in err
    assert sorted(os.listdir(os.path.join(folder, shard_index.PROGRESS))) == ["00000.tar.json"]
