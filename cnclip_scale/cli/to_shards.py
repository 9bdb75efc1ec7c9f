"""Seed TSV/JSONL or Chinese-CLIP LMDB -> WebDataset shards on disk or S3 (manifest, stats, rejects).

    cnclip to-shards --src ${DATAPATH}/datasets/MUGE --dst shards/MUGE --splits train,valid,test --workers 8
    python tools/to_shards.py --src .../MUGE/lmdb --dst s3://bucket/MUGE     (also: cnclip-to-shards)

Every input record is written or listed in rejects.jsonl; interrupted runs resume shard by shard. See docs/to_shards.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

from cnclip_scale.cli.command import Command
from cnclip_scale.errors import UserError
from cnclip_scale.shards.convert import Options, convert_split
from cnclip_scale.shards.inputs import InputError, detect_layout
from cnclip_scale.shards.resize import Resize
from cnclip_scale.shards.tables import TableOptions, check_table, table_path, table_splits
from cnclip_scale.shards.writer import Destination, DestinationError, describe_storage_error

SHOWN_REJECTS = 20  # per split on the console; all of them are in rejects.jsonl


@dataclass(frozen=True, kw_only=True)
class ToShardsConfig:
    src: str
    dst: str
    splits: list[str]
    options: Options
    strict: bool = False  # exit 1 after the summary if anything was rejected


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--src",
        required=True,
        help="seed-layout folder ({split}_imgs.tsv, {split}_texts.jsonl) or its lmdb/; or images as files: a folder "
        "with captions.{csv,tsv,parquet,jsonl} (or --captions), or such a table of paths / file:// / s3:// URLs",
    )
    p.add_argument("--dst", required=True, help="local folder or fsspec URL, e.g. s3://bucket/prefix")
    p.add_argument(
        "--splits",
        default=None,
        help="comma-separated (default: train,valid,test; for a captions table: the values of its split column)",
    )
    p.add_argument("--from", dest="source_kind", choices=("tsv", "lmdb", "table"), help="force the input layout")
    p.add_argument(
        "--captions",
        default=None,
        help="images as files: the table (CSV/TSV/Parquet/JSONL) of image path or URL + caption [+ split]; "
        "relative paths are under --src",
    )
    p.add_argument("--image-column", default="image", help="table column of image paths / URLs (default: image)")
    p.add_argument("--caption-column", default="caption", help="table column of captions (default: caption)")
    p.add_argument("--split-column", default="split", help="table column naming the split (default: split)")
    p.add_argument("--resize", type=int, default=None, metavar="N", help="shorter side to N px (never upscaled)")
    p.add_argument(
        "--resize-mode",
        choices=("keep_ratio", "center_crop", "border"),
        default="keep_ratio",
        help="with --resize: keep_ratio (default), center_crop (N x N), border (longer side N, padded to N x N)",
    )
    p.add_argument("--jpeg-quality", type=int, default=95, help="with --resize: JPEG quality (default: 95)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--samples-per-shard", type=int, default=Options.samples_per_shard)
    p.add_argument("--max-shard-bytes", type=int, default=Options.max_shard_bytes)
    p.add_argument(
        "--group",
        choices=("image", "pair"),
        default="image",
        help="image: one sample per image with all its captions; pair: one per (text, image)",
    )
    p.add_argument(
        "--verify",
        choices=("cheap", "full"),
        default="cheap",
        help="cheap: header + end marker (default); full: decode every image",
    )
    p.add_argument(
        "--storage-options",
        default=None,
        help='JSON for fsspec, e.g. \'{"endpoint_url": "http://127.0.0.1:8333", "key": "...", "secret": "..."}\'',
    )
    p.add_argument("--overwrite", action="store_true", help="delete the splits' existing output and start over")
    p.add_argument("--strict", action="store_true", help="exit 1 after the summary if anything was rejected")
    p.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> ToShardsConfig:
    """Counts that cannot work are refused before anything is read or written (0 samples per shard or a byte limit
    of 0 could never close a shard)."""
    for option in ("samples_per_shard", "max_shard_bytes", "workers"):
        value = getattr(args, option)
        if value < 1:
            raise UserError(f"--{option.replace('_', '-')}: must be at least 1, got {value}")
    table_opts = TableOptions(
        captions=args.captions,
        image_column=args.image_column,
        caption_column=args.caption_column,
        split_column=args.split_column,
    )
    if args.splits is None:  # a captions table holds its own splits (tables.py); the seed layout: the usual three
        try:
            table = table_path(args.src, table_opts, args.source_kind)
            args.splits = ",".join(table_splits(table, table_opts)) if table else "train,valid,test"
        except InputError as err:
            raise UserError(str(err)) from None
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if not splits:
        raise UserError(f"--splits: no split names in {args.splits!r}; e.g. --splits train,valid,test")
    try:
        storage_options = json.loads(args.storage_options) if args.storage_options else {}
    except json.JSONDecodeError as err:
        raise UserError(f"--storage-options is not JSON: {err}") from None
    resize = None
    if args.resize is not None:
        try:
            resize = Resize(size=args.resize, mode=args.resize_mode, jpeg_quality=args.jpeg_quality)
        except ValueError as err:
            raise UserError(f"--resize / --jpeg-quality: {err}") from None
    options = Options(
        group=args.group,
        samples_per_shard=args.samples_per_shard,
        max_shard_bytes=args.max_shard_bytes,
        verify_full=args.verify == "full",
        workers=args.workers,
        overwrite=args.overwrite,
        source_kind=args.source_kind,
        table=table_opts,
        resize=resize,
        storage_options=storage_options,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    return ToShardsConfig(src=args.src, dst=args.dst, splits=splits, options=options, strict=args.strict)


def to_shards(cfg: ToShardsConfig) -> int:
    """Convert every split, print each split's rejects and the summary table; the exit code."""
    manifests = {}
    try:
        table = table_path(cfg.src, cfg.options.table, cfg.options.source_kind)
        if table is not None:  # images as files (tables.py)
            check_table(table, cfg.options.table, cfg.splits)
        for split in cfg.splits if table is None else ():  # every input must exist before anything is written
            detect_layout(cfg.src, split, cfg.options.source_kind)
        dest = Destination(cfg.dst, cfg.options.storage_options)
        dest.check_writable()
        for split in cfg.splits:
            manifests[split] = m = convert_split(cfg.src, split, dest, cfg.options)
            _print_rejects(dest, split, m)
            _warn_if_empty(split, m)
    except (InputError, DestinationError) as err:  # the converter's own kinds of "the user can fix this"
        raise UserError(str(err)) from None
    except UserError:
        raise
    except KeyboardInterrupt:
        print("to_shards: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:  # storage failures mid-run and the like: one line, traceback on request
        if os.environ.get("CNCLIP_DEBUG"):
            raise
        print(
            f"to_shards: error: {describe_storage_error(err, cfg.dst)} (CNCLIP_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 2
    print(_summary(manifests))
    rejected = sum(row["rejected"] for m in manifests.values() for row in m["records"].values())
    print(
        f"every record accounted for: input = written + rejected in {len(manifests)} split(s); "
        f"{rejected} rejected (see {cfg.dst.rstrip('/')}/<split>/rejects.jsonl)"
    )
    return 1 if cfg.strict and rejected else 0


def _where(r: dict) -> str:
    return f"{r['source']}:{r['line']}" if "line" in r else f"{r['source']}[{r['key']}]"


def _reject_line(r: dict) -> str:
    who = (
        f"image {r['id'] if r['id'] is not None else '(no id)'}"
        if r["record"] == "image"
        else (f"text {r.get('text_id', '(no id)')}" + (f" -> image {r['image_id']}" if "image_id" in r else ""))
    )
    return f"  {_where(r)}: {who}: {r['reason']}" + (f" ({r['detail']})" if r.get("detail") else "")


def _summary(manifests: dict[str, dict]) -> str:
    rows = [f"{'split':<8}{'record':<8}{'input':>10}{'written':>10}{'rejected':>10}   shards      MB      s   MB/s"]
    for split, m in manifests.items():
        t = m["totals"]
        mb_per_s = t["bytes"] / 1e6 / max(m["seconds"], 1e-6)
        tail = f"   {t['shards']:>6} {t['bytes'] / 1e6:>7.1f} {m['seconds']:>6.1f} {mb_per_s:>6.0f}"
        for i, (kind, row) in enumerate(m["records"].items()):
            ok = "" if row["input"] == row["written"] + row["rejected"] else "  MISMATCH"
            rows.append(
                f"{split if i == 0 else '':<8}{kind:<8}{row['input']:>10}{row['written']:>10}"
                f"{row['rejected']:>10}{tail if i == 0 else ''}{ok}"
            )
        if t.get("texts_without_images"):
            rows.append(
                f"{'':<8}{t['texts_without_images']} written text(s) have no image_ids: queries without ground truth, "
                f"kept in {split}/{m['queries']['file']} (the evaluator predicts for them)"
            )
    return "\n".join(rows)


def _warn_if_empty(split: str, manifest: dict) -> None:
    """Zero shards is a valid result (nothing to write) but rarely what was meant: say it."""
    if manifest["totals"]["shards"]:
        return
    images, texts = manifest["records"]["images"]["input"], manifest["records"]["texts"]["input"]
    why = "the split is empty" if not images and not texts else "every image record was rejected"
    print(
        f"to_shards: warning: {split}: 0 shards written: {why} ({images} image records in "
        f"{manifest['source']['images']}, {texts} text records in {manifest['source']['texts']})",
        file=sys.stderr,
    )


def _print_rejects(dest: Destination, split: str, manifest: dict) -> None:
    total = sum(row["rejected"] for row in manifest["records"].values())
    if not total:
        return
    print(f"{split}: {total} rejected record(s):", file=sys.stderr)
    with dest.fs.open(dest.path(f"{split}/rejects.jsonl"), "rb") as f:
        for i, line in enumerate(f):
            if i == SHOWN_REJECTS:
                print(f"  ... {total - SHOWN_REJECTS} more in {split}/rejects.jsonl", file=sys.stderr)
                break
            print(_reject_line(json.loads(line)), file=sys.stderr)


COMMAND = Command(
    name="to-shards",
    error_prefix="to_shards: error",
    description=__doc__,
    add_arguments=add_arguments,
    run=lambda args: to_shards(config_from_args(args)),
)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)
