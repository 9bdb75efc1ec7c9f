#!/usr/bin/env python
"""`make bench`: run every benchmarks/bench_*.py, then print one table of their BENCH lines.

Each benchmark measures its baseline in the same run and ends with lines
``BENCH {"stage", "ours", "baseline", "ratio", "target", "unit"}``.

    bench_eval.py, bench_index.py, bench_loader.py, bench_resize.py, bench_to_shards.py, bench_train.py   CPU
    bench_flip.py  CPU or CUDA: FLIP patch dropout, the ViT-Small-16 image tower at mask_ratio 0.5 vs 0
    bench_gpu.py   one GPU (throughput, MFU, largest batch vs a DDP loop); without CUDA it prints one line saying it
                   skipped and exits 0, so `make bench` runs the same everywhere (`run_all.py bench_gpu` alone)
"""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    rows, failed = [], []
    only = sys.argv[1:]
    for bench in sorted(HERE.glob("bench_*.py")):
        if only and bench.stem not in only:
            continue
        print(f"== {bench.name}", flush=True)
        start = time.time()
        proc = subprocess.run(
            [sys.executable, str(bench)],
            check=False,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        print(proc.stdout, end="")
        print(f"== {bench.name}: {time.time() - start:.0f}s, exit {proc.returncode}", flush=True)
        if proc.returncode != 0:
            failed.append(bench.name)
        rows += [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(f"\nmachine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}")
    print(f"{'stage':<28}{'ours':>12}{'baseline':>12}{'ratio':>9}  {'target':<10}unit")
    for r in rows:
        print(
            f"{r['stage']:<28}{r['ours']:>12}{r['baseline']:>12}{r['ratio']:>9}  {r['target']!s:<10}{r.get('unit', '')}"
        )
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
