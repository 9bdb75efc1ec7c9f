"""launch/pretrain.py's answer to bad settings and damaged run folders: one line on stderr, exit code 2, no
traceback, and nothing outside the run changed. Every case here fails before a process group starts (the checks
``loop.preflight`` makes), so the command runs in this process, and at the end as a process of its own (rank 0 of
2, whose partner never comes); the full 2-rank form is in tests/integration."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cnclip_scale.launch_env import free_port
from tests.helpers.train_runs import REPO, make_tiny_shards, train_env


def _command():
    spec = importlib.util.spec_from_file_location("pretrain_command", REPO / "launch/pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("shards"), {"train": 16})


def pretrain(capsys, shards, out, *extra) -> tuple[int, str]:
    rc = _command()(
        [
            "--config",
            str(REPO / "configs/tiny-cpu.yaml"),
            f"data.train=[{shards}/train]",
            f"train.output_dir={out}",
            "data.batch_size=8",
            *extra,
        ]
    )
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def assert_one_line(rc: int, output: str, expected: str) -> None:
    assert rc == 2, output
    # DeepSpeed's own import-time notice ('[date] [WARNING] ... Setting accelerator to CPU') is not ours to count
    lines = [line for line in output.splitlines() if line.strip() and not re.match(r"\[[\d-]+ [\d:,]+\] \[", line)]
    assert len(lines) == 1 and "Traceback" not in output, output
    assert lines[0].startswith(expected), lines[0]


def _run_with_checkpoint(tmp_path: Path, latest: str) -> Path:
    out = tmp_path / "run"
    tag = out / "checkpoints" / "step00000004"
    tag.mkdir(parents=True)
    (tag / "rank00000_state.json").write_text(json.dumps({"data": {}, "rng": {}}))
    (out / "checkpoints" / "latest").write_text(latest)
    return out


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.name=ViT-Tiny-16@RoBERTa-Tiny-chinee", "pretrain: config error: model.name: unknown text tower"),
        ("train.keep_last=0", "pretrain: config error: train.keep_last: must be at least 1"),
        (
            "deepspeed.config=/nonexistent/ds.json",
            "pretrain: config error: deepspeed.config: /nonexistent/ds.json: no such file",
        ),
        ("optim.max_steps=0", "pretrain: config error: optim.max_steps: must be at least 1"),
    ],
)
def test_bad_settings_are_one_line(capsys, shards, tmp_path, override, expected):
    assert_one_line(*pretrain(capsys, shards, tmp_path / "out", override), expected)
    assert not (tmp_path / "out").exists()


def test_missing_valid_data_is_one_line(capsys, shards, tmp_path):
    rc, output = pretrain(capsys, shards, tmp_path / "out", f"data.valid=[{tmp_path}/nope]")
    assert_one_line(rc, output, f"pretrain: data.valid: source folder not found: {tmp_path}/nope")


def test_damaged_init_weights_are_one_line(capsys, shards, tmp_path):
    init = tmp_path / "init.safetensors"
    init.write_bytes(b"\x00" * 5)
    rc, output = pretrain(capsys, shards, tmp_path / "out", f"model.init={init}")
    assert_one_line(rc, output, f"pretrain: {init}: not a readable safetensors file")


@pytest.mark.parametrize(
    "latest, expected",
    [
        ("", "is empty"),
        ("step00000099", "points to 'step00000099' but"),
        ("../../victim", "names '../../victim', which is not a checkpoint tag inside"),
    ],
)
def test_bad_latest_pointer_is_one_line_and_touches_nothing(capsys, shards, tmp_path, latest, expected):
    victim = tmp_path / "victim"
    (victim / "universal").mkdir(parents=True)
    (victim / "precious.txt").write_text("keep")
    out = _run_with_checkpoint(tmp_path, latest)
    rc, output = pretrain(capsys, shards, out)
    assert_one_line(rc, output, "pretrain: ")
    assert expected in output
    assert (victim / "precious.txt").read_text() == "keep" and (victim / "universal").is_dir()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step00000004"]


def test_truncated_rank_state_is_one_line(capsys, shards, tmp_path):
    out = _run_with_checkpoint(tmp_path, "step00000004")
    state = out / "checkpoints" / "step00000004" / "rank00000_state.json"
    state.write_text('{"data": {"ep')
    rc, output = pretrain(capsys, shards, out)
    assert_one_line(rc, output, f"pretrain: {state}: not a complete rank state")


def test_layer_decay_on_another_world_size_is_one_line(capsys, shards, tmp_path):
    """DeepSpeed's universal loader cannot re-partition layer-wise groups: refused before any rank starts."""
    out = _run_with_checkpoint(tmp_path, "step00000004")
    (out / "checkpoints" / "step00000004" / "rank00001_state.json").write_text(json.dumps({"data": {}, "rng": {}}))
    rc, output = pretrain(capsys, shards, out, "optim.layer_decay=0.75")
    assert_one_line(rc, output, "pretrain: checkpoint ")
    assert "written by 2 ranks" in output and "train.reset_optimizer=true" in output


# ------------------------------------------------------------------ the command as users run it: a process of its own


def run_pretrain(shards, out, *extra, world_size: int = 1) -> subprocess.CompletedProcess:
    """launch/pretrain.py as rank 0 of ``world_size``. No other rank is ever started: a check that waited for the
    process group would hang here until the timeout, so every answer below comes before the group starts."""
    env = train_env(
        RANK="0", WORLD_SIZE=str(world_size), LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
    )
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "launch/pretrain.py"),
            "--config",
            str(REPO / "configs/tiny-cpu.yaml"),
            f"data.train=[{shards}/train]",
            f"train.output_dir={out}",
            "data.batch_size=8",
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            ["deepspeed.precision=fp8"],
            "pretrain: config error: override deepspeed.precision: 'fp8' is not one of fp16, bf16, fp32",
        ),
        (["model.name=ViT-Tiny-16"], "pretrain: config error: model.name: model name 'ViT-Tiny-16' must be"),
        (
            ["model.image_size=30"],
            "pretrain: config error: model.image_size: 30 is not a multiple of the patch size 16",
        ),
        (["data.valid=[{tmp}/nope]"], "pretrain: data.valid: source folder not found: {tmp}/nope"),
        (["data.train=[{tmp}/empty]"], "pretrain: data.train: no manifest.json and no .tar shards in {tmp}/empty"),
        (
            ["data.batch_size=16"],
            "pretrain: data.train: 16 samples give no batch to each of 2 ranks (batch size 16, "
            "drop_last=True); lower data.batch_size or add data",
        ),
    ],
    ids=["precision", "model-name", "image-size", "valid-source", "train-manifest", "too-few-samples"],
)
def test_every_bad_setting_is_one_line_before_the_group_starts(shards, tmp_path, extra, expected):
    (tmp_path / "empty").mkdir()
    extra = [e.format(tmp=tmp_path) for e in extra]
    result = run_pretrain(shards, tmp_path / "out", *extra, world_size=2)
    assert_one_line(result.returncode, result.stdout + result.stderr, expected.format(tmp=tmp_path))
    # only the case of too few samples is told to lower the batch size
    assert ("lower data.batch_size" in result.stderr) == ("too few" in expected or "give no batch" in expected)
    assert not (tmp_path / "out").exists()
