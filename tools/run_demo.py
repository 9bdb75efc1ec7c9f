#!/usr/bin/env python
"""`make demo`: the whole stack on the embedded demo data, through the same commands a user runs.

    python tools/run_demo.py [--out demo_out] [--steps N] [--ranks 2]

1. tools/make_demo_data.py   coloured real handwritten digits + Chinese captions, seed layout (TSV/JSONL)
2. tools/to_shards.py        → WebDataset shards with manifest, stats, rejects
3. deepspeed launch/pretrain.py   2 ranks (CPU: gloo; GPU: one per GPU), ZeRO-2, gradient checkpointing
4. deepspeed launch/evaluate.py   sharded evaluation of the test split: recall both ways, zero-shot, report.html
5. tools/plot_metrics.py     training curves PNG
Re-running reuses what is built: the dataset if present, finished shards, a finished training run (resume=auto).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
DEEPSPEED = str(Path(PY).parent / "deepspeed")


def step(title: str, cmd: list[str], env: dict) -> None:
    print(f"\n==> {title}\n    {' '.join(cmd)}", flush=True)
    start = time.time()
    result = subprocess.run(cmd, env=env, cwd=REPO)
    if result.returncode != 0:
        sys.exit(f"demo: '{title}' failed (exit {result.returncode}); see the output above")
    print(f"    done in {time.time() - start:.0f}s", flush=True)


def gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch CUDA: CPU ranks
        return 0


def recall_table(summary: dict) -> str:
    rows = [
        "",
        "              R@1     R@5    R@10      MR",
        *(
            f"{name:<10}{d['r1']:>8.2f}{d['r5']:>8.2f}{d['r10']:>8.2f}{d['mean_recall']:>8.2f}"
            for name, d in (("text→image", summary["t2i"]), ("image→text", summary["i2t"]))
        ),
    ]
    zs = summary.get("zeroshot")
    if zs:
        rows.append(
            f"zero-shot  top-1 {zs['top1']:.2f}  top-5 {zs['top5']:.2f}  ({zs.get('classes', '?')} classes, "
            f"{zs.get('images', '?')} images)"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="working folder (relative to the repository)")
    parser.add_argument("--steps", type=int, help="training steps (default: configs/demo.yaml)")
    parser.add_argument("--ranks", type=int, default=2, help="CPU ranks when there is no GPU")
    parser.add_argument("--fresh", action="store_true", help="delete the working folder first")
    args = parser.parse_args()
    out = (REPO / args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    n_gpus = gpus()
    if n_gpus == 0:
        env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")  # one thread per rank is fastest on small CPUs
    ranks = n_gpus or args.ranks

    seed, shards, run, evaluation = out / "seed", out / "shards", out / "run", out / "eval"
    if not (seed / "zeroshot_classes.txt").exists():
        step("1/5 demo dataset (seed layout)", [PY, "tools/make_demo_data.py", str(seed)], env)
    else:
        print(f"\n==> 1/5 demo dataset: reusing {seed}")
    step(
        "2/5 shards",
        [
            PY,
            "tools/to_shards.py",
            "--src",
            str(seed),
            "--dst",
            str(shards),
            "--splits",
            "train,valid,test",
            "--workers",
            "2",
        ],
        env,
    )
    train = [
        DEEPSPEED,
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(_port()),
        "launch/pretrain.py",
        "--config",
        "configs/demo.yaml",
        f"data.train=[{shards}/train]",
        f"data.valid=[{shards}/valid]",
        f"train.output_dir={run}",
    ]
    if args.steps:
        train.append(f"optim.max_steps={args.steps}")
    if n_gpus:
        train.append("deepspeed.precision=bf16")
    step(f"3/5 training: {ranks} ranks, ZeRO-2, gradient checkpointing", train, env)
    step(
        "4/5 sharded evaluation (test split)",
        [
            DEEPSPEED,
            "--num_gpus",
            str(ranks),
            "--master_port",
            str(_port()),
            "launch/evaluate.py",
            "--checkpoint",
            str(run / "model.safetensors"),
            "--data",
            str(shards / "test"),
            "--split",
            "test",
            "--output",
            str(evaluation),
            "--zeroshot-classes",
            str(seed / "zeroshot_classes.txt"),
            "--workers",
            "1",
        ],
        env,
    )
    curves = out / "training_curves.png"
    step("5/5 training curves", [PY, "tools/plot_metrics.py", str(run / "metrics.jsonl"), "-o", str(curves)], env)

    summary = json.loads((evaluation / "summary.json").read_text())
    print("\n==> results on the test split" + recall_table(summary))
    chance = 100 * summary.get("pairs", 1) / max(1, summary["texts"]) / max(1, summary["images"])
    print(f"(chance text→image R@1 ≈ {chance:.2f}; {summary['images']} images, {summary['texts']} texts)")
    print(
        f"\nreport:          {evaluation / 'report.html'}\ntraining curves: {curves}\n"
        f"predictions:     {evaluation}/test_predictions.jsonl, test_tr_predictions.jsonl\n"
        f"model (fp32):    {run / 'model.safetensors'}"
    )
    return 0


def _port() -> int:
    sys.path.insert(0, str(REPO))
    from cnclip_scale.launch_env import free_port

    return free_port()


if __name__ == "__main__":
    sys.exit(main())
