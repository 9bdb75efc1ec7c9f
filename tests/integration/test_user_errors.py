"""The commands' bad-input cases that need real processes: 2 ranks under a launcher (one line from rank 0, exit 2
everywhere, no traceback on any rank), a resume from a real checkpoint whose optimizer file was replaced by a crafted
pickle, and S3 with a wrong secret. The single-process cases are in tests/train/test_pretrain_command.py and
tests/eval/test_evaluate_command.py."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnclip_scale.launch_env import free_port
from tests.helpers.train_runs import REPO, make_tiny_shards, train_env

pytestmark = pytest.mark.integration
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")
PRETRAIN = str(REPO / "launch/pretrain.py")
EVALUATE = str(REPO / "launch/evaluate.py")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("errors"), {"train": 32})


def overrides(shards, out, *extra):
    return [
        "--config",
        str(REPO / "configs/tiny-cpu.yaml"),
        f"data.train=[{shards}/train]",
        f"train.output_dir={out}",
        "data.batch_size=8",
        "train.log_every=1",
        *extra,
    ]


def run(cmd, env=None) -> tuple[int, str]:
    result = subprocess.run(cmd, env=env or train_env(), capture_output=True, text=True, timeout=600, check=False)
    return result.returncode, result.stdout + result.stderr


def error_lines(output: str, command: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(f"{command}:")]


def test_two_ranks_missing_valid_data_is_one_line_from_rank_0(shards, tmp_path):
    rc, output = run(
        [
            DEEPSPEED,
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            PRETRAIN,
            *overrides(shards, tmp_path / "out", "optim.max_steps=2", f"data.valid=[{tmp_path}/nope]"),
        ]
    )
    assert rc == 2, output[-3000:]
    assert error_lines(output, "pretrain") == [f"pretrain: data.valid: source folder not found: {tmp_path}/nope"], (
        output[-3000:]
    )
    assert "Traceback" not in output
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_torchrun_model_name_typo_is_one_line_and_every_rank_exits_2(shards, tmp_path):
    """torchrun reports any rank's failure as its own exit code 1 with a traceback of the launcher itself
    (ChildFailedError); what is ours: one error line (rank 0's), each rank's exit code 2, no rank's traceback."""
    rc, output = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            PRETRAIN,
            *overrides(shards, tmp_path / "out", "model.name=ViT-Tiny-16@RoBERTa-Tiny-chinee"),
        ]
    )
    assert rc == 1, output[-3000:]
    lines = error_lines(output, "pretrain")
    assert len(lines) == 1 and lines[0].startswith("pretrain: config error: model.name: unknown text tower"), output
    assert "exitcode  : 2" in output and "exitcode  : 1" not in output, output[-3000:]
    assert output.count("Traceback") == output.count("raise ChildFailedError(") == 1, output[-3000:]


def test_training_on_zero_byte_shards_in_exact_mode_is_one_line(shards, tmp_path):
    data = tmp_path / "train"
    shutil.copytree(shards / "train", data)
    for tar in data.glob("*.tar"):
        tar.write_bytes(b"")
    rc, output = run([sys.executable, PRETRAIN, *overrides(tmp_path, tmp_path / "out", "optim.max_steps=2")])
    lines = error_lines(output, "pretrain")
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"pretrain: no usable sample in {data}"), output[-3000:]
    assert "Traceback" not in output


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_crafted_optimizer_states_are_refused_in_one_line(shards, tmp_path):
    out = tmp_path / "out"
    rc, output = run([sys.executable, PRETRAIN, *overrides(shards, out, "optim.max_steps=2", "train.save_every=2")])
    assert rc == 0, output[-3000:]
    tag = out / "checkpoints" / "step00000002"
    optim = sorted(tag.glob("*optim_states.pt"))
    assert optim, sorted(p.name for p in tag.iterdir())
    marker = tmp_path / "pwned"
    torch.save({"optimizer_state_dict": _Exploit(str(marker))}, optim[0])
    rc, output = run([sys.executable, PRETRAIN, *overrides(shards, out, "optim.max_steps=4")])
    assert rc == 2, output[-3000:]
    lines = error_lines(output, "pretrain")
    assert len(lines) == 1 and lines[0].startswith(
        f"pretrain: checkpoint {tag}: refused: a file holds more than tensors"
    ), output[-3000:]
    assert "Traceback" not in output and not marker.exists()


def test_wrong_s3_secret_is_one_line_in_pretrain_and_evaluate(shards, s3_server, tmp_path):
    bucket = "errors-wrong-secret"
    s3_server.make_bucket(bucket)
    fs = s3_server.filesystem()
    fs.put(str(shards / "train"), f"{bucket}/train", recursive=True)
    wrong = dict(s3_server.env(), AWS_SECRET_ACCESS_KEY="not-the-secret")
    rc, output = run(
        [sys.executable, PRETRAIN, *overrides(f"s3://{bucket}", tmp_path / "out", "optim.max_steps=1")],
        env=train_env(**wrong),
    )
    lines = error_lines(output, "pretrain")
    assert rc == 2 and len(lines) == 1 and "access denied at s3://" in lines[0], output[-3000:]
    assert "Traceback" not in output
    checkpoint = tmp_path / "model.safetensors"
    from cnclip_scale.model import build_model, model_config, write_checkpoint

    model = build_model(model_config("ViT-Tiny-16@RoBERTa-Tiny-chinese"))
    write_checkpoint(model.state_dict(), model.config, checkpoint, "native")
    rc, output = run(
        [
            sys.executable,
            EVALUATE,
            "--checkpoint",
            str(checkpoint),
            "--data",
            f"s3://{bucket}/train",
            "--split",
            "train",
            "--output",
            str(tmp_path / "eval"),
            "--workers",
            "0",
            "--no-report",
        ],
        env=train_env(**wrong),
    )
    lines = error_lines(output, "evaluate")
    assert rc == 2 and len(lines) == 1 and "--data: access denied at s3://" in lines[0], output[-3000:]
    assert "Traceback" not in output
