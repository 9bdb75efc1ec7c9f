#!/usr/bin/env python
"""Features → recall: ours vs the seed's make_topk_predictions.py + evaluation.py (cn-clip 1.6.0).

MUGE-validation shape: 5,008 texts × 29,806 images, unit features, dim 512. Matches are planted: the images
are split into 5,008 groups (about 6 each, like MUGE's products per query) and a text is its group's mean
direction plus noise, so recall is far from 0 and from 100. Each tool reads the features in its own format
(ours: .npy + ids; the seed: JSONL) and both read the same ground-truth texts.jsonl; both run as a fresh
process with the same thread count. The seed's script calls ``.cuda()``: a wrapper makes
``torch.Tensor.cuda`` return the tensor and runs the unchanged module with ``runpy``.
Then the gallery-sharded mode at 1M images × 10k queries on 2 gloo ranks: time and peak memory per rank.
Last line: ``BENCH {...}``.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnclip_scale.eval import outputs, retrieval  # noqa: E402 - after the sys.path line
from cnclip_scale.launch_env import free_port  # noqa: E402

N_IMAGES, N_TEXTS, DIM, K = 29806, 5008, 512, 10
SEED_EVAL = Path(__import__("cn_clip").__file__).parent / "eval"
WRAPPER = """import runpy, sys, torch
torch.Tensor.cuda = lambda self, *a, **k: self   # CPU run; nothing else changed
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def make_features(d: Path) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(N_IMAGES, DIM, generator=g), dim=1)
    group = torch.randperm(N_IMAGES, generator=g) % N_TEXTS
    centre = torch.nn.functional.normalize(torch.zeros(N_TEXTS, DIM).index_add_(0, group, images), dim=1)
    noise = torch.nn.functional.normalize(torch.randn(N_TEXTS, DIM, generator=g), dim=1)
    texts = torch.nn.functional.normalize(0.25 * centre + noise, dim=1)
    image_ids = [str(10_000_000 + 7 * k) for k in range(N_IMAGES)]
    text_ids = [str(100_000 + k) for k in range(N_TEXTS)]
    outputs.save_npy(str(d), "valid_imgs", "img", images, image_ids)
    outputs.save_npy(str(d), "valid_texts", "txt", texts, text_ids)
    outputs.write_features_jsonl(str(d / "valid_imgs.img_feat.jsonl"), "image_id", image_ids, images)
    outputs.write_features_jsonl(str(d / "valid_texts.txt_feat.jsonl"), "text_id", text_ids, texts)
    members: dict[int, list] = {}
    for k, t in enumerate(group.tolist()):
        members.setdefault(t, []).append(int(image_ids[k]))
    with open(d / "valid_texts.jsonl", "w", encoding="utf-8") as f:
        for t, text_id in enumerate(text_ids):
            f.write(json.dumps({"text_id": int(text_id), "text": f"查询{t}", "image_ids": members[t]}) + "\n")


def ours(d: Path, fmt: str) -> None:
    """Our path: read features, exact top-k, predictions file, recall, output.json. Its own wall time (after
    the imports, which launch/evaluate.py has paid before it ranks anything) goes to ``ours_{fmt}.seconds``."""
    t0, c0 = time.perf_counter(), time.process_time()
    if fmt == "npy":
        images, image_ids = outputs.load_npy(str(d), "valid_imgs", "img")
        texts, text_ids = outputs.load_npy(str(d), "valid_texts", "txt")
    else:
        image_ids, images = outputs.read_features_jsonl(str(d / "valid_imgs.img_feat.jsonl"), "image_id")
        text_ids, texts = outputs.read_features_jsonl(str(d / "valid_texts.txt_feat.jsonl"), "text_id")
    _, index = retrieval.topk(torch.from_numpy(texts), torch.from_numpy(images), K)
    position = {i: k for k, i in enumerate(image_ids)}
    gt_t, gt_i = [], []
    with open(d / "valid_texts.jsonl", encoding="utf-8") as f:
        for t, line in enumerate(f):
            for i in json.loads(line)["image_ids"]:
                gt_t.append(t)
                gt_i.append(position[i])
    outputs.write_predictions(
        str(d / f"ours_{fmt}_predictions.jsonl"),
        "text_id",
        "image_ids",
        [str(x) for x in text_ids],
        [str(x) for x in image_ids],
        index,
        K,
    )
    score = retrieval.recall(index, torch.tensor(gt_t), torch.tensor(gt_i), len(image_ids))
    outputs.write_json(str(d / f"ours_{fmt}_output.json"), outputs.seed_score(score))
    (d / f"ours_{fmt}.seconds").write_text(f"{time.perf_counter() - t0} {time.process_time() - c0}")


