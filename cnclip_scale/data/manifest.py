"""Checks on a split's `manifest.json` and a shard's `.stats.json` as they are loaded.

Epochs are planned from these counts before a byte of a shard is read, so a wrong one (a negative or
fractional sample count, a missing `shards` list) must stop the run at start with one line naming the
file and the field — not hang a trainer or end in a KeyError traceback. Imports nothing heavy: the
converter's `inspect_shards` uses it too.
"""

from __future__ import annotations


class ManifestError(ValueError):
    """A manifest or stats file does not have the shape the loaders rely on; one line, file and field."""


def _count(value) -> bool:
    # bool is an int subclass; `true` is not a count.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _need(obj: dict, key: str, where: str, path: str, kind: str):
    if key not in obj:
        raise ManifestError(f"{where}: field {path}{key} is missing")
    value = obj[key]
    if kind == "count" and not _count(value):
        raise ManifestError(f"{where}: field {path}{key} must be a non-negative integer, got {value!r}")
    if kind == "name" and (not isinstance(value, str) or not value):
        raise ManifestError(f"{where}: field {path}{key} must be a non-empty string, got {value!r}")
    if kind == "list" and not isinstance(value, list):
        raise ManifestError(f"{where}: field {path}{key} must be a list, got {type(value).__name__}")
    if kind == "object" and not isinstance(value, dict):
        raise ManifestError(f"{where}: field {path}{key} must be an object, got {type(value).__name__}")
    return value


def _object(doc, where: str) -> dict:
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    return doc


def check_manifest(doc, where: str, full: bool = False) -> dict:
    """Raise ManifestError unless `doc` has what the loaders read (`shards[].shard`, `shards[].samples`, an
    optional `group`); with `full`, also what `inspect_shards` reads (totals, records, byte counts)."""
    doc = _object(doc, where)
    for k, entry in enumerate(_need(doc, "shards", where, "", "list")):
        if not isinstance(entry, dict):
            raise ManifestError(f"{where}: field shards[{k}] must be an object, got {type(entry).__name__}")
        _need(entry, "shard", where, f"shards[{k}].", "name")
        _need(entry, "samples", where, f"shards[{k}].", "count")
        if full:
            _need(entry, "bytes", where, f"shards[{k}].", "count")
    group = doc.get("group")
    if group is not None and group not in ("image", "pair"):
        raise ManifestError(f'{where}: field group must be "image" or "pair", got {group!r}')
    if full:
        _need(doc, "group", where, "", "name")
        totals = _need(doc, "totals", where, "", "object")
        for key in ("shards", "samples", "images", "texts", "pairs", "bytes"):
            _need(totals, key, where, "totals.", "count")
        for kind, row in _need(doc, "records", where, "", "object").items():
            if not isinstance(row, dict):
                raise ManifestError(f"{where}: field records.{kind} must be an object, got {type(row).__name__}")
            for key in ("input", "written", "rejected"):
                _need(row, key, where, f"records.{kind}.", "count")
        if not isinstance(doc.get("rejects", {}), dict):
            raise ManifestError(f"{where}: field rejects must be an object")
    return doc


def check_stats(doc, where: str, field: str = "samples") -> dict:
    """Raise ManifestError unless a `.stats.json` has a usable `samples` count (what the loaders read); img2dataset's
    `_stats.json` is checked with ``field="successes"``."""
    doc = _object(doc, where)
    _need(doc, field, where, "", "count")
    return doc
