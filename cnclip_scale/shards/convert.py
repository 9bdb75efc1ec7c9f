"""The converter: one split at a time, index the input, plan shards, build the missing ones in worker
processes, then account for every record and write rejects.jsonl and manifest.json.

Shards are planned from the input index alone (contiguous runs of image records, closed by sample
count or estimated bytes), so a shard's contents never depend on the number of workers, and a
rerun knows which shards a previous run finished: those whose stats file carries the same
fingerprint (source + options + slice).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

from tqdm import tqdm

from cnclip_scale.shards.build import ShardTask, build_shard, init_progress
from cnclip_scale.shards.inputs import SplitSource, load_split
from cnclip_scale.shards.resize import Resize
from cnclip_scale.shards.tables import TableOptions, load_table_split, table_path
from cnclip_scale.shards.writer import (
    TMP_MARK,
    Destination,
    DestinationError,
    shard_name,
    stats_name,
)

FORMAT = "cnclip_scale.shards/1"
# Written into a split before its first shard is built and removed after its manifest: a tar whose stats file
# an interruption kept from being written is this run's only while the marker names the same plan.
PLAN_MARK = ".to_shards-plan.json"
SHOWN_FOREIGN = 6
SIZES = "sizes.json"  # open_clip's per-split sample counts ({"train-000000.tar": N, ...}), written before the manifest
# Texts with `"image_ids": []` (queries without ground truth: MUGE's test set, a leaderboard submission, a query log)
# go to this sidecar, one seed-format line each, listed in the manifest under "queries". Not text-only samples in the
# tars: every tar sample stays an image, so the training loader, epoch sizes, sizes.json and foreign readers
# (open_clip wants an image beside each KEY.txt) see nothing new, while the evaluator reads the file as extra queries.
QUERIES = "queries.jsonl"


Group = Literal["image", "pair"]
SourceKind = Literal["tsv", "lmdb", "table"]


@dataclass(kw_only=True)
class Options:
    group: Group = "image"  # "image": one sample per image; "pair": one per (text, image)
    samples_per_shard: int = 10_000
    max_shard_bytes: int = 256 << 20  # estimated from the base64 length before writing
    verify_full: bool = False  # decode every image instead of header + end-marker checks
    workers: int = 1
    overwrite: bool = False
    source_kind: SourceKind | None = None  # force the input layout
    table: TableOptions = field(default_factory=TableOptions)  # images as files: the captions table (tables.py)
    resize: Resize | None = None  # --resize: images made small at conversion (resize.py); None keeps them as is
    storage_options: dict = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self):
        # Checked here, not where the value is used: any other group would be written as "image" shards under a
        # manifest naming that group, which readers then trust.
        for name, kind, value in (("group", Group, self.group), ("source_kind", SourceKind, self.source_kind)):
            if value is not None and value not in get_args(kind):
                raise ValueError(f"Options.{name}: {value!r} is not one of {', '.join(get_args(kind))}")


def _captions(source: SplitSource) -> dict[str, list]:
    by_image: dict[str, list] = {}
    for text in source.texts:
        for image_id, _ in text.links:
            by_image.setdefault(image_id, []).append((text.text_id, text.text))
    return by_image


def _duplicates(source: SplitSource) -> dict[int, int]:
    """{line: first line} for TSV lines whose id an earlier line already named (the first one owns it)."""
    first, duplicates = {}, {}
    for slot in source.images:
        if slot.image_id is not None and slot.line:
            if first.setdefault(slot.image_id, slot.line) != slot.line:
                duplicates[slot.line] = first[slot.image_id]
    return duplicates


def _plan(source: SplitSource, captions: dict, opts: Options) -> list[list]:
    """Contiguous groups of image slots, each closed before it passes either shard limit."""
    groups, current, samples, nbytes = [], [], 0, 0
    for slot in source.images:
        copies = len(captions.get(slot.image_id, ())) if opts.group == "pair" else 1
        size = (slot.est_bytes + 2560) * copies  # + tar headers, the caption JSON and .txt
        if current and (samples + copies > opts.samples_per_shard or nbytes + size > opts.max_shard_bytes):
            groups.append(current)
            current, samples, nbytes = [], 0, 0
        current.append(slot)
        samples, nbytes = samples + copies, nbytes + size
    if current:
        groups.append(current)
    return groups


def _tasks(source: SplitSource, split: str, dst: str, opts: Options) -> list[ShardTask]:
    captions, duplicates = _captions(source), _duplicates(source)
    groups = _plan(source, captions, opts)
    tasks = []
    for index, group in enumerate(groups):
        identity = [
            FORMAT,
            source.fingerprint,
            split,
            opts.group,
            opts.verify_full,
            opts.samples_per_shard,
            opts.max_shard_bytes,
            index,
            group[0].where,
            group[-1].where,
            len(group),
            *([opts.resize.as_dict()] if opts.resize else []),  # absent without --resize: older plans stay valid
        ]
        task = ShardTask(
            split,
            index,
            hashlib.sha256(json.dumps(identity).encode()).hexdigest(),
            source.kind,
            source.image_path,
            source.image_label,
            dst,
            opts.storage_options,
            opts.group,
            opts.verify_full,
        )
        task.captions = {s.image_id: captions[s.image_id] for s in group if s.image_id in captions}
        task.planned_samples = sum(len(task.captions.get(s.image_id, ())) if opts.group == "pair" else 1 for s in group)
        if source.kind == "tsv":
            task.lines = [(s.line, s.offset, s.length) for s in group]
            task.duplicates = {s.line: duplicates[s.line] for s in group if s.line in duplicates}
        elif source.kind == "table":
            task.files = [(s.line, s.ref) for s in group]
        else:
            task.keys = [s.key for s in group]
        task.resize = opts.resize.as_dict() if opts.resize else None
        tasks.append(task)
    return tasks


def _finished(dest: Destination, split: str, tasks: list[ShardTask], listing: dict) -> dict[int, dict]:
    """Stats of shards a previous run completed for exactly this plan (their tar present, same size)."""
    done = {}
    for task in tasks:
        if stats_name(split, task.index) not in listing:
            continue
        stats = dest.read_json(f"{split}/{stats_name(split, task.index)}")
        if not stats or stats.get("fingerprint") != task.fingerprint:
            continue
        if stats["shard"] is None or listing.get(stats["shard"]) == stats["bytes"]:
            done[task.index] = stats
    return done


class Workers:
    """The processes a split is converted in (none for 1 worker), with shared progress counters."""

    def __init__(self, count: int, fork: bool = False):
        # fork starts in milliseconds (spawn re-imports everything: ~0.3 CPU s per worker), but a forked
        # child would inherit the parent's S3 event loop and sessions: fork for local destinations only.
        ctx = mp.get_context("fork" if fork else "spawn")
        self.samples, self.nbytes = ctx.Value("q", 0), ctx.Value("q", 0)
        self.pool = (
            ctx.Pool(count, initializer=init_progress, initargs=(self.samples, self.nbytes)) if count > 1 else None
        )
        if self.pool is None:
            init_progress(self.samples, self.nbytes)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def build(self, tasks: list[ShardTask], total: int, initial: int, label: str, show: bool) -> list[dict]:
        """Build `tasks`, showing a samples/s + MB/s bar; return their stats."""
        self.samples.value = self.nbytes.value = 0
        bar = tqdm(total=total, initial=initial, unit="sample", desc=label, disable=not show, dynamic_ncols=True)
        stop, began = threading.Event(), time.time()

        def refresh():
            while not stop.wait(0.25):
                bar.set_postfix_str(
                    f"{self.nbytes.value / 1e6 / max(time.time() - began, 1e-6):.0f} MB/s", refresh=False
                )
                bar.update(initial + self.samples.value - bar.n)  # update(), not n=: it drives the rate

        ticker = threading.Thread(target=refresh, daemon=True)
        ticker.start()
        try:
            if self.pool is None:
                return [build_shard(task) for task in tasks]
            return list(self.pool.imap_unordered(build_shard, tasks))
        finally:
            stop.set()
            ticker.join()
            bar.update(initial + self.samples.value - bar.n)
            bar.close()


def _position(reject: dict):
    key = reject.get("key", "")
    return (reject["source"], reject.get("line", 0), (0, int(key)) if key.isdigit() else (1, key))


def _account(source: SplitSource, stats: list[dict]) -> tuple[dict, list[dict]]:
    """Per record kind: input = written + rejected; plus every rejected record, in source order."""
    written_ids = {i for s in stats for i in s["image_ids"]}
    known_ids = {slot.image_id for slot in source.images if slot.image_id is not None}
    image_rejects = [r for s in stats for r in s["rejects"]]
    late_rejects, texts_written, pairs_written = [], 0, 0
    for text in source.texts:
        if not text.links:  # a query without ground truth: written to QUERIES, not a reject
            texts_written += 1
            continue
        alive = 0
        for image_id, where in text.links:
            if image_id in written_ids:
                alive += 1
                continue
            reason = "image_rejected" if image_id in known_ids else "unknown_image_id"
            late_rejects.append(
                {
                    "record": "pair",
                    "source": source.text_label,
                    **where,
                    "text_id": text.text_id,
                    "image_id": image_id,
                    "reason": reason,
                    "detail": f"image {image_id} "
                    + ("was rejected" if image_id in known_ids else f"is not in {source.image_label}"),
                }
            )
        if alive:
            texts_written, pairs_written = texts_written + 1, pairs_written + alive
            continue
        any_known = any(i in known_ids for i, _ in text.links)
        late_rejects.append(
            {
                "record": "text",
                "source": source.text_label,
                **text.where,
                "text_id": text.text_id,
                "reason": "images_rejected" if any_known else "unknown_image_ids",
                "detail": f"none of its {len(text.links)} image(s) was written",
            }
        )
    text_side = sorted(source.text_rejects + late_rejects, key=_position)
    count = Counter(r["record"] for r in image_rejects + text_side)
    totals = {
        "images": {"input": len(source.images), "written": len(written_ids), "rejected": count["image"]},
        "texts": {"input": source.texts_input, "written": texts_written, "rejected": count["text"]},
        "pairs": {"input": source.pairs_input, "written": pairs_written, "rejected": count["pair"]},
    }
    for kind, row in totals.items():
        if row["input"] != row["written"] + row["rejected"]:  # a bug, never bad input: refuse to hide it
            raise AssertionError(
                f"{kind}: input {row['input']} != written {row['written']} + rejected {row['rejected']}"
            )
    if pairs_written != sum(s["pairs"] for s in stats):
        raise AssertionError("pairs written by shards disagree with pairs linked from texts")
    return totals, image_rejects + text_side


def _options(opts: Options) -> dict:
    """The options that shape the shards (recorded in the manifest)."""
    shaping = {k: v for k, v in asdict(opts).items() if k in ("samples_per_shard", "max_shard_bytes", "verify_full")}
    if opts.resize:  # recorded only when set, so manifests of earlier conversions still match theirs
        shaping["resize"] = opts.resize.as_dict()
    return shaping


def _manifest(
    split: str, source: SplitSource, opts: Options, stats: list[dict], totals: dict, rejects: list[dict], seconds: float
) -> dict:
    shards = [
        {k: s[k] for k in ("shard", "samples", "images", "pairs", "bytes", "sha256")}
        for s in stats
        if s["shard"] is not None
    ]
    by_reason: dict = {}
    for r in rejects:
        by_reason.setdefault(r["record"] + "s", Counter())[r["reason"]] += 1
    return {
        "format": FORMAT,
        "split": split,
        "group": opts.group,
        "source": {
            "kind": source.kind,
            "images": source.image_label,
            "texts": source.text_label,
            "fingerprint": source.fingerprint,
        },
        "options": _options(opts),
        "shards": shards,
        "totals": {
            "shards": len(shards),
            "samples": sum(s["samples"] for s in shards),
            "images": totals["images"]["written"],
            "texts": totals["texts"]["written"] - sum(not t.links for t in source.texts),  # in the shards
            "pairs": totals["pairs"]["written"],
            "bytes": sum(s["bytes"] for s in shards),
            "images_without_texts": sum(s["images_without_texts"] for s in stats),
            # in QUERIES, not in the shards: records.texts.written = texts + texts_without_images
            "texts_without_images": sum(not t.links for t in source.texts),
        },
        "records": totals,
        "rejects": {kind: dict(sorted(c.items())) for kind, c in sorted(by_reason.items())},
        "seconds": round(seconds, 3),
    }


def _shard_file(split: str, name: str) -> bool:
    return re.fullmatch(rf"{re.escape(split)}-\d{{6}}\.(tar|stats\.json)", name) is not None


def _ours(split: str, name: str) -> bool:
    return (
        _shard_file(split, name)
        or name in ("manifest.json", "rejects.jsonl", SIZES, QUERIES, PLAN_MARK)
        or TMP_MARK in name
    )


def _plan_fingerprint(tasks: list[ShardTask]) -> str:
    return hashlib.sha256("".join(t.fingerprint for t in tasks).encode()).hexdigest()


def _manifest_is_ours(manifest, split: str, source: SplitSource, opts: Options) -> bool:
    return (
        isinstance(manifest, dict)
        and manifest.get("format") == FORMAT
        and manifest.get("split") == split
        and manifest.get("group") == opts.group
        and isinstance(manifest.get("source"), dict)
        and manifest["source"].get("fingerprint") == source.fingerprint
        and manifest.get("options") == _options(opts)
    )


def _foreign(
    dest: Destination, split: str, tasks: list[ShardTask], listing: dict, source: SplitSource, opts: Options
) -> list[str]:
    """Files this conversion would replace or delete but did not write: shard-named files whose stats carry
    another fingerprint (another tool, input or options), tars without such stats (unless an interrupted run of
    this very plan left them), and a manifest / rejects file of another conversion. Cut-short stats files count
    as damage to this run's output (they are rebuilt), as the restart tests expect."""
    marker = dest.read_json(f"{split}/{PLAN_MARK}") if PLAN_MARK in listing else None
    resuming = isinstance(marker, dict) and marker.get("plan") == _plan_fingerprint(tasks)
    planned = {stats_name(split, t.index): t.fingerprint for t in tasks}
    planned_tars = {shard_name(split, t.index) for t in tasks}
    foreign, ours = [], set()
    for name in sorted(n for n in listing if _shard_file(split, n) and n.endswith(".stats.json")):
        stats = dest.read_json(f"{split}/{name}")
        if name in planned and (
            stats is None or (isinstance(stats, dict) and stats.get("fingerprint") == planned[name])
        ):
            ours.add(name)
        else:
            foreign.append(name)
    for name in sorted(n for n in listing if _shard_file(split, n) and n.endswith(".tar")):
        stats = name[: -len(".tar")] + ".stats.json"
        if stats not in ours and not (resuming and name in planned_tars and stats not in listing):
            foreign.append(name)
    manifest_ours = "manifest.json" in listing and _manifest_is_ours(
        dest.read_json(f"{split}/manifest.json"), split, source, opts
    )
    if "manifest.json" in listing and not manifest_ours:
        foreign.append("manifest.json")
    foreign += [n for n in ("rejects.jsonl", SIZES, QUERIES) if n in listing and not (manifest_ours or resuming)]
    return foreign


