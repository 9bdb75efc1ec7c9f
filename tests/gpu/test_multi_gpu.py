"""Checks that need two or more GPUs (skipped with fewer): a resume on another GPU count, ZeRO-3 validation with
recall across ranks, and a listing of the CUDA synchronisations that remain in a training step.

Launches: a 2-rank ZeRO-3 run (validation with recall mid-run and at the end, checkpoints), a 1-rank resume of its
first checkpoint (a universal checkpoint), and a 2-rank driver run under ``torch.cuda.set_sync_debug_mode("warn")``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers.gpu_runs import PRETRAIN, deepspeed_cmd, read_jsonl, run, train_args

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.integration,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 or more CUDA GPUs"),
]

DRIVER = str(Path(__file__).with_name("collectives_driver.py"))


def test_zero3_two_ranks_validate_then_one_rank_resumes(shards, tmp_path):
    out = tmp_path / "out"
    args = train_args(
        shards,
        out,
        "deepspeed.zero_stage=3",
        "model.grad_checkpointing=true",
        "optim.max_steps=20",
        f"data.valid=[{shards}/valid]",
        "train.valid_recall=true",
        "train.valid_every=10",
    )
    log = run(deepspeed_cmd(PRETRAIN, args, num_gpus=2), log=tmp_path / "two_ranks.log")
    assert "world_size=2" in log and "zero_stage=3" in log
    valid = read_jsonl(out / "metrics.jsonl", "valid")
    # Step 10 (mid-run, on ZeRO-3's gathered parameters, then training goes on) and step 20.
    assert [v["step"] for v in valid] == [10, 20]
    for v in valid:
        assert {f"{d}_{k}" for d in ("t2i", "i2t") for k in ("r1", "r5", "r10")} <= set(v), v
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 21)) and {r["global_batch_size"] for r in rows} == {64}

    # What a 2-GPU job that died after step 10 leaves, resumed on one GPU.
    checkpoints = out / "checkpoints"
    shutil.rmtree(checkpoints / "step00000020")
    (checkpoints / "latest").write_text("step00000010")
    log = run(deepspeed_cmd(PRETRAIN, args, num_gpus=1), log=tmp_path / "resumed.log")
    tag = checkpoints / "step00000010"
    assert f"checkpoint {tag} was written by 2 ranks; converting it to a universal checkpoint for 1" in log
    assert f"resumed from {tag} at step 10" in log
    assert (checkpoints / "universal" / "step00000010" / "complete").exists()
    resumed = read_jsonl(out / "metrics.jsonl")[-10:]
    assert [r["step"] for r in resumed] == list(range(11, 21))
    assert {r["global_batch_size"] for r in resumed} == {32}
    assert all(math.isfinite(r["loss"]) for r in resumed)
    assert json.loads((out / "summary.json").read_text())["step"] == 20


def test_list_the_synchronisations_left_in_a_step(shards, tmp_path, capsys):
    """Not an assertion on the count (some syncs are by design: the non-finite check, logging); a listing to read.
    Stacks seen on every step (count >= steps) are the per-step ones; the rest are start-up, validation, saving."""
    steps = 10
    out = tmp_path / "sync"
    plan = [
        {
            "name": "sync_debug",
            "sync_debug": True,
            "overrides": train_args(
                shards,
                out,
                "model.grad_checkpointing=true",
                f"optim.max_steps={steps}",
                "train.save_every=0",
                "train.log_every=1",
            ),
        }
    ]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    run(deepspeed_cmd(DRIVER, [str(tmp_path / "plan.json")], num_gpus=2), log=tmp_path / "driver.log")
    result = json.loads((out / "collectives_rank0.json").read_text())
    assert result["ok"], result.get("traceback") or result.get("error")
    syncs = result["syncs"]
    listing = out / "syncs_rank0.txt"
    lines = [f"{s['count']:>6}  {'per step' if s['count'] >= steps else '        '}  {s['stack']}" for s in syncs]
    listing.write_text("\n".join(lines) + "\n")
    with capsys.disabled():  # shown in make gpu-check's output even though the test passes
        print(f"\nCUDA synchronisations over {steps} steps on 2 ranks (rank 0), by call stack ({listing}):")
        print("\n".join(lines) if lines else "  none")
    cpu = {k: c.get("cpu", 0) for k, c in result["collectives"].items() if c.get("cpu", 0)}
    assert not cpu, cpu  # and, with two ranks, no collective tensor on the CPU either
