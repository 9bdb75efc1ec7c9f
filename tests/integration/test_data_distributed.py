"""2 ranks × 2 DataLoader workers as real gloo processes, on 3 uneven shards (7, 7, 3 samples):
fewer shards than ranks × workers. Equal batches per rank, exact coverage, seeded resampling, and
resume in fresh processes continuing the uninterrupted key sequence on every rank, and a resume on one
rank (world size 2 -> 1) that finishes the epoch with exactly the samples the two ranks had not taken.

Three launches in all (start-up dominates on CI): the first runs every uninterrupted job and the
interrupted halves, the second resumes from the saved states in fresh processes, the third resumes
the exact run's state on a single rank."""

import pytest

from integration.data_launch import run_ranks
from tests.helpers.data_shards import build_shard_set

pytestmark = pytest.mark.integration

JOB = dict(batch_size=3, workers=2, seed=11, shuffle_buffer=4, epochs=2)
MODES = {"exact": dict(mode="exact"), "resampled": dict(mode="resampled", epoch_samples=30)}
STOPS = {"exact": 4, "resampled": 7}  # both stop mid-way through epoch 1


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    shards = build_shard_set(str(root / "data"), 17, samples_per_shard=7)
    assert shards.sizes == [7, 7, 3]
    jobs = {}
    for mode, extra in MODES.items():
        jobs[f"{mode}-full"] = {**JOB, **extra, "source": shards.url}
        jobs[f"{mode}-first"] = {**JOB, **extra, "source": shards.url, "stop_after": STOPS[mode]}
    outs = run_ranks(str(root), jobs)
    resumed = {
        f"{mode}-second": {**JOB, **extra, "source": shards.url, "state_in": str(root / f"{mode}-first.state.json")}
        for mode, extra in MODES.items()
    }
    outs.update(run_ranks(str(root), resumed))  # fresh processes
    single = {
        "exact-one-rank": {
            **JOB,
            **MODES["exact"],
            "source": shards.url,
            "state_in": str(root / "exact-first.state.json"),
        }
    }
    outs.update(run_ranks(str(root), single, world=1))
    return shards, outs


def _per_epoch(out):
    epochs = {}
    for epoch, keys in out["batches"]:
        epochs.setdefault(epoch, []).append(keys)
    return epochs


def test_exact_epochs_equal_batches_and_every_sample_once(runs):
    shards, outs = runs
    full = outs["exact-full"]
    for epoch in range(2):
        per_rank = [_per_epoch(o)[epoch] for o in full]
        assert [len(b) for b in per_rank] == [full[0]["batches_per_epoch"]] * 2 == [3, 3]
        keys = [k for batches in per_rank for b in batches for k in b]
        assert sorted(keys) == sorted(shards.keys())
    assert _per_epoch(full[0])[0] != _per_epoch(full[0])[1]


def test_resampled_epochs_equal_batches_full_size(runs):
    shards, outs = runs
    full = outs["resampled-full"]
    assert all(len(_per_epoch(o)[e]) == 5 for o in full for e in range(2))
    assert all(len(keys) == 3 and set(keys) <= shards.keys() for o in full for _, keys in o["batches"])
    assert full[0]["batches"] != full[1]["batches"]  # ranks draw different streams


@pytest.mark.parametrize("mode", MODES)
def test_fresh_processes_reproduce_and_resume_the_key_sequence(runs, mode):
    _, outs = runs
    for rank in range(2):
        first, second = outs[f"{mode}-first"][rank]["batches"], outs[f"{mode}-second"][rank]["batches"]
        assert len(first) == STOPS[mode] and second  # the split is really mid-run
        assert first + second == outs[f"{mode}-full"][rank]["batches"]


def test_resume_on_fewer_ranks_finishes_the_epoch_without_repeats(runs):
    shards, outs = runs
    before = [k for o in outs["exact-first"] for epoch, keys in o["batches"] if epoch == 1 for k in keys]
    (alone,) = outs["exact-one-rank"]
    after = [k for epoch, keys in alone["batches"] for k in keys]
    assert {epoch for epoch, _ in alone["batches"]} == {1} and before and after
    assert sorted(before + after) == sorted(shards.keys())
