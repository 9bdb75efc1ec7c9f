#!/usr/bin/env python
"""FLIP patch dropout (``model.mask_ratio``): the image tower's forward + backward at mask_ratio 0.5 vs 0, same run.

The ViT-Small-16 image tower of the registry (width 192, 4 blocks, patch 16) at ``--image-size`` (default 224: 196
patches, as pretraining sees them), in training mode, on random images; the step is forward, a sum of the features,
backward (the text tower and the loss are the same at either ratio, so they are left out). The two settings alternate
over ``--repeat`` rounds and each keeps its fastest step, so machine load hits both alike. Memory: on CUDA the peak
allocated; on CPU the bytes of the tensors autograd saves for the backward (counted once per storage), which is what
the activations cost, without glibc's allocator history in it (see bench_train.py).
Prints a table and a BENCH line.

    python benchmarks/bench_flip.py [--batch 32] [--image-size 224] [--steps 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from cnclip_scale.model.clip import PatchDropout, build_vision_tower  # noqa: E402
from cnclip_scale.model.configs import model_config  # noqa: E402


def saved_bytes(tower, images) -> int:
    """Bytes autograd keeps for the backward of one forward (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = tower(images)
    out.sum().backward()
    params = {p.untyped_storage().data_ptr() for p in tower.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


def step_time(tower, images, steps: int) -> float:
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    best = float("inf")
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        tower(images).sum().backward()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    torch.manual_seed(0)
    vision = model_config("ViT-Small-16@RoBERTa-Small-chinese", image_size=args.image_size).vision
    tower = build_vision_tower(vision).to(device).train()
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    drops = {0.0: PatchDropout(0.0), 0.5: PatchDropout(0.5, num_prefix_tokens=tower.num_prefix_tokens)}
    best = dict.fromkeys(drops, float("inf"))
    memory = {}
    for ratio, drop in drops.items():  # warm-up, and the memory of one step
        tower.patch_drop = drop.train()
        step_time(tower, images, 1)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step_time(tower, images, 1)
            memory[ratio] = torch.cuda.max_memory_allocated()
        else:
            memory[ratio] = saved_bytes(tower, images)
        tower.zero_grad(set_to_none=True)
    for _ in range(args.repeat):
        for ratio, drop in drops.items():
            tower.patch_drop = drop
            best[ratio] = min(best[ratio], step_time(tower, images, args.steps))
            tower.zero_grad(set_to_none=True)
    patches = tower.patch_embed.num_patches
    what = "peak allocated MB" if device.type == "cuda" else "saved activations MB"
    print(
        f"ViT-Small-16 image tower, {args.image_size} px ({patches} patches), batch {args.batch}, {device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"{'mask_ratio':<12}{'tokens':>8}{'fwd+bwd s':>11}{what:>22}")
    for ratio, drop in drops.items():
        tokens = 1 + (drop.kept(patches) if ratio else patches)
        print(f"{ratio:<12}{tokens:>8}{best[ratio]:>11.3f}{memory[ratio] / 2**20:>22.1f}")
    speedup = best[0.0] / best[0.5]
    print(f"mask_ratio 0.5: {speedup:.2f}x faster (target 1.6x), {memory[0.5] / memory[0.0]:.2f}x the memory")
    bench = {"stage": "flip_mask0.5_vision_step", "ours": round(best[0.5], 4), "baseline": round(best[0.0], 4)}
    bench |= {"ratio": round(speedup, 2), "target": 1.6, "unit": "s per fwd+bwd (ratio: speed-up)"}
    bench |= {"memory_ratio": round(memory[0.5] / memory[0.0], 2), "memory_kind": what}
    print("BENCH " + json.dumps(bench))


if __name__ == "__main__":
    main()
