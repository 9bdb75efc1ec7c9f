"""Benchmark: our training loader vs. Chinese-CLIP's own LMDBDataset + transform, same data, same workers.

Input: a generated seed split of N ~800 px real-photo JPEGs (crops of bundled photos, like MUGE's product
photos; each made unique by a JPEG comment) with ~1.3 captions per image, then
  ours      tools/to_shards.py's converter (group=pair: exactly Chinese-CLIP's training samples) ->
            build_train_loader (JPEG draft decode, resize to uint8 224, tokenize, batch) in W workers
  baseline  cn_clip's build_lmdb_dataset.py -> cn_clip.training.data.LMDBDataset (base64 decode, full
            decode, resize, ToTensor, Normalize, tokenize) in a DataLoader with W workers
Both read every pair once at batch size 64, files in the page cache; the rate is samples/s from the
first batch to the last (worker start-up excluded), best of `--repeat` alternating runs.

    python benchmarks/bench_loader.py [--images 2048] [--workers 2] [--repeat 2] [--keep DIR]

The last line is machine-readable: BENCH {"stage": "loader", "ours": ..., "baseline": ..., ...}
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

BATCH, SIZE, SIDE = 64, 224, 800


def prepare(folder: str, n: int) -> tuple[str, str, int]:
    """(shard folder, LMDB split folder, pairs) built from one generated seed split."""
    from cnclip_scale.shards.convert import Options, convert_split
    from cnclip_scale.shards.writer import Destination
    from tests.helpers.seed_data import write_realistic_split

    seed, done = os.path.join(folder, "seed"), os.path.join(folder, f"prepared-{n}.json")
    if os.path.exists(done):  # --keep: reuse what an earlier run built
        pairs = json.load(open(done))["pairs"]
        return os.path.join(folder, "shards", "train"), os.path.join(folder, "lmdb", "train"), pairs
    write_realistic_split(seed, n, side=SIDE, pool=64)
    manifest = convert_split(
        seed,
        "train",
        Destination(os.path.join(folder, "shards")),
        Options(group="pair", samples_per_shard=512, workers=2, progress=False),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cn_clip.preprocess.build_lmdb_dataset",
            "--data_dir",
            seed,
            "--splits",
            "train",
            "--lmdb_dir",
            os.path.join(folder, "lmdb"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for root, _, files in os.walk(folder):  # both contenders start from the page cache
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(1 << 24):
                    pass
    with open(done, "w") as f:
        json.dump({"pairs": manifest["totals"]["samples"]}, f)
    return os.path.join(folder, "shards", "train"), os.path.join(folder, "lmdb", "train"), manifest["totals"]["samples"]


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (the DataLoader workers, once joined)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def rate(batches, size_of) -> tuple[float, float, int]:
    """(samples/s wall-clock from the first batch to the last, samples per CPU-second over the whole
    run incl. worker start-up, samples timed). The CPU figure is what a worker with a core to itself
    does, so it holds on a machine others are loading too."""
    began, counted, cpu, total = None, 0, _cpu(), 0
    for batch in batches:
        total += size_of(batch)
        if began is None:
            began = time.perf_counter()
            continue
        counted += size_of(batch)
    wall = counted / (time.perf_counter() - began)
    del batches  # join the workers so their CPU time is counted
    gc.collect()
    return wall, total / (_cpu() - cpu), counted


def ours(shards: str, workers: int) -> tuple[float, float, int]:
    from cnclip_scale.data.pipeline import Reading, build_train_loader
    from cnclip_scale.model.tokenizer import Tokenizer
    from cnclip_scale.model.transforms import ImageTransform

    loader = build_train_loader(
        Reading(sources=shards, batch_size=BATCH, workers=workers),
        tokenizer=Tokenizer(),
        transform=ImageTransform(resolution=SIZE),
        rank=0,
        world_size=1,
        seed=0,
    )
    return rate(iter(loader), lambda b: len(b["keys"]))


def baseline(lmdb_split: str, workers: int) -> tuple[float, float, int]:
    from cn_clip.training.data import LMDBDataset
    from torch.utils.data import DataLoader

    dataset = LMDBDataset(lmdb_split, split="train", max_txt_length=52, use_augment=False, resolution=SIZE)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=False)
    return rate(iter(loader), lambda b: len(b[0]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--keep", help="build/reuse the data in this folder instead of a temporary one")
    args = p.parse_args()
    folder = args.keep or tempfile.mkdtemp(prefix="bench_loader-")
    try:
        began = time.perf_counter()
        shards, lmdb_split, pairs = prepare(folder, args.images)
        print(f"data: {args.images} JPEGs of {SIDE} px, {pairs} pairs, prepared in {time.perf_counter() - began:.0f} s")
        best = {"ours": [0.0, 0.0], "baseline": [0.0, 0.0]}
        for _ in range(args.repeat):  # alternate, so load from elsewhere hits both alike
            for name, run in (
                ("baseline", lambda: baseline(lmdb_split, args.workers)),
                ("ours", lambda: ours(shards, args.workers)),
            ):
                wall, per_cpu, counted = run()
                print(
                    f"  {name:<9} {wall:7.1f} samples/s wall, {per_cpu:6.1f} samples per CPU-second "
                    f"({counted} samples timed)"
                )
                best[name] = [max(best[name][0], wall), max(best[name][1], per_cpu)]
        (ours_wall, ours_cpu), (base_wall, base_cpu) = best["ours"], best["baseline"]
        w = max(args.workers, 1)
        print(
            f"baseline (cn_clip LMDBDataset, {args.workers} workers): {base_wall:.1f} samples/s "
            f"({base_wall / w:.1f} per worker); {base_cpu:.1f} samples per CPU-second"
        )
        print(
            f"ours     (shards + build_train_loader, {args.workers} workers): {ours_wall:.1f} samples/s "
            f"({ours_wall / w:.1f} per worker); {ours_cpu:.1f} samples per CPU-second"
        )
        print(
            f"ratio    {ours_wall / base_wall:.2f}x wall-clock, {ours_cpu / base_cpu:.2f}x per CPU-second "
            f"(target 2.0x; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})"
        )
        print(
            "BENCH "
            + json.dumps(
                {
                    "stage": "loader",
                    "ours": round(ours_wall, 1),
                    "baseline": round(base_wall, 1),
                    "ratio": round(ours_wall / base_wall, 2),
                    "target": 2.0,
                    "unit": "samples/s",
                    "ratio_per_cpu_second": round(ours_cpu / base_cpu, 2),
                }
            )
        )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
