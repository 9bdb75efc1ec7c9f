"""Counts, sha256 check, sample preview and contact sheet for a split written by to-shards.

    cnclip inspect shards/MUGE/train --verify --show 5 --montage sheet.png
    cnclip inspect /data/laion/00000-99 --index --workers 8     # any folder of tars: count once, write a manifest
    python tools/inspect_shards.py s3://bucket/MUGE/train/manifest.json --storage-options '{"endpoint_url": ...}'

Exit code 1 when a shard is missing or differs from the manifest, 2 when the split cannot be read.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

from cnclip_scale.cli.command import Command
from cnclip_scale.data.manifest import ManifestError
from cnclip_scale.errors import UserError
from cnclip_scale.shards.inspect import ShardContentError, inspect_split, open_split
from cnclip_scale.shards.writer import DestinationError, describe_storage_error


@dataclass(frozen=True, kw_only=True)
class InspectConfig:
    url: str  # the split folder (a manifest.json URL is accepted and trimmed to it)
    verify: bool = False
    show: int = 0
    montage: str | None = None
    storage_options: dict = field(default_factory=dict)
    index: bool = False  # scan the tars of a folder another tool wrote and write its manifest.json
    workers: int = 4  # processes scanning shards with ``index``


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="split folder (local or s3://...) or its manifest.json")
    p.add_argument("--verify", action="store_true", help="re-hash every shard and count its samples")
    p.add_argument("--show", type=int, default=0, metavar="N", help="decode N samples and print id and captions")
    p.add_argument("--montage", metavar="OUT.png", help="write a contact sheet of the shown samples (16 if --show 0)")
    p.add_argument("--storage-options", default=None, help="JSON for fsspec (endpoint_url, key, secret)")
    p.add_argument(
        "--index",
        action="store_true",
        help="count the samples of every tar in a folder another tool wrote (img2dataset, ...) and write its "
        "manifest.json, so exact epochs and resume work on it; a killed run continues where it stopped",
    )
    p.add_argument("--workers", type=int, default=4, help="processes scanning shards with --index (default 4)")


def config_from_args(args: argparse.Namespace) -> InspectConfig:
    try:
        storage_options = json.loads(args.storage_options) if args.storage_options else {}
    except json.JSONDecodeError as err:
        raise UserError(f"--storage-options is not JSON: {err}") from None
    return InspectConfig(
        url=args.url.removesuffix("manifest.json"),
        verify=args.verify,
        show=args.show,
        montage=args.montage,
        storage_options=storage_options,
        index=args.index,
        workers=args.workers,
    )


def inspect_shards(cfg: InspectConfig) -> int:
    if cfg.workers < 1:
        raise UserError(f"--workers: must be at least 1, got {cfg.workers}")
    try:
        if cfg.index:
            from cnclip_scale.shards.index import index_folder

            index_folder(cfg.url, cfg.storage_options, cfg.workers)
            return 0
        dest, split, manifest = open_split(cfg.url, cfg.storage_options)
        return inspect_split(dest, split, manifest, verify=cfg.verify, show=cfg.show, montage_path=cfg.montage)
    except (DestinationError, ManifestError, ShardContentError) as err:
        raise UserError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - unreachable storage, wrong secret: one line naming what to fix
        raise UserError(describe_storage_error(err, cfg.url, "read")) from None


COMMAND = Command(
    name="inspect",
    error_prefix="inspect_shards: error",
    description=__doc__,
    add_arguments=add_arguments,
    run=lambda args: inspect_shards(config_from_args(args)),
)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)
