#!/usr/bin/env python
"""Training step: our trainer (DeepSpeed ZeRO-2, local loss) vs a DDP loop in the style of Chinese-CLIP's, 2 ranks.

The baseline does what Chinese-CLIP's trainer does: torch DDP, features all-gathered *without* gradients, every rank
building the full N×N logits of the global batch. Ours: DeepSpeed ZeRO-2 (gradients and optimiser state partitioned),
the local-loss InfoNCE (local rows × global columns), with and without gradient checkpointing.

Both sides train the same model on the same random inputs with the same global batch; the step excludes data loading.
Peak memory is each rank's resident-set high-water mark above what it held after imports (reset through
/proc/self/clear_refs), the CPU counterpart of torch.cuda.max_memory_allocated. Prints a table and a BENCH line.

    python benchmarks/bench_train.py [--model NAME] [--batch 64] [--steps 8] [--cap-mb 1500]
"""
from __future__ import annotations

import argparse
import json
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


def _baseline_loss(img, txt, scale):
    """Chinese-CLIP's distributed loss: gather without grad, put the local features back, full N×N logits."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    rank, world = dist.get_rank(), dist.get_world_size()
    gathered_img = [torch.zeros_like(img) for _ in range(world)]
    gathered_txt = [torch.zeros_like(txt) for _ in range(world)]
    dist.all_gather(gathered_img, img)
    dist.all_gather(gathered_txt, txt)
    all_img = torch.cat([img] + gathered_img[:rank] + gathered_img[rank + 1:])
    all_txt = torch.cat([txt] + gathered_txt[:rank] + gathered_txt[rank + 1:])
    logits = scale * all_img @ all_txt.t()
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def rank_main(mode: str, model_name: str, batches: list[int], steps: int, result: str) -> None:
    import torch
    import torch.distributed as dist

    from cnclip_scale.model import build_model, model_config
    from cnclip_scale.train.config import load_config
    from cnclip_scale.train.loss import clip_loss

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
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
            loss = _baseline_loss(img, txt, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        from cnclip_scale.train import engine as eng

        run_cfg = load_config(None, ["deepspeed.zero_stage=2", "deepspeed.precision=fp32", f"data.batch_size={batches[0]}",
                                     "optim.max_steps=1000", "optim.warmup=0"])
        engine = eng.build_engine(model, run_cfg, max_steps=1000)

        def step(images, ids, mask):
            img, txt, scale = engine(images, ids, mask)
            out = clip_loss(img, txt, scale)
            engine.backward(out["loss"])
            engine.step()

    records = []
    for batch in batches:
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
def launch(mode: str, model: str, batches: list[int], steps: int) -> list[dict]:
    from cnclip_scale.dist import free_port

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               __file__, "--rank-mode", mode, "--model", model, "--batches", ",".join(map(str, batches)),
               "--steps", str(steps), "--result", str(result)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
        return json.loads(result.read_text())


def largest_within(records: list[dict], cap_mb: float) -> int | None:
    fitting = [r["batch"] for r in records if r["peak_mb"] <= cap_mb]
    return max(fitting) if fitting else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-Small-16@RoBERTa-Small-chinese")
    p.add_argument("--batch", type=int, default=64, help="per rank, for the time and memory comparison")
    p.add_argument("--sweep", default="32,64,128,256", help="per-rank batches tried for the memory-cap search")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--cap-mb", type=float, default=1500.0, help="memory cap per rank for the largest-batch search")
    p.add_argument("--rank-mode", help=argparse.SUPPRESS)
    p.add_argument("--batches", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_mode:
        rank_main(args.rank_mode, args.model, [int(b) for b in args.batches.split(",")], args.steps, args.result)
        return

    sweep = sorted({args.batch, *map(int, args.sweep.split(","))})
    runs = {mode: {r["batch"]: r for r in launch(mode, args.model, sweep, args.steps)}
            for mode in ("ddp", "ours", "ours_ckpt")}
    base, ours, ckpt = (runs[m][args.batch] for m in ("ddp", "ours", "ours_ckpt"))
    print(f"model {args.model}, 2 ranks × batch {args.batch} (global {2 * args.batch}), CPU/gloo, median of {args.steps} steps")
    print(f"{'trainer':<44}{'step s':>9}{'peak MB/rank':>14}{'largest batch ≤ cap':>22}")
    labels = {"ddp": "baseline: DDP, gather w/o grad, full N×N", "ours": "ours: ZeRO-2, local loss",
              "ours_ckpt": "ours: ZeRO-2, local loss, grad ckpt"}
    for mode, label in labels.items():
        r = runs[mode][args.batch]
        print(f"{label:<44}{r['step_s']:>9.3f}{r['peak_mb']:>14.0f}{str(largest_within(runs[mode].values(), args.cap_mb)):>22}")
    time_ratio = ours["step_s"] / base["step_s"]
    memory_ratio = ckpt["peak_mb"] / base["peak_mb"]
    print(f"step time ours/baseline: {time_ratio:.2f} (target ≤ 1.1); with checkpointing {ckpt['step_s'] / base['step_s']:.2f}")
    print(f"peak memory ours+ckpt/baseline: {memory_ratio:.2f} (target ≤ 0.5); cap {args.cap_mb:.0f} MB/rank, "
          f"batches tried {sweep}")
    print("BENCH " + json.dumps({"stage": "train step (time)", "ours": round(ours["step_s"], 4),
                                 "baseline": round(base["step_s"], 4), "ratio": round(time_ratio, 3), "target": "<= 1.1",
                                 "unit": "s/step"}))
    print("BENCH " + json.dumps({"stage": "train peak memory", "ours": round(ckpt["peak_mb"]),
                                 "baseline": round(base["peak_mb"]), "ratio": round(memory_ratio, 3), "target": "<= 0.5",
                                 "unit": "MB/rank"}))


if __name__ == "__main__":
    main()