CPU_SECONDS: dict[str, float] = {}


def timed(cmd: list[str], env: dict, name: str = "") -> float:
    """Wall seconds of a fresh process; its CPU seconds (user+sys) go to CPU_SECONDS[name] — on a shared
    machine the CPU time is the steadier of the two."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_SECONDS[name] = (
        CPU_SECONDS.get(name, 0.0) + (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    )
    return wall


def sharded_rank(queries: int, gallery: int, out: str) -> None:
    """One rank of the gallery-sharded run (started by torchrun): my shard of a planted gallery, all queries."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    r, w = dist.get_rank(), dist.get_world_size()
    lo, hi = gallery * r // w, gallery * (r + 1) // w
    shard, gen = torch.empty(hi - lo, DIM), torch.Generator().manual_seed(r)
    for s in range(0, hi - lo, 65536):  # in place, block by block: the shard is the only big allocation
        block = shard[s : s + 65536]
        block.normal_(generator=gen)
        block.div_(block.norm(dim=1, keepdim=True))
    noise = torch.nn.functional.normalize(torch.randn(queries, DIM, generator=torch.Generator().manual_seed(99)), dim=1)
    planted = torch.arange(queries) * (gallery // queries)  # query j ≈ gallery item j·(N/Q) + noise
    mine = (planted >= lo) & (planted < hi)
    q = torch.zeros(queries, DIM)
    q[mine] = torch.nn.functional.normalize(shard[planted[mine] - lo] + 0.5 * noise[mine], dim=1)
    dist.all_reduce(q)  # each planted item lives on one rank: the sum is every query once
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    dist.barrier()
    t0 = time.perf_counter()
    _, index = retrieval.sharded_topk(q, shard, torch.arange(lo, hi), K)
    seconds = time.perf_counter() - t0
    hit1 = float((index[:, 0] == planted).float().mean())
    facts = {
        "rank": r,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_before_topk_mb": round(base_rss),
        "gallery_shard_mb": round(shard.numel() * 4 / 2**20),
        "planted_hit_at_1": hit1,
    }
    Path(out, f"rank{r}.json").write_text(json.dumps(facts))
    dist.destroy_process_group()


def sharded(args, env: dict, threads: int, out: Path) -> None:
    """The gallery-sharded run: 2 gloo ranks (torchrun), each its half of the gallery."""
    out.mkdir()
    n, q = args.sharded_gallery, args.sharded_queries
    shard_env = dict(env, OMP_NUM_THREADS=str(max(1, threads // 2)))
    t_sharded = timed(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            __file__,
            "--sharded-rank",
            str(q),
            str(n),
            str(out),
        ],
        shard_env,
        "sharded",
    )
    print(f"gallery-sharded top-{K}: {n:,} images × {q:,} queries on 2 gloo ranks ({t_sharded:.1f} s with startup)")
    for r in range(2):
        print("  " + (out / f"rank{r}.json").read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ours", nargs=2, metavar=("DIR", "FMT"), help=argparse.SUPPRESS)
    p.add_argument("--sharded-rank", nargs=3, metavar=("Q", "N", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--sharded-gallery", type=int, default=1_000_000)
    p.add_argument("--sharded-queries", type=int, default=10_000)
    p.add_argument("--no-sharded", action="store_true", help="skip the gallery-sharded run")
    args = p.parse_args()
    if args.ours:
        ours(Path(args.ours[0]), args.ours[1])
        return 0
    if args.sharded_rank:
        sharded_rank(int(args.sharded_rank[0]), int(args.sharded_rank[1]), args.sharded_rank[2])
        return 0

    threads = os.cpu_count() or 1
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_features(d)
        me = [sys.executable, __file__, "--ours", str(d)]
        t_npy = timed(me + ["npy"], env, "ours")
        t_jsonl = timed(me + ["jsonl"], env, "ours_jsonl")
        (d / "wrap.py").write_text(WRAPPER)
        t_seed = timed(
            [
                sys.executable,
                str(d / "wrap.py"),
                str(SEED_EVAL / "make_topk_predictions.py"),
                "--image-feats",
                str(d / "valid_imgs.img_feat.jsonl"),
                "--text-feats",
                str(d / "valid_texts.txt_feat.jsonl"),
                "--top-k",
                str(K),
                "--eval-batch-size",
                "32768",
                "--output",
                str(d / "seed_predictions.jsonl"),
            ],
            env,
            "seed",
        )
        t_seed += timed(
            [
                sys.executable,
                str(SEED_EVAL / "evaluation.py"),
                str(d / "valid_texts.jsonl"),
                str(d / "seed_predictions.jsonl"),
                str(d / "seed_output.json"),
            ],
            env,
            "seed",
        )
        seed_out = json.loads((d / "seed_output.json").read_text())
        same_scores = all(json.loads((d / f"ours_{f}_output.json").read_text()) == seed_out for f in ("npy", "jsonl"))
        seed_preds = (d / "seed_predictions.jsonl").read_text().splitlines()
        ours_preds = (d / "ours_npy_predictions.jsonl").read_text().splitlines()
        differing = sum(a != b for a, b in zip(seed_preds, ours_preds)) + abs(len(seed_preds) - len(ours_preds))
        print(f"features→recall, {N_TEXTS} texts × {N_IMAGES} images, dim {DIM}, {threads} threads")
        print(f"  seed make_topk_predictions.py + evaluation.py (JSONL): {t_seed:.2f} s  score {seed_out['scoreJson']}")
        (path_npy, cpu_npy), (path_jsonl, _) = (
            map(float, (d / f"ours_{f}.seconds").read_text().split()) for f in ("npy", "jsonl")
        )
        print(f"  ours (.npy):  {path_npy:.2f} s in process ({t_npy:.2f} s as a fresh process, imports included)")
        print(f"  ours (JSONL): {path_jsonl:.2f} s in process ({t_jsonl:.2f} s as a fresh process)")
        print(f"  identical output.json (both of ours vs the seed's): {same_scores}")
        print(f"  prediction lines differing from the seed's: {differing} of {len(seed_preds)}")
        print(
            f"  CPU seconds (user+sys): seed {CPU_SECONDS['seed']:.1f}, ours {CPU_SECONDS['ours']:.1f}, "
            f"ours from JSONL {CPU_SECONDS['ours_jsonl']:.1f}; load average {os.getloadavg()[0]:.1f} on {threads} cores"
        )

        if not args.no_sharded:
            sharded(args, env, threads, d / "sharded")
    ratio = t_seed / path_npy
    print(
        "BENCH "
        + json.dumps(
            {
                "stage": "eval",
                "ours": round(path_npy, 3),
                "baseline": round(t_seed, 3),
                "ratio": round(ratio, 1),
                "target": 50,
                "unit": "s",
                "identical_scores": same_scores,
                "ours_fresh_process": round(t_npy, 3),
                "ratio_fresh_process": round(t_seed / t_npy, 1),
                "cpu_ratio_in_process": round(CPU_SECONDS["seed"] / cpu_npy, 1),
                "cpu_ratio_fresh_process": round(CPU_SECONDS["seed"] / CPU_SECONDS["ours"], 1),
            }
        )
    )
    return 0 if same_scores else 1


if __name__ == "__main__":
    sys.exit(main())
