#!/usr/bin/env python
"""Training step: our trainer (DeepSpeed ZeRO-2, local loss) vs a DDP loop in the style of Chinese-CLIP's, 2 ranks.

The baseline does what Chinese-CLIP's trainer does: torch DDP, features all-gathered *without* gradients, every rank
building the full N×N logits of the global batch. Ours: DeepSpeed ZeRO-2 (gradients and optimiser state partitioned),
the local-loss InfoNCE (local rows × global columns), with and without gradient checkpointing.

Both sides train the same model on the same random inputs with the same global batch; the step excludes data loading.
Peak memory is each rank's resident-set high-water mark above what it held after imports (reset through
/proc/self/clear_refs), the CPU counterpart of torch.cuda.max_memory_allocated. Both sides run with glibc's mmap
threshold fixed at 128 KiB: by default glibc raises it after each large free, and then keeps freed activations
resident, so the high-water mark measured the allocator's history (and penalised checkpointing's recompute) instead of
live tensors.
Prints a table and BENCH lines.

    python benchmarks/bench_train.py [--model NAME] [--batch 64] [--steps 8] [--cap-mb 1500]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# ---------------------------------------------------------------------------------------------------- inside a rank
def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _inputs(batch, image_size, context_length, vocab, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, image_size, image_size, generator=g)
    ids = torch.randint(1000, vocab, (batch, context_length), generator=g)
    return images, ids, torch.ones_like(ids, dtype=torch.bool)


def baseline_loss(img, txt, scale):
    """Chinese-CLIP's distributed loss (cn_clip/training/train.py): gather without gradient, put the local features
    back in front (they keep theirs), full N×N logits on every rank, labels 0..N-1. bench_gpu.py uses it too."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    rank, world = dist.get_rank(), dist.get_world_size()
    gathered_img = [torch.zeros_like(img) for _ in range(world)]
    gathered_txt = [torch.zeros_like(txt) for _ in range(world)]
    dist.all_gather(gathered_img, img)
    dist.all_gather(gathered_txt, txt)
    all_img = torch.cat([img] + gathered_img[:rank] + gathered_img[rank + 1 :])
    all_txt = torch.cat([txt] + gathered_txt[:rank] + gathered_txt[rank + 1 :])
    logits = scale * all_img @ all_txt.t()
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def rank_main(mode: str, model_name: str, batches: list[int], steps: int, result: str) -> None:
    import torch
    import torch.distributed as dist

    from cnclip_scale.model import build_model, model_config
    from cnclip_scale.train.config import load_config

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if mode != "ddp":
        # DeepSpeed's import: library code, not training memory
        from cnclip_scale.train import engine as eng
        from cnclip_scale.train.step import train_step
    base_rss = _rss_mb("VmRSS")
    _reset_peak()
    torch.manual_seed(0)
    model = build_model(model_config(model_name), grad_checkpointing=(mode == "ours_ckpt"))
    cfg = model.config
    if mode == "ddp":
        net = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(images, ids, mask):
            img, txt, scale = net(images, ids, mask)
            loss = baseline_loss(img, txt, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # Chinese-CLIP clamps logit_scale after every step too
                model.logit_scale.clamp_(0, math.log(100))
    else:
        run_cfg = load_config(
            None,
            [
                "deepspeed.zero_stage=2",
                "deepspeed.precision=fp32",
                f"data.batch_size={batches[0]}",
                "optim.max_steps=1000",
                "optim.warmup=0",
            ],
        )
        engine = eng.build_engine(model, run_cfg, max_steps=1000)
        # The trainer's own step (fp32 temperature, finiteness watch, logit_scale clamp), checked every 10th step as
        # at the default train.log_every.
        state = {"logit_scale": eng.clamp_logit_scale(engine), "watch": eng.FiniteWatch(engine.device), "step": 0}

        def step(images, ids, mask):
            state["step"] += 1
            _, state["logit_scale"] = train_step(
                engine,
                images,
                ids,
                mask,
                (None, None),
                state["logit_scale"],
                watch=state["watch"],
                step=state["step"],
                check=state["step"] % 10 == 0,
            )

    records = []
    for batch in batches:
        _reset_peak()  # the model and optimiser state stay resident; only this batch's activations come and go
        images, ids, mask = _inputs(batch, cfg.vision.image_size, 52, cfg.text.vocab_size, seed=rank)
        step(images, ids, mask)  # warm-up (allocator, DeepSpeed buckets)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            step(images, ids, mask)
            times.append(time.perf_counter() - t)
        peak = torch.tensor([_rss_mb("VmHWM") - base_rss])
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        median = sorted(times)[len(times) // 2]
        records.append({"batch": batch, "step_s": median, "peak_mb": peak.item()})
    if rank == 0:
        Path(result).write_text(json.dumps(records))
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------- orchestration
# Fixed glibc mmap threshold for the memory runs (see the module docstring); the timed runs keep the default allocator,
# whose page-fault cost is what users see.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def launch(mode: str, model: str, batches: list[int], steps: int, extra_env: dict | None = None) -> dict[int, dict]:
    from cnclip_scale.launch_env import free_port

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", **(extra_env or {}))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            __file__,
            "--rank-mode",
            mode,
            "--model",
            model,
            "--batches",
            ",".join(map(str, batches)),
            "--steps",
            str(steps),
            "--result",
            str(result),
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            log = Path(tempfile.gettempdir()) / f"bench_train_{mode}.log"
            log.write_text(proc.stdout + proc.stderr)
            raise SystemExit(f"{mode} run failed (full output in {log}):\n{proc.stderr[-3000:]}")
        return {r["batch"]: r for r in json.loads(result.read_text())}


def largest_within(peaks: dict[int, float], cap_mb: float) -> int | None:
    fitting = [batch for batch, peak in peaks.items() if peak <= cap_mb]
    return max(fitting) if fitting else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-Small-16@RoBERTa-Small-chinese")
    # 128 per rank is the per-GPU batch of the seed's MUGE and Flickr30K-CN finetunes.
    p.add_argument("--batch", type=int, default=128, help="per rank, for the time and memory comparison")
    p.add_argument("--sweep", default="64,128,256", help="per-rank batches whose peak memory is measured")
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up) per timing run")
    p.add_argument("--memory-steps", type=int, default=2, help="steps (after one warm-up) per memory run")
    p.add_argument("--cap-mb", type=float, default=1500.0, help="memory cap per rank for the largest-batch search")
    p.add_argument("--rank-mode", help=argparse.SUPPRESS)
    p.add_argument("--batches", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_mode:
        rank_main(args.rank_mode, args.model, [int(b) for b in args.batches.split(",")], args.steps, args.result)
        return

    modes = {
        "ddp": "baseline: DDP, gather w/o grad, full N×N",
        "ours": "ours: ZeRO-2, local loss",
        "ours_ckpt": "ours: ZeRO-2, local loss, grad ckpt",
    }
    sweep = sorted({args.batch, *map(int, args.sweep.split(","))})
    # With the threshold fixed, freed activations leave the resident set, so one process per trainer can sweep the
    # batches, resetting the high-water mark before each.
    peaks = {
        mode: {b: r["peak_mb"] for b, r in launch(mode, args.model, sweep, args.memory_steps, MEMORY_ENV).items()}
        for mode in modes
    }
    times = {mode: launch(mode, args.model, [args.batch], args.steps)[args.batch]["step_s"] for mode in modes}

    print(
        f"model {args.model}, 2 ranks × batch {args.batch} (global {2 * args.batch}), CPU/gloo, "
        f"median of {args.steps} steps"
    )
    print(f"{'trainer':<44}{'step s':>9}{'peak MB/rank':>14}{f'largest batch ≤ {args.cap_mb:.0f} MB':>24}")
    for mode, label in modes.items():
        largest = largest_within(peaks[mode], args.cap_mb)
        print(f"{label:<44}{times[mode]:>9.3f}{peaks[mode][args.batch]:>14.0f}{str(largest):>24}")
    print(
        "peak memory ours+ckpt/baseline by batch per rank: "
        + ", ".join(f"{b}: {peaks['ours_ckpt'][b] / peaks['ddp'][b]:.2f}" for b in sweep)
    )
    time_ratio = times["ours"] / times["ddp"]
    memory_ratio = peaks["ours_ckpt"][args.batch] / peaks["ddp"][args.batch]
    print(
        f"step time ours/baseline: {time_ratio:.2f} (target ≤ 1.1); with checkpointing "
        f"{times['ours_ckpt'] / times['ddp']:.2f}"
    )
    print(f"peak memory ours+ckpt/baseline: {memory_ratio:.2f} (target ≤ 0.5); batches tried {sweep}")
    print(
        "BENCH "
        + json.dumps(
            {
                "stage": "train step (time)",
                "ours": round(times["ours"], 4),
                "baseline": round(times["ddp"], 4),
                "ratio": round(time_ratio, 3),
                "target": "<= 1.1",
                "unit": "s/step",
            }
        )
    )
    print(
        "BENCH "
        + json.dumps(
            {
                "stage": "train peak memory",
                "ours": round(peaks["ours_ckpt"][args.batch]),
                "baseline": round(peaks["ddp"][args.batch]),
                "ratio": round(memory_ratio, 3),
                "target": "<= 0.5",
                "unit": "MB/rank",
            }
        )
    )


if __name__ == "__main__":
    main()
