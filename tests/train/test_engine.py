"""The engine helpers the training step calls, without an engine: the finiteness watch, the fp32 temperature, and
the checkpoint folder rules (resume pointers, pruning)."""
import json
import math
from pathlib import Path

import pytest
import torch

from cnclip_scale.errors import UserError
from cnclip_scale.train.engine import (
    FiniteWatch,
    ResumeError,
    find_resume,
    fp32_temperature,
    prune,
    to_universal,
)


def test_finite_watch_names_the_first_bad_step_and_only_when_asked():
    watch = FiniteWatch(torch.device("cpu"))
    watch.update(torch.tensor(2.5), 1)
    assert watch.first_bad_step() is None
    watch.update(torch.tensor(float("nan")), 2)
    watch.update(torch.tensor(1.0), 3)
    watch.update(torch.tensor(float("inf")), 4)
    assert watch.first_bad_step() == 2
    assert watch.first_bad.dtype == torch.long and watch.first_bad.dim() == 0  # kept as a device tensor


def test_fp32_temperature_has_the_fp32_value_and_the_models_gradient():
    master = torch.tensor(math.log(1 / 0.07))                          # the optimizer's fp32 copy
    param = torch.nn.Parameter(master.to(torch.bfloat16).reshape(1))    # the module's bf16 copy
    scale = param.clamp(0, math.log(100)).exp().squeeze(0)
    assert abs(scale.item() - master.exp().item()) > 1e-3               # bf16 is coarse here (about 0.06 of 14.3)
    temperature = fp32_temperature(scale, master)
    assert temperature.dtype == torch.float32 and temperature.item() == master.exp().item()
    (temperature * 2).backward()
    assert param.grad is not None and param.grad.item() == (2 * scale).item()


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
    (root / "step_notes").mkdir()              # the user's, named like a tag but not one
    (root / "step00000000").mkdir()            # tag-named, but without the files this trainer writes in every tag
    (root / "step00000000" / "keep.txt").write_text("user data")
    prune(root, keep_last=1)
    assert sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "universal") == \
        ["step00000000", "step00000003", "step_notes"]
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
