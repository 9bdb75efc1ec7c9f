"""Benchmark: `to_shards --resize 256` shards vs. shards of the original 800 px photos, both sides in one run.

Input: a generated seed split of N ~800 px real-photo JPEGs (crops of bundled photos, each made unique by a JPEG
comment), converted by tools/to_shards.py (fresh processes, 1 worker, files in the page cache) three times:
  original  the photos as they came (the default: bytes never re-encoded)
  256       --resize 256 (keep_ratio: shorter side 256, JPEG quality 95): what the issue asks
  224       --resize 224: the model's own resolution, shown for reference (the loader then has no resize left)
  loader    build_train_loader (JPEG draft decode, resize to 224, tokenize, batch 64) in the main process
            (workers=0), so one core does everything: samples per CPU-second from the first batch to the last
            (steady state, holds on a loaded machine) and samples/s wall-clock
  converter wall and CPU seconds of each conversion: what --resize costs once, at conversion
Target: the loader reads >= 4x the samples per core from --resize 256 shards.

    python benchmarks/bench_resize.py [--images 1024] [--repeat 2] [--keep DIR]

The last lines are machine-readable: BENCH {"stage": "loader_resize256", ...}, BENCH {"stage": "to_shards_resize", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from bench_to_shards import _timed  # noqa: E402

SIDE, RESIZE, SIZE, BATCH = 800, 256, 224, 64


def convert(seed: str, out: str, resize: int | None) -> tuple[float, float]:
    """(wall s, CPU s) of one fresh tools/to_shards.py process converting the split."""
    command = [sys.executable, os.path.join(REPO, "tools", "to_shards.py"), "--src", seed, "--dst", out]
    command += ["--splits", "train", "--workers", "1", "--samples-per-shard", "256", "--overwrite", "--no-progress"]
    return _timed([command + (["--resize", str(resize)] if resize else [])])


def loader(shards: str) -> tuple[float, float, int]:
    """(samples/s wall, samples per CPU-second, samples timed) from the first batch to the last, one process."""
    from cnclip_scale.data.pipeline import Reading, build_train_loader
    from cnclip_scale.model.tokenizer import Tokenizer
    from cnclip_scale.model.transforms import ImageTransform

    batches = build_train_loader(
        Reading(sources=shards, batch_size=BATCH, workers=0),
        tokenizer=Tokenizer(),
        transform=ImageTransform(resolution=SIZE),
        rank=0,
        world_size=1,
        seed=0,
    )
    began = counted = None
    for batch in batches:
        if began is None:
            began, cpu, counted = time.perf_counter(), time.process_time(), 0
            continue
        counted += len(batch["keys"])
    return counted / (time.perf_counter() - began), counted / (time.process_time() - cpu), counted


def _warm(folder: str) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(1 << 24):
                    pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--keep", help="build/reuse the data in this folder instead of a temporary one")
    args = p.parse_args()
    from tests.helpers.seed_data import write_realistic_split

    folder = args.keep or tempfile.mkdtemp(prefix="bench_resize-")
    try:
        seed = os.path.join(folder, "seed")
        if not os.path.exists(os.path.join(seed, "train_texts.jsonl")):
            write_realistic_split(seed, args.images, side=SIDE, pool=64)
        _warm(seed)
        sets = {"original": None, str(RESIZE): RESIZE, str(SIZE): SIZE}
        conv, read, kb = {n: [] for n in sets}, {n: [0.0, 0.0] for n in sets}, {}
        for _ in range(args.repeat):  # alternate, so load from elsewhere hits all alike
            for name, resize in sets.items():
                conv[name].append(convert(seed, os.path.join(folder, name), resize))
        for name in sets:
            manifest = json.load(open(os.path.join(folder, name, "train", "manifest.json")))
            kb[name] = manifest["totals"]["bytes"] / manifest["totals"]["samples"] / 1e3
            _warm(os.path.join(folder, name))
        for _ in range(args.repeat):
            for name in sets:
                wall, per_cpu, counted = loader(os.path.join(folder, name, "train"))
                print(f"  loader {name:<9} {wall:7.1f} samples/s wall, {per_cpu:6.1f} per CPU-second ({counted} timed)")
                read[name] = [max(read[name][0], wall), max(read[name][1], per_cpu)]
        base_wall, base_cpu = read["original"]
        conv_wall, conv_cpu = min(conv["original"])
        print(f"data: {args.images} JPEGs of {SIDE} px ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")
        print(
            f"{'shards':<14}{'KB/sample':>10}{'loader/CPU-s':>14}{'ratio':>8}{'loader/s wall':>15}{'ratio':>8}"
            f"{'convert s':>11}{'CPU s':>8}{'ratio':>8}"
        )
        for name in sets:
            (wall, cpu), (c_wall, c_cpu) = read[name], min(conv[name])
            label = "original" if name == "original" else f"--resize {name}"
            print(
                f"{label:<14}{kb[name]:>10.1f}{cpu:>14.1f}{cpu / base_cpu:>7.2f}x{wall:>15.1f}{wall / base_wall:>7.2f}x"
                f"{c_wall:>11.2f}{c_cpu:>8.2f}{c_cpu / conv_cpu:>7.2f}x"
            )
        (r_wall, r_cpu), (cr_wall, cr_cpu) = read[str(RESIZE)], min(conv[str(RESIZE)])
        print(
            f"loader per core on --resize {RESIZE} shards: {r_cpu / base_cpu:.2f}x the original's (target 4.0x); "
            f"the converter spends {cr_cpu / conv_cpu:.2f}x the CPU ({args.images / cr_cpu:.0f} images per CPU-second)"
        )
        bench = {"stage": "loader_resize256", "ours": round(r_cpu, 1), "baseline": round(base_cpu, 1)}
        bench |= {"ratio": round(r_cpu / base_cpu, 2), "target": 4.0, "unit": "samples per CPU-second"}
        bench |= {
            "ratio_wall": round(r_wall / base_wall, 2),
            "ratio_resize_224": round(read[str(SIZE)][1] / base_cpu, 2),
        }
        print("BENCH " + json.dumps(bench))
        bench = {"stage": "to_shards_resize", "ours": round(cr_cpu, 2), "baseline": round(conv_cpu, 2)}
        bench |= {"ratio": round(cr_cpu / conv_cpu, 2), "target": None, "unit": "CPU s (lower is better)"}
        bench |= {"wall_s": [round(cr_wall, 2), round(conv_wall, 2)]}
        print("BENCH " + json.dumps(bench))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
