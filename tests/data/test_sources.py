"""Source strings -> shard URLs with counts; missing shards fail at start."""

import json
import os
import shutil

import pytest
from webdataset.gopen import gopen_schemes

from cnclip_scale.data.sources import SourceError, check_exist, resolve_source, resolve_sources


def test_manifest_folder_and_brace_pattern_resolve_to_the_same_shards(uneven):
    by_manifest = resolve_source(uneven.manifest_url)
    by_folder = resolve_source(uneven.url)
    by_pattern = resolve_source(f"{uneven.url}/train-{{000000..000002}}.tar")
    assert by_manifest.shards == by_folder.shards == by_pattern.shards
    assert [s.samples for s in by_manifest.shards] == [7, 7, 3]
    assert by_manifest.group == by_folder.group == "image"
    assert all(os.path.isfile(s.url) for s in by_manifest.shards)


def test_pattern_without_manifest_takes_counts_from_stats_files(uneven, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(uneven.url, copy)
    os.remove(copy / "manifest.json")
    assert [s.samples for s in resolve_source(str(copy)).shards] == [7, 7, 3]  # from sizes.json
    os.remove(copy / "sizes.json")
    source = resolve_source(str(copy))
    assert [s.samples for s in source.shards] == [7, 7, 3]
    os.remove(copy / "train-000001.stats.json")
    with pytest.raises(SourceError, match="no sample count for .*train-000001.tar"):
        resolve_source(f"{copy}/train-{{000000..000002}}.tar")


def test_sources_mix_with_weights(uneven, other):
    a, b = resolve_sources(f"{uneven.manifest_url}::{other.url}", weights="1::3")
    assert (a.weight, b.weight) == (1.0, 3.0) and a.samples == 17 and b.samples == 10
    assert [s.weight for s in resolve_sources([uneven.url, other.url], weights=[2, 5])] == [2.0, 5.0]
    with pytest.raises(SourceError, match="2 weights for 1 sources"):
        resolve_sources(uneven.url, weights=[1, 2])


def test_a_missing_shard_is_an_error_at_start(uneven, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(uneven.url, copy)
    os.remove(copy / "train-000002.tar")
    with pytest.raises(SourceError, match=r"1 shard\(s\) missing: .*train-000002.tar"):
        resolve_sources(str(copy))
    with pytest.raises(SourceError, match="manifest not found"):
        resolve_sources(str(tmp_path / "nowhere" / "manifest.json"))
    check_exist([f"{copy}/train-000000.tar"])  # present: no error


def test_manifest_shard_names_are_relative_to_the_manifest(uneven, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(uneven.url, moved)
    assert all(s.url.startswith(str(moved)) for s in resolve_source(str(moved / "manifest.json")).shards)
    assert json.loads((moved / "manifest.json").read_text())["shards"][0]["shard"] == "train-000000.tar"


def test_webdataset_can_open_s3_urls_after_import():
    assert "s3" in gopen_schemes and gopen_schemes["s3"].__module__ == "cnclip_scale.data.sources"


def _copy_with_manifest(uneven, tmp_path, edit):
    copy = tmp_path / "copy"
    shutil.copytree(uneven.url, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda m: m["shards"][1].update(samples=-7), r"shards\[1\]\.samples must be a non-negative integer, got -7"),
        (lambda m: m["shards"][0].update(samples="7"), r"shards\[0\]\.samples must be a non-negative integer"),
        (lambda m: m["shards"][2].update(samples=2.5), r"shards\[2\]\.samples must be a non-negative integer"),
        (lambda m: m["shards"][0].pop("shard"), r"field shards\[0\]\.shard is missing"),
        (lambda m: m.pop("shards"), r"field shards is missing"),
        (lambda m: m.update(shards={"a": 1}), r"field shards must be a list"),
        (lambda m: m.update(group="caption"), r"field group must be"),
    ],
)
def test_an_impossible_manifest_is_one_line_naming_file_and_field(uneven, tokenizer, tmp_path, edit, field):
    """Issue 13 item 5: a negative count used to hang the trainer; a missing key was a KeyError traceback."""
    from cnclip_scale.data.pipeline import Reading, build_train_loader
    from cnclip_scale.model.transforms import ImageTransform

    copy = _copy_with_manifest(uneven, tmp_path, edit)
    for spec in (str(copy), str(copy / "manifest.json"), f"{copy}/train-{{000000..000002}}.tar"):
        if "{" in spec and "shards" not in field:  # a pattern reads the manifest's entries too
            continue
        with pytest.raises(SourceError, match=rf"^{copy}/manifest\.json: .*{field}") as caught:
            build_train_loader(
                Reading(sources=spec, batch_size=2),
                tokenizer=tokenizer,
                transform=ImageTransform(resolution=32),
                rank=0,
                world_size=1,
                seed=0,
            )
        assert "\n" not in str(caught.value)


def test_a_manifest_that_is_not_an_object_or_not_json_is_one_line(uneven, tmp_path):
    copy = _copy_with_manifest(uneven, tmp_path, lambda m: None)
    (copy / "manifest.json").write_text("[1, 2]")
    with pytest.raises(SourceError, match=r"manifest\.json: expected a JSON object, got list"):
        resolve_sources(str(copy))
    (copy / "manifest.json").write_text('{"shards": [')
    with pytest.raises(SourceError, match=r"manifest\.json: not valid JSON"):
        resolve_sources(str(copy))


@pytest.mark.parametrize("samples, shown", [(-1, "-1"), (None, "None"), ("4", "'4'"), (True, "True")])
def test_a_bad_stats_count_is_one_line_naming_file_and_field(uneven, tmp_path, samples, shown):
    copy = tmp_path / "copy"
    shutil.copytree(uneven.url, copy)
    os.remove(copy / "manifest.json")
    os.remove(copy / "sizes.json")
    stats = json.loads((copy / "train-000001.stats.json").read_text())
    stats["samples"] = samples
    (copy / "train-000001.stats.json").write_text(json.dumps(stats))
    with pytest.raises(
        SourceError,
        match=rf"train-000001\.stats\.json: field samples must be a non-negative "
        rf"integer, got {shown}",
    ):
        resolve_sources(str(copy))
    stats.pop("samples")
    (copy / "train-000001.stats.json").write_text(json.dumps(stats))
    with pytest.raises(SourceError, match=r"train-000001\.stats\.json: field samples is missing"):
        resolve_sources(str(copy))
