"""benchmarks/bench_gpu.py without a GPU: its code paths on CPU with the tiny model, its batch search, its skip line.

The GPU numbers come from a GPU machine; what runs here is everything that produces them — our DeepSpeed engine and the
DDP baseline (gloo, world size 1) trained a few steps on synthetic batches, the FLOPs formula against FlopCounterMode,
the largest-batch search driving real contenders, the loader rate, the table, the BENCH lines and the JSON.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnclip_scale.model.configs import TINY

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # dataclasses look their module up while the class is being made
    spec.loader.exec_module(module)
    return module


def fits_up_to(limit: int, calls: list):
    """A stand-in for a GPU: batches above ``limit`` run out of memory (the trial answers None, as the real one does
    after catching torch.cuda.OutOfMemoryError)."""

    def trial(batch):
        calls.append(batch)
        return {"batch": batch} if batch <= limit else None

    return trial


@pytest.mark.parametrize("limit", [300, 128, 1000, 50, 5])
def test_search_brackets_the_largest_batch(bench, limit):
    calls = []
    found = bench.search_largest(fits_up_to(limit, calls), start=128, cap=16384, resolution=1 / 16, granularity=8)
    largest, oom = found["largest"], found["first_oom"]
    assert largest <= limit < oom  # the answer fits, the failure did not
    assert oom - largest <= max(8, largest / 16)  # bisected down to the requested resolution
    assert found["record"] == {"batch": largest} and not found["capped"] and not found["stopped_early"]
    assert len(calls) == len(set(calls)) <= 16  # no batch tried twice; doubling + bisection stay logarithmic


def test_search_stops_at_the_cap_and_at_the_deadline(bench):
    found = bench.search_largest(fits_up_to(10**9, []), start=128, cap=1000)
    assert found["largest"] == 1000 and found["capped"] and found["first_oom"] is None
    assert [b for b, _ in found["tried"]] == [128, 256, 512, 1000]
    calls = []
    late = bench.search_largest(fits_up_to(300, calls), start=128, cap=16384, deadline=time.monotonic() - 1)
    assert late["stopped_early"] and late["largest"] is None and calls == []


def test_out_of_memory_errors_are_recognised(bench):
    assert bench.is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert bench.is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not bench.is_oom(RuntimeError("Expected all tensors to be on the same device"))
    assert not bench.is_oom(ValueError("out of memory"))


def test_peak_flops_table(bench):
    assert bench.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_bf16_flops("NVIDIA H200") == 989e12
    assert bench.peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert bench.peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert bench.peak_bf16_flops("NVIDIA H100 NVL") is None  # a variant with other clocks: unknown, not guessed
    assert bench.peak_bf16_flops("Tesla T4") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip line is for machines without CUDA")
def test_without_cuda_it_skips_in_one_line():
    result = subprocess.run([sys.executable, str(BENCH)], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert result.stdout.strip().splitlines() == [
        "bench_gpu: skipped: no CUDA GPU here (torch.cuda.is_available() is False)"
    ]


@pytest.mark.integration
def test_cpu_twin_runs_every_code_path(tmp_path):
    """~40 s on 2 cores (the first DeepSpeed init on a machine also JIT-compiles its CPU shm op, ~30 s, cached after;
    the integration tests that run earlier in `make test` pay it)."""
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(BENCH),
        "--device",
        "cpu",
        "--model",
        TINY,
        "--batch",
        "8",
        "--max-batch",
        "16",
        "--modes",
        "ours_ckpt,ddp_ckpt",
        "--search-modes",
        "ours_ckpt",
        "--quick",
        "--loader-images",
        "128",
        "--json",
        str(out),
    ]
    result = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONUNBUFFERED="1")
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    data = json.loads(out.read_text())

    for check in data["flops"]["check"]:  # the formula against PyTorch's counter, with and without checkpointing
        assert check["ratio"] == pytest.approx(1.0, abs=0.02), check
    assert data["flops"]["train_ckpt"] > data["flops"]["train"] > 2 * data["flops"]["forward"]
    for mode in ("ours_ckpt", "ddp_ckpt"):
        record = data["runs"][mode]["seed_batch"]
        assert record["batch"] == 8 and record["samples_per_s"] > 0 and record["loss"] == record["loss"]
        assert record["peak_mb"] is None and record["mfu"] is None  # CPU: no CUDA memory stats, no bf16 peak
    search = data["runs"]["ours_ckpt"]["largest"]
    assert search["largest"] == 16 and search["capped"] and [b for b, ok in search["tried"] if ok] == [8, 16]
    assert "largest" not in data["runs"]["ddp_ckpt"]
    assert data["loader"]["samples_per_s"] > 0 and data["cores_per_gpu"] > 0
    bench_lines = [json.loads(line[6:]) for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    ours, baseline = (data["runs"][m]["seed_batch"]["samples_per_s"] for m in ("ours_ckpt", "ddp_ckpt"))
    assert bench_lines == [
        {
            "stage": "GPU train +ckpt (ViT-Tiny-16, 8/GPU)",
            "ours": round(ours, 1),
            "baseline": round(baseline, 1),
            "ratio": round(ours / baseline, 3),
            "target": ">= 1",
            "unit": "samples/s",
        }
    ]
    assert "cores per GPU needed" in result.stdout and "FlopCounterMode" in result.stdout
