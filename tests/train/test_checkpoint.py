"""The checkpoint folder rules (resume pointers, pruning, the universal conversion's guard) and the checkpointer's
round trip of everything a resume needs (counters, data position, random streams), with a stand-in engine."""

import json
import random
from pathlib import Path

import pytest
import torch

from cnclip_scale.errors import UserError
from cnclip_scale.train.checkpoint import Checkpointer, ResumeError, find_resume, prune, to_universal
from cnclip_scale.train.state import TrainState

# --------------------------------------------------------------- resume pointers resolve inside the run, or are refused


def _run_with_tag(tmp_path: Path, tag: str = "step00000004", ranks: int = 1) -> Path:
    """A run folder laid out as ``save`` leaves it (the DeepSpeed files themselves play no part here)."""
    root = tmp_path / "run" / "checkpoints"
    (root / tag).mkdir(parents=True)
    for r in range(ranks):
        (root / tag / f"rank{r:05d}_state.json").write_text(json.dumps({"data": {}, "rng": {}}))
    (root / "latest").write_text(tag)
    return tmp_path / "run"


def test_resume_error_is_a_user_error():
    assert issubclass(ResumeError, UserError)


def test_latest_resolves_to_its_tag(tmp_path):
    run = _run_with_tag(tmp_path)
    assert find_resume("auto", run) == (run / "checkpoints", "step00000004")


@pytest.mark.parametrize("pointer", ["../../victim", "/etc", "..", ".", "step1/../../victim", "sub/step1"])
def test_latest_naming_a_path_outside_the_checkpoint_folder_is_refused(tmp_path, pointer):
    victim = tmp_path / "victim"
    (victim / "universal" / "x").mkdir(parents=True)
    run = _run_with_tag(tmp_path)
    (run / "checkpoints" / "latest").write_text(pointer)
    with pytest.raises(ResumeError, match="not a checkpoint tag inside"):
        find_resume("auto", run)
    assert (victim / "universal" / "x").is_dir()


def test_a_tag_that_is_a_symlink_out_of_the_folder_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    run = _run_with_tag(tmp_path)
    (run / "checkpoints" / "step00000009").symlink_to(victim)
    (run / "checkpoints" / "latest").write_text("step00000009")
    with pytest.raises(ResumeError, match="not a checkpoint tag inside"):
        find_resume("auto", run)


def test_empty_latest_and_missing_tag_are_refused(tmp_path):
    run = _run_with_tag(tmp_path)
    latest = run / "checkpoints" / "latest"
    latest.write_text("")
    with pytest.raises(ResumeError, match=f"{latest} is empty"):
        find_resume("auto", run)
    latest.write_text("step00000099\n")
    with pytest.raises(ResumeError, match=f"{latest} points to 'step00000099' but .*step00000099 does not exist"):
        find_resume("auto", run)


def test_truncated_rank_state_is_refused_before_any_rank_starts(tmp_path):
    run = _run_with_tag(tmp_path, ranks=2)
    state = run / "checkpoints" / "step00000004" / "rank00001_state.json"
    state.write_text(state.read_text()[:7])
    with pytest.raises(ResumeError, match=f"{state}: not a complete rank state"):
        find_resume("auto", run)
    for f in state.parent.glob("rank*_state.json"):
        f.unlink()
    with pytest.raises(ResumeError, match="no rank.*_state.json"):
        find_resume("auto", run)


def test_prune_deletes_only_the_runs_own_old_tags(tmp_path):
    run = _run_with_tag(tmp_path, "step00000001")
    root = run / "checkpoints"
    for tag in ("step00000002", "step00000003"):
        _run_with_tag(tmp_path / tag, tag)
        (tmp_path / tag / "run" / "checkpoints" / tag).rename(root / tag)
        (root / "universal" / tag).mkdir(parents=True)
    (root / "step_notes").mkdir()  # the user's, named like a tag but not one
    (root / "step00000000").mkdir()  # tag-named, but without the files this trainer writes in every tag
    (root / "step00000000" / "keep.txt").write_text("user data")
    prune(root, keep_last=1)
    assert sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "universal") == [
        "step00000000",
        "step00000003",
        "step_notes",
    ]
    assert [p.name for p in (root / "universal").iterdir()] == ["step00000003"]
    assert (root / "step00000000" / "keep.txt").read_text() == "user data"


def test_prune_refuses_keep_last_below_one(tmp_path):
    run = _run_with_tag(tmp_path)
    with pytest.raises(ValueError):
        prune(run / "checkpoints", keep_last=0)
    assert (run / "checkpoints" / "step00000004").is_dir()


