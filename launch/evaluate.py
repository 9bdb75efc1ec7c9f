#!/usr/bin/env python
"""Evaluate a Chinese CLIP checkpoint on a split: recall both directions, zero-shot, seed-format outputs, report.

    python launch/evaluate.py --checkpoint CKPT --data SRC --split test --output DIR      (one process)
    torchrun --nproc_per_node 8 launch/evaluate.py --checkpoint CKPT --data SRC ...
    deepspeed --num_gpus 8 launch/evaluate.py ...        srun python launch/evaluate.py ... (launch/evaluate.sbatch)

CKPT: native .safetensors, DeepSpeed checkpoint dir, official .pt or HF dir. SRC: our shards (manifest, folder,
brace URL) or a Chinese-CLIP seed folder ({split}_imgs.tsv + {split}_texts.jsonl). See docs/evaluation.md.
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnclip_scale.errors import UserError, report
from cnclip_scale.eval.run import run_evaluation  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="shard manifest/folder/URL, or a seed-layout folder")
    p.add_argument("--split", default="test", help="seed-layout split name; also names the output files")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--top-k", type=int, default=10, help="predictions kept per query (recall is always @1/5/10)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch per rank")
    p.add_argument("--workers", type=int, default=2, help="data loader workers per rank")
    p.add_argument("--context-length", type=int, default=52)
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                   help="auto: bf16 (fp16 without bf16 support) on GPU, fp32 on CPU")
    p.add_argument("--zeroshot-classes", help="class names, one per line")
    p.add_argument("--templates", help="prompt templates, one per line, '{}' marks the class name")
    p.add_argument("--save-features", action="store_true", help="also write the seed's feature JSONL files")
    p.add_argument("--gallery-sharded", action="store_true",
                   help="keep image features on their rank (galleries too big to gather); exact merged top-k")
    p.add_argument("--thumbs-limit", type=int, default=20000, help="thumbnails kept per rank for the report")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(message)s")
    try:
        summary = run_evaluation(args)
    except UserError as e:  # bad arguments, paths, weights, data (and the data pipeline's own errors)
        return report("evaluate", e)
    return 0 if summary else 1


if __name__ == "__main__":
    sys.exit(main())
