"""`launch/evaluate.py --checkpoint RUN_DIR`: the trainer's train.output_dir is a checkpoint. Its model.safetensors
is read, else its latest DeepSpeed checkpoint; a folder that is neither is one line before any process group."""

import json
import shutil
import subprocess
import sys

import pytest

from cnclip_scale.cli.evaluate import main as evaluate
from tests.helpers.train_runs import REPO, make_tiny_shards, train_env


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished 2-step tiny training run: model.safetensors and checkpoints/step00000002 hold the same weights."""
    root = tmp_path_factory.mktemp("run")
    shards = make_tiny_shards(root, {"train": 16})
    out = root / "run"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "launch/pretrain.py"),
            "--config",
            str(REPO / "configs/tiny-cpu.yaml"),
            f"data.train=[{shards}/train]",
            f"train.output_dir={out}",
            "data.batch_size=8",
            "optim.max_steps=2",
            "train.save_every=2",
        ],
        env=train_env(),
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert (out / "model.safetensors").is_file() and (out / "checkpoints" / "latest").is_file()
    return out


def evaluate_subprocess(checkpoint, data, output) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch/evaluate.py"),
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(data),
            "--output",
            str(output),
            "--workers",
            "0",
            "--no-report",
        ],
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((output / "summary.json").read_text())


@pytest.mark.integration
def test_a_run_dir_is_evaluated_from_its_export_or_its_latest_checkpoint(run_dir, seed_split, tmp_path):
    exported = evaluate_subprocess(run_dir, seed_split[0], tmp_path / "from_export")
    without_export = tmp_path / "interrupted_run"  # a run stopped before its end: checkpoints only
    shutil.copytree(run_dir / "checkpoints", without_export / "checkpoints")
    checkpointed = evaluate_subprocess(without_export, seed_split[0], tmp_path / "from_checkpoint")
    assert exported["images"] == checkpointed["images"] == 30 and exported["texts"] == checkpointed["texts"] > 0
    assert exported["checkpoint"] == str(run_dir) and checkpointed["checkpoint"] == str(without_export)
    # the export is the fp32 master copy of the last checkpoint: the same weights rank every query alike
    for name in ("test_predictions.jsonl", "test_tr_predictions.jsonl"):
        assert (tmp_path / "from_export" / name).read_text() == (tmp_path / "from_checkpoint" / name).read_text()
    assert exported["t2i"] == checkpointed["t2i"] and exported["i2t"] == checkpointed["i2t"]


def test_a_folder_that_is_no_checkpoint_is_one_line_before_anything_starts(capsys, seed_split, tmp_path):
    (tmp_path / "notes").mkdir()
    rc = evaluate(
        [
            "--checkpoint",
            str(tmp_path / "notes"),
            "--data",
            seed_split[0],
            "--output",
            str(tmp_path / "out"),
            "--workers",
            "0",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert (
        err.startswith(f"evaluate: --checkpoint: {tmp_path / 'notes'}: neither a Hugging Face")
        and "nor a training run dir" in err
        and err.count("\n") == 1
    ), err
    assert not (tmp_path / "out").exists()