def test_to_universal_never_touches_a_path_outside_the_checkpoint_folder(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("x")
    run = _run_with_tag(tmp_path)
    with pytest.raises(ResumeError, match="not a checkpoint tag inside"):
        to_universal(run / "checkpoints", "../../../victim")
    assert (victim / "precious").exists()


def test_resume_none_and_a_fresh_run_find_nothing(tmp_path):
    run = _run_with_tag(tmp_path)
    assert find_resume("none", run) is None
    assert find_resume("auto", tmp_path / "fresh") is None


def test_resume_from_a_tag_dir_or_a_checkpoints_dir(tmp_path):
    run = _run_with_tag(tmp_path)
    root = run / "checkpoints"
    (root / "latest").unlink()  # a tag dir needs no pointer
    assert find_resume(str(root / "step00000004"), tmp_path / "elsewhere") == (root, "step00000004")
    (root / "latest").write_text("step00000004\n")
    assert find_resume(str(root), tmp_path / "elsewhere") == (root, "step00000004")


def test_resume_from_a_path_that_is_no_checkpoint_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(ResumeError, match=f"train.resume={path}: neither a checkpoint tag dir nor"):
            find_resume(str(path), tmp_path / "run")


# ------------------------------------------------------------------------- the checkpointer's round trip, no DeepSpeed


class StandInEngine:
    """What ``Checkpointer`` asks of a DeepSpeed engine: its client state goes to a JSON file in the tag dir."""

    class optimizer:  # noqa: N801 - mirrors engine.optimizer
        param_groups: list = []

    def save_checkpoint(self, root, tag, client_state, save_latest):
        assert save_latest is False  # the pointer is ours, written after every rank's files
        Path(root, tag).mkdir(parents=True)
        Path(root, tag, "client.json").write_text(json.dumps(client_state))

    def load_universal_checkpoint(self):
        return False

    def load_checkpoint(self, root, tag):
        return None, json.loads(Path(root, tag, "client.json").read_text())


class StandInLoader:
    def __init__(self, position=None):
        self.position, self.epochs = position, []

    def state_dict(self, gather=False):
        return {"position": self.position, "gathered": gather}

    def load_state_dict(self, state):
        self.position = state

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


def test_trainstate_client_state_round_trip_and_old_checkpoints():
    state = TrainState(step=9, epoch=2, epoch_batches=3, epoch_samples=40, last_saved=4)
    again = TrainState.from_client_state(state.to_client_state(), global_batch=16)
    assert again == TrainState(step=9, epoch=2, epoch_batches=3, epoch_samples=40, last_saved=9)
    # written before epoch_samples was stored: counted from this run's global batch
    old = {"step": 9, "epoch": 2, "epoch_batches": 3}
    assert TrainState.from_client_state(old, global_batch=16).epoch_samples == 48


def test_trainstate_counts_steps_and_epochs():
    state = TrainState()
    state.advance(8)
    state.advance(8)
    assert (state.step, state.epoch_batches, state.epoch_samples) == (2, 2, 16)
    state.next_epoch()
    assert (state.step, state.epoch, state.epoch_batches, state.epoch_samples) == (2, 1, 0, 0)


def test_checkpointer_saves_and_restores_everything_a_resume_needs(tmp_path):
    out = tmp_path / "run"
    saver = Checkpointer(out, keep_last=2, resume=None)
    state = TrainState(step=7, epoch=1, epoch_batches=3, epoch_samples=48)
    saver.track(engine=StandInEngine(), loader=StandInLoader({"slot": 5}), state=state, meta={"run_config": {"x": 1}})
    path = saver.save()
    after_save = (torch.rand(3), random.random())  # what the run draws next, which a resume must draw again
    assert path == out / "checkpoints" / "step00000007" and state.last_saved == 7
    assert (out / "checkpoints" / "latest").read_text() == "step00000007"
    client = json.loads((path / "client.json").read_text())
    assert client == {
        "step": 7,
        "epoch": 1,
        "epoch_batches": 3,
        "epoch_samples": 48,
        "run_config": {"x": 1},
        "universal_checkpoint_info": {"universal_checkpoint_version": 0.2},
        "world_size": 1,
    }
    rank_state = json.loads((path / "rank00000_state.json").read_text())
    assert rank_state["data"] == {"position": {"slot": 5}, "gathered": True} and set(rank_state["rng"]) >= {"torch"}

    torch.manual_seed(123)  # the resumed process starts with other streams
    restorer = Checkpointer(out, keep_last=2, resume=find_resume("auto", out))
    assert not restorer.universal
    resumed, loader = TrainState(), StandInLoader()
    restorer.track(engine=StandInEngine(), loader=loader, state=resumed, meta={})
    assert restorer.restore(seed=0, global_batch=16)
    assert resumed == TrainState(step=7, epoch=1, epoch_batches=3, epoch_samples=48, last_saved=7)
    assert loader.position == {"position": {"slot": 5}, "gathered": True}
    again = (torch.rand(3), random.random())
    assert torch.equal(again[0], after_save[0]) and again[1] == after_save[1]


def test_a_fresh_start_seeds_each_rank_and_starts_the_loaders_epoch(tmp_path):
    checkpointer = Checkpointer(tmp_path / "run", keep_last=1, resume=None)
    loader = StandInLoader()
    checkpointer.track(engine=StandInEngine(), loader=loader, state=TrainState(), meta={})
    assert checkpointer.restore(seed=5, global_batch=8) is False
    first = torch.rand(2)
    checkpointer.restore(seed=5, global_batch=8)
    assert loader.epochs == [0, 0] and torch.equal(torch.rand(2), first)


def test_pruning_after_save_keeps_the_newest(tmp_path):
    out = tmp_path / "run"
    saver = Checkpointer(out, keep_last=2, resume=None)
    state = TrainState()
    saver.track(engine=StandInEngine(), loader=StandInLoader(), state=state, meta={})
    for step in (1, 2, 3):
        state.step = step
        saver.save()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step00000002", "step00000003"]
