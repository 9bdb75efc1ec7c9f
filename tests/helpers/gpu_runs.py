"""Helpers for the GPU checks (``make gpu-check``, tests/gpu): 224-px photo shards, launch commands, reading results.

Every launch is the real trainer or evaluator in a subprocess under the real launcher, on the GPUs, with NCCL.
Each launch costs 20-40 s of start-up (imports, CUDA and NCCL initialisation, DeepSpeed), so runs are shared
between tests through module/session fixtures; the whole suite is sized to finish in 8 minutes on one H100.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cnclip_scale.launch_env import free_port
from tests.helpers.train_runs import REPO, make_tiny_shards

DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")
PRETRAIN = str(REPO / "launch/pretrain.py")
EVALUATE = str(REPO / "launch/evaluate.py")
BASE = "ViT-B-16@RoBERTa-wwm-ext-base-chinese"
TIMEOUT = 600


def gpu_env(**extra) -> dict:
    """The environment of every launch. The Makefile exports DS_ACCELERATOR=cpu for the CPU suite, which would put
    DeepSpeed on the CPU accelerator (gloo) even on a GPU machine: the GPU checks set it to cuda explicitly."""
    env = dict(os.environ, DS_ACCELERATOR="cuda", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def deepspeed_cmd(script: str, args: list[str], num_gpus: int = 1) -> list[str]:
    return [DEEPSPEED, "--num_gpus", str(num_gpus), "--master_port", str(free_port()), script, *args]


def run(cmd: list[str], log: Path | None = None, **env) -> str:
    """Run to completion; on failure the assertion shows the end of the output (the whole is in ``log``)."""
    result = subprocess.run(cmd, check=False, env=gpu_env(**env), capture_output=True, text=True, timeout=TIMEOUT)
    output = result.stdout + result.stderr
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(output)
    assert result.returncode == 0, f"{' '.join(cmd)}\nexit {result.returncode}\n{output[-6000:]}"
    return output


def train_args(shards: Path, out: Path, *extra: str) -> list[str]:
    """The real model at real sizes from random init, small enough in steps and batch for a check. No --config: the
    dataclass defaults are the GPU recipe (bf16, ZeRO-2, context length 52); the keys below only shorten the run."""
    return [
        f"model.name={BASE}",
        f"data.train=[{shards}/train]",
        f"train.output_dir={out}",
        "data.batch_size=32",
        "data.valid_batch_size=32",
        "data.workers=4",
        "data.shuffle_buffer=100",
        "optim.max_steps=30",
        "optim.warmup=5",
        "optim.lr=1e-4",
        "train.log_every=1",
        "train.save_every=10",
        *extra,
    ]


def read_jsonl(path: Path, kind: str | None = "train") -> list[dict]:
    """Rows of a metrics.jsonl that may be mid-write (a killed run): a torn last line is skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or row.get("kind") == kind:
            rows.append(row)
    return rows


def make_shards_224(root: Path, sizes: dict[str, int], samples_per_shard: int = 32) -> Path:
    """Seed-layout splits of real bundled photos as 224-px JPEGs (the towers' resolution, so the loader decodes what a
    real dataset gives it; the CPU suite's shards are 64 px), converted by tools/to_shards.py."""
    return make_tiny_shards(root, sizes, samples_per_shard, image_size=224)


def reference_args(shards: Path, out: Path) -> list[str]:
    """bf16, ZeRO-2, gradient checkpointing, 30 steps of the real-size model, checkpoints every 10 steps, validation
    with retrieval recall at the end. The kill -9 test repeats exactly these for its losses to be comparable."""
    return train_args(
        shards, out, "model.grad_checkpointing=true", f"data.valid=[{shards}/valid]", "train.valid_recall=true"
    )
