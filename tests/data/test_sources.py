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
