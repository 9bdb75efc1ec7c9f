"""Build one shard: stream its slice of the image records, validate, join captions, write the tar,
then its stats file (the success marker). Runs in worker processes; imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from cnclip_scale.data import seed_formats as sf
from cnclip_scale.data.image_check import check_image
from cnclip_scale.shards.samples import caption_json, sample_key
from cnclip_scale.shards.writer import Destination, TarShard, shard_name, stats_name


@dataclass
class ShardTask:
    split: str
    index: int
    fingerprint: str
    kind: str  # "tsv" | "lmdb"
    image_path: str
    image_label: str
    dest_url: str
    storage_options: dict
    group: str  # "image" | "pair"
    verify_full: bool
    lines: list = field(default_factory=list)  # tsv: (line number, offset, length) of its lines
    keys: list = field(default_factory=list)  # lmdb: its keys
    captions: dict = field(default_factory=dict)  # image_id -> [(text_id, text)]
    duplicates: dict = field(default_factory=dict)  # TSV line -> line that first named the id
    planned_samples: int = 0
    files: list = field(default_factory=list)  # table: (line, image reference) of its images
    resize: dict | None = None  # --resize: Resize.as_dict() (resize.py)


_progress = None  # (samples, bytes) shared counters, set in each worker by `init_progress`


def init_progress(samples, nbytes) -> None:
    global _progress
    _progress = (samples, nbytes)


def _report(samples: int, nbytes: int) -> None:
    if _progress is not None:
        for counter, amount in zip(_progress, (samples, nbytes)):
            with counter.get_lock():
                counter.value += amount


def _tsv_records(task: ShardTask) -> Iterator[tuple[dict, str | None, bytes | sf.BadRecord]]:
    for number, raw in sf.tsv_lines_at(task.image_path, task.lines):
        if number in task.duplicates:
            found = (
                sf.tsv_line_id(raw),
                sf.BadRecord("duplicate_image_id", f"id first named at line {task.duplicates[number]}"),
            )
        else:
            try:
                found = sf.read_tsv_image(raw)
            except sf.BadRecord as bad:
                found = sf.tsv_line_named_id(raw), bad  # the id even of a line without a TAB
        yield {"line": number}, *found


def _lmdb_records(task: ShardTask) -> Iterator[tuple[dict, str | None, bytes | sf.BadRecord]]:
    env = sf.open_lmdb(task.image_path)
    try:
        with env.begin(buffers=True) as txn:
            for key in task.keys:
                try:
                    found = key.decode("utf-8"), sf.decode_base64(bytes(txn.get(key)).strip())
                except UnicodeDecodeError:
                    found = None, sf.BadRecord("non_utf8", "LMDB key is not UTF-8")
                except sf.BadRecord as bad:
                    found = key.decode("utf-8"), bad
                yield {"key": key.decode("utf-8", "backslashreplace")}, *found
    finally:
        env.close()


def _records(task: ShardTask) -> Iterator[tuple[dict, str | None, bytes | sf.BadRecord]]:
    """(where, image_id, image bytes) per record; a BadRecord in place of the bytes when it is unusable."""
    if task.kind == "table":
        from cnclip_scale.shards.tables import table_records

        return table_records(task)
    return _tsv_records(task) if task.kind == "tsv" else _lmdb_records(task)


def _prepare(task: ShardTask, image_id, data) -> tuple[bytes, str, list]:
    """(image bytes, extension, captions) for one record, or BadRecord saying why it is unusable."""
    if isinstance(data, sf.BadRecord):
        raise data
    ext = check_image(data, full=task.verify_full)
    if task.resize:
        from cnclip_scale.shards.resize import Resize, resize_image

        data, ext = resize_image(data, ext, Resize(**task.resize))
    texts = task.captions.get(image_id, [])
    if task.group == "pair" and not texts:
        raise sf.BadRecord("no_texts", "no text names this image (group=pair stores pairs only)")
    return data, ext, texts


def _write_samples(tar: TarShard, group: str, image_id: str, data: bytes, ext: str, texts: list) -> int:
    """One sample per image (all captions in its JSON) or one per (image, text) pair; returns the count."""
    if group == "image":
        key = sample_key(image_id)
        tar.add(f"{key}.{ext}", data)
        tar.add(f"{key}.json", caption_json(image_id, texts))
        if texts:  # KEY.txt (first caption) for open_clip & co., which drop a sample without one
            tar.add(f"{key}.txt", texts[0][1].encode("utf-8"))
        return 1
    for text in texts:
        key = sample_key(image_id, text[0])
        tar.add(f"{key}.{ext}", data)
        tar.add(f"{key}.json", caption_json(image_id, [text]))
        tar.add(f"{key}.txt", text[1].encode("utf-8"))
    return len(texts)


def build_shard(task: ShardTask) -> dict:
    """Write shard `task.index` and then its stats; return the stats (what a rerun reads back).

    A slice with no valid image writes no tar (no empty shard for loaders to trip on); its stats
    file, with `"shard": null`, still marks it done and keeps its rejects.
    """
    began = time.time()
    dest = Destination(task.dest_url, task.storage_options)
    name = shard_name(task.split, task.index)
    stats = {
        "shard": name,
        "index": task.index,
        "fingerprint": task.fingerprint,
        "samples": 0,
        "images": 0,
        "pairs": 0,
        "images_without_texts": 0,
        "input_images": 0,
        "bytes": 0,
        "sha256": None,
        "image_ids": [],
        "rejects": [],
    }
    with contextlib.ExitStack() as publish:
        tar, unreported, reported_samples = None, 0, 0
        for where, image_id, payload in _records(task):
            stats["input_images"] += 1
            try:
                data, ext, texts = _prepare(task, image_id, payload)
            except sf.BadRecord as bad:
                stats["rejects"].append(
                    {
                        "record": "image",
                        "source": task.image_label,
                        **where,
                        "id": image_id,
                        "reason": bad.reason,
                        "detail": bad.detail,
                    }
                )
                continue
            if tar is None:  # opened on the first valid image; published when the stack closes cleanly
                tar = TarShard(publish.enter_context(dest.open_atomic(f"{task.split}/{name}")))
            stats["samples"] += _write_samples(tar, task.group, image_id, data, ext, texts)
            stats["images"] += 1
            stats["pairs"] += len(texts)
            stats["images_without_texts"] += not texts
            stats["image_ids"].append(image_id)
            unreported += len(data)
            if stats["images"] % 32 == 0:  # progress for the bar, a few times per MB
                _report(stats["samples"] - reported_samples, unreported)
                unreported, reported_samples = 0, stats["samples"]
        if tar is None:
            stats["shard"] = None
        else:
            stats["sha256"], stats["bytes"] = tar.finish(), tar.size
    _report(stats["samples"] - reported_samples, unreported)
    stats["seconds"] = round(time.time() - began, 3)
    stats["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    dest.write_json(f"{task.split}/{stats_name(task.split, task.index)}", stats)
    return stats
