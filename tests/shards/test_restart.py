"""kill -9 mid-run, rerun: finished shards are kept, the rest rebuilt, and the result equals a clean run."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.seed_data import write_seed_dataset
from tests.helpers.shards import REPO, convert

ARGS = ["--splits", "train,valid", "--samples-per-shard", "3", "--no-progress"]


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """Enough small shards (~140) that a run is still going when its first shard is done."""
    root = tmp_path_factory.mktemp("many")
    write_seed_dataset(str(root), {"train": 360, "valid": 60}, size=48)
    clean = root / "clean"
    assert convert("--src", root, "--dst", clean, *ARGS) == 0
    return root, clean


def _files(split_dir):
    """{name: sha256} of the tars, stats-free view of the split, plus rejects and manifest minus timings."""
    out = {
        n: hashlib.sha256((split_dir / n).read_bytes()).hexdigest()
        for n in sorted(os.listdir(split_dir))
        if n.endswith(".tar")
    }
    manifest = json.loads((split_dir / "manifest.json").read_text())
    for volatile in ("seconds", "resumed_shards"):
        manifest.pop(volatile)
    return out, (split_dir / "rejects.jsonl").read_text(), manifest


def test_kill_9_then_rerun_equals_a_clean_run(many_shards, tmp_path):
    root, clean = many_shards
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tools" / "to_shards.py"),
            "--src",
            str(root),
            "--dst",
            str(out),
            *ARGS,
            "--workers",
            "2",
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    train = out / "train"
    while proc.poll() is None and not (
        train.exists() and sum(n.endswith(".stats.json") for n in os.listdir(train)) >= 3
    ):
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job: main process and its workers
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (train / "manifest.json").exists()
    done = sorted(n for n in os.listdir(train) if n.endswith(".stats.json"))
    assert 3 <= len(done) < 120
    # Damage the kill could leave in other timings: a tar whose stats never came, a leftover temporary.
    (train / done[0]).unlink()
    (train / ".train-000099.tar.tmp-12345").write_bytes(b"partial")
    (train / "train-000098.tar").write_bytes(b"a tar that never finished")
    assert convert("--src", root, "--dst", out, *ARGS) == 0
    manifest = json.loads((train / "manifest.json").read_text())
    assert 0 < manifest["resumed_shards"] < len(manifest["shards"])
    assert not [n for n in os.listdir(train) if ".tmp-" in n]
    for split in ("train", "valid"):
        assert _files(out / split) == _files(clean / split)


def test_stats_that_do_not_match_the_tar_or_the_options_are_not_trusted(many_shards, tmp_path):
    root, clean = many_shards
    out = tmp_path / "out"
    assert convert("--src", root, "--dst", out, *ARGS) == 0
    (out / "train" / "train-000003.tar").write_bytes(b"truncated")  # size no longer matches stats
    (out / "train" / "train-000004.stats.json").write_text('{"samples": 3')  # cut short
    assert convert("--src", root, "--dst", out, *ARGS) == 0
    assert json.loads((out / "train" / "manifest.json").read_text())["resumed_shards"] == 120 - 2
    assert _files(out / "train") == _files(clean / "train")
    # Other options, other plan: the old plan's shards are not this run's, so only --overwrite replaces them
    # (issue 13 item 3); then nothing is reused and no stale shard of the old plan survives.
    assert convert("--src", root, "--dst", out, "--splits", "train", "--samples-per-shard", "50") == 2
    assert convert("--src", root, "--dst", out, "--splits", "train", "--samples-per-shard", "50", "--overwrite") == 0
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    assert manifest["resumed_shards"] == 0 and len(manifest["shards"]) == 8
    assert sorted(n for n in os.listdir(out / "train") if n.endswith(".tar")) == [
        s["shard"] for s in manifest["shards"]
    ]
    (out / "train" / "NOTES.txt").write_text("the user's own file")
    assert convert("--src", root, "--dst", out, "--splits", "train", "--samples-per-shard", "50", "--overwrite") == 0
    assert json.loads((out / "train" / "manifest.json").read_text())["resumed_shards"] == 0
    assert (out / "train" / "NOTES.txt").read_text() == "the user's own file"


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(result, *names):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("to_shards: error: ") and "--overwrite" in lines[0]
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def test_files_this_run_did_not_write_are_refused_without_overwrite(clean_seed, tmp_path):
    """Issue 13 item 3: a user's train-000007.tar and train-000003.stats.json used to vanish, and manifest.json
    and rejects.jsonl were replaced, with exit 0. Now: exit 2, one line listing them, nothing touched."""
    from tests.helpers.shards import run_tool

    root, _ = clean_seed
    out = tmp_path / "out"
    split = out / "valid"
    split.mkdir(parents=True)
    (split / "valid-000007.tar").write_bytes(b"the user's own tar")
    (split / "valid-000003.stats.json").write_text('{"samples": 5, "note": "from another tool"}')
    (split / "manifest.json").write_text('{"mine": true}')
    (split / "rejects.jsonl").write_text('{"mine": true}\n')
    (split / "sizes.json").write_text('{"valid-000007.tar": 1}')  # open_clip's, from another tool
    (split / "NOTES.txt").write_text("not shard-named: never a reason to refuse")
    before = _snapshot(out)
    line = _refused(
        run_tool("--src", root, "--dst", out, "--splits", "valid", "--samples-per-shard", "5"),
        "valid-000007.tar",
        "valid-000003.stats.json",
        "manifest.json",
        "rejects.jsonl",
        "sizes.json",
    )
    assert "NOTES.txt" not in line
    assert _snapshot(out) == before
    # --overwrite replaces what is shard-named and leaves the rest
    assert convert("--src", root, "--dst", out, "--splits", "valid", "--samples-per-shard", "5", "--overwrite") == 0
    assert (split / "NOTES.txt").exists() and not (split / "valid-000007.tar").exists()
    assert sorted(n.name for n in split.glob("*.tar")) == ["valid-000000.tar", "valid-000001.tar", "valid-000002.tar"]
    sizes = json.loads((split / "sizes.json").read_text())  # ours now: every shard, the manifest's counts
    assert sizes == {s["shard"]: s["samples"] for s in json.loads((split / "manifest.json").read_text())["shards"]}


def test_another_plans_shards_are_refused_and_a_rerun_of_the_same_plan_is_not(clean_seed, tmp_path):
    from tests.helpers.shards import run_tool

    root, _ = clean_seed
    out = tmp_path / "out"
    assert convert("--src", root, "--dst", out, "--splits", "valid", "--samples-per-shard", "5") == 0
    assert convert("--src", root, "--dst", out, "--splits", "valid", "--samples-per-shard", "5") == 0  # resumes all
    assert json.loads((out / "valid" / "manifest.json").read_text())["resumed_shards"] == 3
    before = _snapshot(out)
    _refused(
        run_tool("--src", root, "--dst", out, "--splits", "valid", "--samples-per-shard", "4"),
        "valid-000000.tar",
        "valid-000000.stats.json",
    )
    assert _snapshot(out) == before
