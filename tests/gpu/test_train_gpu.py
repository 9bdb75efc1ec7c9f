"""The trainer and the evaluator on one GPU, under the real launchers, with NCCL (``make gpu-check``).

Launches (each ~20-40 s of start-up): the reference run (bf16 ZeRO-2, checkpointed, real-size model), the same run
killed with -9 and resumed (2), the collectives driver (fp16 ZeRO-3 with loss scaling, then a bf16 ZeRO-2 run, both
counting the devices of collective tensors), and the evaluator in fp16 and in bf16 (2).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnclip_scale.model.configs import TINY
from tests.helpers.gpu_runs import (
    BASE,
    EVALUATE,
    PRETRAIN,
    deepspeed_cmd,
    gpu_env,
    read_jsonl,
    reference_args,
    run,
    train_args,
)
from tests.helpers.recall import assert_recall_matches_files

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.integration,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)"),
]

DRIVER = str(Path(__file__).with_name("collectives_driver.py"))


# ---------------------------------------------------------------------------------------------------- 1. bf16 ZeRO-2
def test_bf16_zero2_checkpointed_real_model_learns(reference_run):
    out, log = reference_run
    assert "precision=bf16 zero_stage=2 model=ViT-B-16@RoBERTa-wwm-ext-base-chinese" in log
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 31))
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(x) for x in losses), losses
    # From random init on 256 images (8 steps an epoch), 30 steps must fit the data: the last five steps' mean loss
    # below the first five's (single steps are noisy: a new batch each).
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 30 and summary["skipped_steps"] == 0  # bf16 has no loss scaler to skip steps
    assert (out / "model.safetensors").stat().st_size > 188_000_000 * 4 * 0.99  # fp32 export of 188.3M parameters
    valid = read_jsonl(out / "metrics.jsonl", "valid")
    # the last validation ran at the end, with the evaluator's recall in both directions
    assert valid and valid[-1]["step"] == 30
    assert {f"{d}_{k}" for d in ("t2i", "i2t") for k in ("r1", "r5", "r10")} <= set(valid[-1]), valid[-1]


# ---------------------------------------------------------------------------------------------------- 3. kill -9
def _wait_until_killable(out: Path, proc, checkpoint: int, logged: int, timeout: float = 400) -> None:
    """Until checkpoint ``checkpoint`` is complete (its ``latest`` pointer is written last) and step ``logged`` is in
    the metrics: the kill then lands mid-run, after a checkpoint, with steps logged that the resume repeats."""
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + timeout
    while time.time() < deadline:
        saved = int(latest.read_text().strip().removeprefix("step")) if latest.exists() else 0
        steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl")]
        if saved >= checkpoint and steps and max(steps) >= logged:
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"the run ended (exit {proc.returncode}) before checkpoint {checkpoint}; see "
                f"{out.parent / 'killed.log'}"
            )
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint {checkpoint} and step {logged} within {timeout}s")


def test_kill_9_then_resume_reproduces_the_losses(shards, reference_run, tmp_path):
    reference, _ = reference_run
    out = tmp_path / "killed"
    cmd = deepspeed_cmd(PRETRAIN, reference_args(shards, out))
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, env=gpu_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_until_killable(out, proc, checkpoint=10, logged=12)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its rank, mid-run, no chance to clean up
            proc.wait()
    killed_at = int((out / "checkpoints" / "latest").read_text().removeprefix("step"))
    assert killed_at < 30, "the run finished before it could be killed"
    cmd = deepspeed_cmd(PRETRAIN, reference_args(shards, out))  # a fresh port: the killed one may linger
    log = run(cmd, log=tmp_path / "resumed.log")
    assert f"resumed from {out / 'checkpoints' / f'step{killed_at:08d}'} at step {killed_at}" in log

    expected = {r["step"]: r["loss"] for r in read_jsonl(reference / "metrics.jsonl")}
    got = read_jsonl(out / "metrics.jsonl")  # steps logged before the kill, and all after the resume
    assert {r["step"] for r in got} == set(range(1, 31))
    # Not bit-exact as on CPU: the two processes run the same arithmetic, but some GPU kernels accumulate in an order
    # that varies between runs (atomics in the embedding and memory-efficient attention backward, cuBLAS split-K
    # choices), and those last-bit differences grow a little over the steps. A resume onto other samples moves a
    # step's loss by about 1e-2 relative (as consecutive steps of one run differ); lost optimiser state or other
    # dropout masks show too. 1e-3 relative allows the kernels' noise and little else.
    for r in got:
        assert r["loss"] == pytest.approx(expected[r["step"]], rel=1e-3), (r["step"], r["loss"], expected[r["step"]])
    assert [r["step"] for r in got[-(30 - killed_at) :]] == list(range(killed_at + 1, 31))  # the resumed process's
    assert (out / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------- 2 + 6. driver
@pytest.fixture(scope="module")
def driver_runs(shards, tmp_path_factory) -> dict[str, dict]:
    """One launch of the collectives driver: the trainer in-process, twice, with every collective's tensors counted.

    fp16 ZeRO-3: the loss scale starts at 2**24. The fp16 gradient of the logits is about scale/batch, above fp16's
    65504 until the scale is below ~2**21, so the first steps overflow for certain; the scaler skips them (after its
    hysteresis of 2) and halves the scale each time, then training proceeds. Validation with recall runs the
    evaluator on ZeRO-3's gathered parameters.
    bf16 ZeRO-2 on the tiny model: the other optimiser partitioning and precision, briefly.
    """
    root = tmp_path_factory.mktemp("driver")
    valid = f"data.valid=[{shards}/valid]"
    plan = [
        {
            "name": "fp16_zero3",
            "overrides": train_args(
                shards,
                root / "fp16_zero3",
                "deepspeed.precision=fp16",
                "deepspeed.zero_stage=3",
                "deepspeed.initial_scale_power=24",
                "model.grad_checkpointing=true",
                valid,
                "train.valid_recall=true",
            ),
        },
        {
            "name": "bf16_zero2_tiny",
            "overrides": train_args(
                shards,
                root / "bf16_zero2_tiny",
                f"model.name={TINY}",
                "optim.max_steps=6",
                "train.save_every=3",
                valid,
                "train.valid_recall=true",
            ),
        },
    ]
    (root / "plan.json").write_text(json.dumps(plan))
    # One rank on a one-GPU machine; two where there are two, so the loss's all-gather with gradients runs too.
    ranks = min(2, torch.cuda.device_count())
    run(deepspeed_cmd(DRIVER, [str(root / "plan.json")], num_gpus=ranks), log=root / "driver.log")
    results = {}
    for scenario in plan:
        out = root / scenario["name"]
        per_rank = [json.loads((out / f"collectives_rank{r}.json").read_text()) for r in range(ranks)]
        results[scenario["name"]] = {"out": out, "ranks": per_rank}
    return results


def test_fp16_zero3_skips_overflowing_steps_and_lowers_the_loss_scale(driver_runs):
    result = driver_runs["fp16_zero3"]
    rank0 = result["ranks"][0]
    assert rank0["ok"], rank0.get("traceback") or rank0.get("error")
    rows = read_jsonl(result["out"] / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert all(math.isfinite(r["loss"]) for r in rows)  # the loss is computed in fp32; only gradients overflow
    scales = [r["loss_scale"] for r in rows]
    skipped = [r["skipped_steps"] for r in rows]
    assert scales[0] <= 2**24 and scales[-1] < 2**24, scales
    # It only falls within 30 steps: it would grow back after loss_scale_window (1000) steps without overflow.
    assert all(b <= a for a, b in itertools.pairwise(scales)), scales
    assert 0 < skipped[-1] < 30, skipped  # overflow steps were skipped and counted, and the others trained
    assert skipped == sorted(skipped)
    assert rank0["summary"]["skipped_steps"] == skipped[-1]
    assert (result["out"] / "model.safetensors").exists()
    valid = read_jsonl(result["out"] / "metrics.jsonl", "valid")
    assert valid and "t2i_r1" in valid[-1] and "i2t_mean_recall" in valid[-1]


@pytest.mark.parametrize("scenario", ["fp16_zero3", "bf16_zero2_tiny"])
def test_no_collective_saw_a_cpu_tensor(driver_runs, scenario):
    for rank, result in enumerate(driver_runs[scenario]["ranks"]):
        assert result["ok"], result.get("traceback") or result.get("error")
        counts = result["collectives"]
        assert "all_reduce" in result["wrapped"] and "all_gather_into_tensor" in result["wrapped"]
        assert sum(c["calls"] for c in counts.values()) > 0, "no collective ran: the count proves nothing"
        cpu = {name: c.get("cpu", 0) for name, c in counts.items() if c.get("cpu", 0)}
        assert not cpu, f"rank {rank}: CPU tensors reached collectives {cpu}; first at:\n" + "\n".join(
            result["cpu_stacks"]
        )


# ---------------------------------------------------------------------------------------------------- 4. evaluator
@pytest.mark.parametrize("precision,dtype", [("fp16", "float16"), ("bf16", "bfloat16")])
def test_evaluator_on_gpu(reference_run, shards, tmp_path, precision, dtype):
    checkpoint = reference_run[0] / "model.safetensors"
    out = tmp_path / "eval"
    run(
        [
            sys.executable,
            EVALUATE,
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(shards / "valid"),
            "--split",
            "valid",
            "--output",
            str(out),
            "--precision",
            precision,
            "--batch-size",
            "32",
            "--workers",
            "2",
        ],
        log=tmp_path / "eval.log",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dtype"] == dtype and summary["device"].startswith("cuda")
    assert summary["model"] == BASE and summary["images"] == 64
    # half-precision features rank the gallery; the recall reported is what those rankings give on the seed's truth
    assert_recall_matches_files(summary, out, "valid", shards.parent / "seed" / "valid_texts.jsonl")
    assert (out / "output.json").exists()
