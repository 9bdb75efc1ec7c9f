"""Build a searchable index from the evaluator's feature files: exact up to a few million vectors, else HNSW or
IVF-PQ chosen from the collection size and the memory budget (the choice and its tuning go to OUT/index.json).

    cnclip build-index runs/muge/eval/test_imgs.img_feat.npy runs/muge/index --memory-budget 4G
    python tools/build_index.py valid_imgs.img_feat.jsonl index/ --kind ivfpq      (the seed's JSONL works too)

Exit code 2 for a file, option or budget to fix (one line).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from cnclip_scale.cli.command import Command
from cnclip_scale.errors import UserError
from cnclip_scale.search import params as P

DEFAULT_BUDGET = "4G"


@dataclass(frozen=True, kw_only=True)
class BuildIndexConfig:
    features: str
    out: str
    ids: str | None
    memory_budget: int
    kind: str
    exact_max: int
    target_recall: float


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("features", help="FEAT.npy (with its *_ids.npy beside it) or a seed feature .jsonl")
    p.add_argument("out", help="index directory to write")
    p.add_argument("--ids", help="ids .npy (default: the *_ids.npy beside FEAT.npy)")
    p.add_argument("--memory-budget", default=DEFAULT_BUDGET, help=f"RAM the index may hold (default {DEFAULT_BUDGET})")
    p.add_argument("--kind", default="auto", choices=P.KINDS, help="force a kind (default: by size and budget)")
    p.add_argument("--exact-max", type=int, default=P.EXACT_MAX, help="largest collection searched exactly")
    p.add_argument("--target-recall", type=float, default=0.97, help="recall@10 the search setting is tuned to")


def config_from_args(args: argparse.Namespace) -> BuildIndexConfig:
    if not 0 < args.target_recall <= 1:
        raise UserError(f"--target-recall {args.target_recall}: expected a value in (0, 1]")
    if args.exact_max < 0:
        raise UserError(f"--exact-max {args.exact_max}: expected 0 or more")
    return BuildIndexConfig(
        features=args.features,
        out=args.out,
        ids=args.ids,
        memory_budget=P.parse_bytes(args.memory_budget),
        kind=args.kind,
        exact_max=args.exact_max,
        target_recall=args.target_recall,
    )


def build_index_command(cfg: BuildIndexConfig) -> int:
    from cnclip_scale.search import build_index, read_features  # torch and faiss load only when there is work

    vectors, ids = read_features(cfg.features, cfg.ids)
    index = build_index(
        vectors,
        ids,
        cfg.out,
        memory_budget=cfg.memory_budget,
        kind=cfg.kind,
        exact_max=cfg.exact_max,
        target_recall=cfg.target_recall,
        source=cfg.features,
    )
    print(f"wrote {cfg.out}: {index.params.kind} index of {index.size:,} vectors in {index.meta['build_seconds']}s")
    return 0


COMMAND = Command(
    name="build-index",
    error_prefix="build_index",
    description=__doc__,
    add_arguments=add_arguments,
    run=lambda args: build_index_command(config_from_args(args)),
)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)