def convert_split(src: str, split: str, dest: Destination, opts: Options) -> dict:
    """Convert one split; return its manifest (also written to DST/{split}/manifest.json)."""
    began = time.time()
    with Workers(opts.workers, fork=dest.is_local) as workers:
        table = table_path(src, opts.table, opts.source_kind)
        source = (
            load_split(src, split, opts.source_kind, workers.pool, opts.workers)
            if table is None
            else load_table_split(src, split, opts.table, table)
        )
        tasks = _tasks(source, split, dest.url, opts)
        listing = dest.list_sizes(split)
        if opts.overwrite:  # only what this tool writes: the folder may hold the user's own files
            dest.remove([f"{split}/{n}" for n in listing if _ours(split, n)])
            listing = {n: size for n, size in listing.items() if not _ours(split, n)}
        foreign = _foreign(dest, split, tasks, listing, source, opts)
        if foreign:  # checked before anything in the split is written, replaced or removed
            more = f" (and {len(foreign) - SHOWN_FOREIGN} more)" if len(foreign) > SHOWN_FOREIGN else ""
            raise DestinationError(
                f"{dest.url}/{split} holds {len(foreign)} file(s) this conversion did not write (another tool's, "
                f"or another input or options): {', '.join(foreign[:SHOWN_FOREIGN])}{more}; move them away, or "
                f"pass --overwrite to replace them"
            )
        done = _finished(dest, split, tasks, listing)
        todo = [t for t in tasks if t.index not in done]
        if todo:  # the split is changing: its old manifest must not describe the new shards
            dest.remove(
                [
                    f"{split}/{n}"
                    for n in listing
                    if n in ("manifest.json", "rejects.jsonl", SIZES, QUERIES) or TMP_MARK in n
                ]
            )
            dest.write_json(f"{split}/{PLAN_MARK}", {"plan": _plan_fingerprint(tasks)})
        built = workers.build(
            todo, sum(t.planned_samples for t in tasks), sum(s["samples"] for s in done.values()), split, opts.progress
        )
    stats = sorted([*done.values(), *built], key=lambda s: s["index"])
    totals, rejects = _account(source, stats)
    keep = {stats_name(split, s["index"]) for s in stats} | {s["shard"] for s in stats if s["shard"]}
    dest.remove([f"{split}/{n}" for n in dest.list_sizes(split) if _shard_file(split, n) and n not in keep])
    dest.write_lines(f"{split}/rejects.jsonl", rejects)
    manifest = _manifest(split, source, opts, stats, totals, rejects, time.time() - began)
    manifest["resumed_shards"] = len(done)
    queries = [{"text_id": t.text_id, "text": t.text, "image_ids": []} for t in source.texts if not t.links]
    if queries:
        body = b"".join((json.dumps(q, ensure_ascii=False) + "\n").encode("utf-8") for q in queries)
        dest.write_lines(f"{split}/{QUERIES}", queries)  # the same bytes as `body`
        manifest["queries"] = {
            "file": QUERIES,
            "texts": len(queries),
            "bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
    elif QUERIES in dest.list_sizes(split):  # left by an earlier run of this plan (same input: cannot differ)
        dest.remove([f"{split}/{QUERIES}"])
    dest.write_json(f"{split}/{SIZES}", {s["shard"]: s["samples"] for s in manifest["shards"]})
    dest.write_json(f"{split}/manifest.json", manifest)
    if PLAN_MARK in dest.list_sizes(split):
        dest.remove([f"{split}/{PLAN_MARK}"])
    return manifest
