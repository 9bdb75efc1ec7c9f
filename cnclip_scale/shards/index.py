"""``cnclip inspect DIR --index``: a manifest for a folder of WebDataset tars that another tool wrote.

img2dataset, open_clip's scripts or a hand-rolled ``webdataset.TarWriter`` leave tars without our manifest; the
loaders plan epochs from sample counts, so such a folder needs counts before training (img2dataset's ``_stats.json``
and open_clip's ``sizes.json`` are read directly, see ``data/sources.py``; this covers everything else). Each tar is
scanned once (member headers only: data is skipped by seeking), in parallel over shards, and its count is saved at
once under ``DIR/.cnclip-index/NAME.json``: a killed run continues with the shards it had not finished (a count is
reused only while its tar has the same size). The manifest (``format: cnclip_scale.index/1``: ``shards`` with
``shard``, ``samples``, ``bytes``; ``totals``) is written last, then the per-shard files are removed.

A sample is what the loaders count: a run of consecutive members with one key (the name up to the first ``.`` after
the last ``/``), keys starting with ``__`` and non-file members skipped — as ``data/decode.read_samples`` reads them.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor

from cnclip_scale.shards.writer import Destination, DestinationError

INDEX_FORMAT = "cnclip_scale.index/1"
PROGRESS = ".cnclip-index"
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext


def count_samples(fileobj) -> int:
    """Samples in one tar (see the module docstring); reads headers only on a seekable file."""
    seekable = getattr(fileobj, "seekable", lambda: False)()
    samples, last = 0, None
    with tarfile.open(fileobj=fileobj, mode="r:" if seekable else "r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            match = _KEY.match(info.name)
            if match is None or match.group(1).rsplit("/", 1)[-1].startswith("__"):
                continue
            if match.group(1) != last:
                samples, last = samples + 1, match.group(1)
    return samples


def _scan(url: str, storage_options: dict, name: str, size: int) -> dict:
    """Count one shard and save its progress record; runs in a worker process."""
    dest = Destination(url, storage_options)
    try:
        with dest.fs.open(dest.path(name), "rb") as f:
            samples = count_samples(f)
    except tarfile.TarError as err:  # the shards counted so far are kept: fix or move this one and rerun
        raise DestinationError(f"{dest.url}/{name}: not a readable tar ({type(err).__name__}: {err})") from None
    record = {"shard": name, "samples": samples, "bytes": size}
    dest.write_json(f"{PROGRESS}/{name}.json", record)
    return record


def index_folder(url: str, storage_options: dict | None = None, workers: int = 4, log=print) -> dict:
    """Write ``URL/manifest.json`` for the tars directly in ``URL``; return it. Refuses a folder whose manifest
    to_shards wrote (its counts are exact already)."""
    began = time.time()
    dest = Destination(url, storage_options)
    listing = dest.list_sizes("")
    if "manifest.json" in listing:
        existing = dest.read_json("manifest.json")
        if not (isinstance(existing, dict) and existing.get("format") == INDEX_FORMAT):
            raise DestinationError(
                f"{dest.url}/manifest.json exists and was not written by --index (to_shards' manifests are exact "
                "already); move it away to index the tars"
            )
    tars = sorted(n for n in listing if n.endswith(".tar"))
    if not tars:
        raise DestinationError(f"no .tar shards in {dest.url}")
    done = {}
    for name in dest.list_sizes(PROGRESS):
        record = dest.read_json(f"{PROGRESS}/{name}")
        if isinstance(record, dict) and listing.get(record.get("shard")) == record.get("bytes"):
            done[record["shard"]] = record  # a tar replaced since (other size) is counted again
    todo = [n for n in tars if n not in done]
    log(f"indexing {dest.url}: {len(tars)} shards, {len(done)} already counted by an earlier run, {len(todo)} to scan")
    if workers > 1 and len(todo) > 1:
        # fork starts fast, but a forked child would inherit an S3 session's event loop: spawn for remote folders
        context = mp.get_context("fork" if dest.is_local else "spawn")
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context) as pool:
            futures = [pool.submit(_scan, dest.url, dest.storage_options, n, listing[n]) for n in todo]
            for future in futures:
                record = future.result()
                done[record["shard"]] = record
    else:
        for name in todo:
            done[name] = _scan(dest.url, dest.storage_options, name, listing[name])
    shards = [done[n] for n in tars]
    manifest = {
        "format": INDEX_FORMAT,
        "indexed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shards": shards,
        "totals": {
            "shards": len(shards),
            "samples": sum(s["samples"] for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
        },
        "resumed_shards": len(tars) - len(todo),
        "seconds": round(time.time() - began, 3),
    }
    dest.write_json("manifest.json", manifest)
    leftovers = [f"{PROGRESS}/{n}" for n in dest.list_sizes(PROGRESS)]
    dest.remove(leftovers)
    if dest.is_local:
        try:
            dest.fs.rmdir(dest.path(PROGRESS))
        except OSError:
            pass
    t = manifest["totals"]
    log(f"  {t['shards']} shards, {t['samples']} samples, {t['bytes'] / 1e6:.1f} MB -> {dest.url}/manifest.json")
    return manifest
