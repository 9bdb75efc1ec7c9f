"""Evaluate a Chinese CLIP checkpoint on a split: recall both directions, zero-shot, seed-format outputs, report.

    cnclip evaluate --checkpoint CKPT --data SRC --split test --output DIR      (one process)
    torchrun --nproc_per_node 8 launch/evaluate.py --checkpoint CKPT --data SRC ...
    deepspeed --num_gpus 8 launch/evaluate.py ...        srun python launch/evaluate.py ... (launch/evaluate.sbatch)

CKPT: native .safetensors, official .pt, HF dir, DeepSpeed checkpoint dir, or a training run dir (train.output_dir:
its model.safetensors, else its latest checkpoint). SRC: our shards (manifest, folder, brace URL) or a Chinese-CLIP
seed folder ({split}_imgs.tsv + {split}_texts.jsonl). See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import logging

from cnclip_scale.cli.command import Command
from cnclip_scale.errors import UserError
from cnclip_scale.eval.config import EvalConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="shard manifest/folder/URL, or a seed-layout folder")
    p.add_argument("--split", default="test", help="seed-layout split name; also names the output files")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--top-k", type=int, default=10, help="predictions kept per query (recall is always @1/5/10)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch per rank")
    p.add_argument("--workers", type=int, default=2, help="data loader workers per rank")
    p.add_argument("--context-length", type=int, default=52)
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16"],
        default="auto",
        help="auto: bf16 (fp16 without bf16 support) on GPU, fp32 on CPU",
    )
    p.add_argument("--zeroshot-classes", help="class names, one per line")
    p.add_argument("--templates", help="prompt templates, one per line, '{}' marks the class name")
    p.add_argument("--save-features", action="store_true", help="also write the seed's feature JSONL files")
    p.add_argument(
        "--gallery-sharded",
        action="store_true",
        help="keep image features on their rank (galleries too big to gather); exact merged top-k",
    )
    p.add_argument("--thumbs-limit", type=int, default=20000, help="thumbnails kept per rank for the report")
    p.add_argument("--no-report", action="store_true")
    p.add_argument(
        "--storage-options",
        default=None,
        help="JSON for fsspec when --data is remote (endpoint_url, key, secret, ...); default: the AWS_* variables",
    )
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by the deepspeed launcher


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        checkpoint=args.checkpoint,
        data=args.data,
        output=args.output,
        split=args.split,
        top_k=args.top_k,
        batch_size=args.batch_size,
        workers=args.workers,
        context_length=args.context_length,
        precision=args.precision,
        zeroshot_classes=args.zeroshot_classes,
        templates=args.templates,
        save_features=args.save_features,
        gallery_sharded=args.gallery_sharded,
        thumbs_limit=args.thumbs_limit,
        write_report=not args.no_report,
        storage_options=_storage_options(args.storage_options),
    )


def _storage_options(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--storage-options is not JSON: {err}") from None
    if not isinstance(options, dict):
        raise UserError(f"--storage-options: expected a JSON object, got {text!r}")
    return options


def evaluate(cfg: EvalConfig) -> int:
    from cnclip_scale.eval.run import run_evaluation  # torch once the arguments parse

    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(message)s")
    run_evaluation(cfg)
    return 0


COMMAND = Command(
    name="evaluate",
    error_prefix="evaluate",
    description=__doc__,
    add_arguments=add_arguments,
    run=lambda args: evaluate(config_from_args(args)),
)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)
