"""Where shards are: turn source strings into shard URLs with sample counts, and open them anywhere.

A *source* is one shard set, written as any of
  - a manifest URL:   ``s3://bucket/data/train/manifest.json`` (what ``tools/to_shards.py`` writes)
  - a folder:         ``/data/shards/train`` (its ``manifest.json``, else its ``sizes.json`` (open_clip), else the
                      stats file beside each tar: our ``.stats.json`` or img2dataset's ``_stats.json``)
  - a brace pattern:  ``s3://bucket/data/train/train-{000000..000127}.tar`` (braceexpand; counts as for a folder)
on local disk or any fsspec filesystem. Several sources join with ``::`` (open_clip's syntax) and mix with
weights given as ``"1::2"`` or ``[1, 2]``: a source's weight multiplies how often each of its shards is
drawn in resampled epochs (open_clip's upsampling factors); exact epochs read every shard once.

Sample counts are needed before reading (epochs are planned from them), so a shard with no known count
is an error at start, as is a shard that does not exist. ``storage_options`` (e.g. ``{"endpoint_url":
..., "key": ..., "secret": ...}``) go to fsspec; without them s3fs reads the usual AWS environment
variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...).

Importing this module also registers an fsspec opener for webdataset's ``gopen`` (``s3://``, ``gs://``,
...), so plain ``webdataset.WebDataset("s3://...")`` works in any process that imports it — the data
pipeline's DataLoader workers do, because the dataset they unpickle lives in ``pipeline.py``.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field

import braceexpand
import fsspec
from webdataset.gopen import gopen, gopen_schemes

from cnclip_scale.data.manifest import ManifestError, check_manifest, check_stats
from cnclip_scale.errors import UserError

# Schemes webdataset 1.0.2 cannot open itself; `file`, `pipe` and `http(s)` keep webdataset's handlers.
FSSPEC_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "hf", "memory")


def _gopen_fsspec(url, mode="rb", bufsize=8192, **kw):
    return fsspec.open(url, mode).open()


for _scheme in FSSPEC_SCHEMES:
    gopen_schemes.setdefault(_scheme, _gopen_fsspec)


class SourceError(ValueError):
    """A source cannot be used (missing shard or manifest, unknown sample count); one clear line."""


class DataError(UserError, RuntimeError):
    """The data cannot feed training at all (e.g. no shard yields a usable sample); one clear line. A UserError:
    the commands print it as one line with exit code 2 (cnclip_scale/errors.py). (SourceError stays a plain
    ValueError: the commands catch it before any rank starts and prefix the option that named the source.)

    Raised in DataLoader workers too: torch re-raises a worker's exception in the main process by calling
    the class with "Caught DataError in DataLoader worker process N.\nOriginal Traceback ...\nDataError: MSG".
    The constructor keeps MSG alone, so the message stays one line whichever process raised it."""

    def __init__(self, message: str = ""):
        if "\n" in message:
            last = message.rstrip().rsplit("\n", 1)[-1]
            message = last.split("DataError: ", 1)[1] if "DataError: " in last else " ".join(message.split())
        super().__init__(message)


@dataclass(frozen=True)
class Shard:
    url: str
    samples: int


@dataclass
class Source:
    spec: str
    shards: list[Shard]
    weight: float = 1.0
    group: str | None = None  # "image" | "pair" from the manifest; None when unknown
    manifest: dict | None = field(default=None, repr=False)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


def _is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _fs(url: str, storage_options: dict | None):
    # Storage options belong to the remote filesystem; the local one rejects e.g. endpoint_url.
    options = (storage_options or {}) if _is_remote(url) else {}
    return fsspec.core.url_to_fs(url, **options)


def _join(base: str, name: str) -> str:
    return name if "://" in name or name.startswith("/") else posixpath.join(base, name)


def _read_json(url: str, storage_options: dict | None, check=None):
    """The parsed JSON at `url` (None if missing), passed through `check` (a manifest.py checker): a file
    that is not JSON or lacks a field the plan needs is a SourceError naming the file and the field."""
    fs, path = _fs(url, storage_options)
    try:
        raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        return check(doc, url) if check else doc
    except ManifestError as err:
        raise SourceError(str(err)) from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise SourceError(f"{url}: not valid JSON: {' '.join(str(err).split())}") from None


def _from_manifest(url: str, manifest: dict) -> list[Shard]:
    base = url.rsplit("/", 1)[0]
    return [Shard(_join(base, s["shard"]), s["samples"]) for s in manifest["shards"]]


def _stats_url(shard_url: str) -> str:
    return shard_url[: -len(".tar")] + ".stats.json" if shard_url.endswith(".tar") else shard_url + ".stats.json"


def _img2dataset_stats_url(shard_url: str) -> str:
    # img2dataset writes 00000.tar beside 00000_stats.json, whose "successes" is the samples in the tar
    return shard_url.removesuffix(".tar") + "_stats.json"


def _shard_count(url: str, storage_options: dict | None) -> int | None:
    """A shard's count from its own stats file: ours (``.stats.json``, ``samples``) or img2dataset's
    (``_stats.json``, ``successes``); None when it has neither."""
    stats = _read_json(_stats_url(url), storage_options)
    if stats is not None:
        try:
            return check_stats(stats, _stats_url(url))["samples"]
        except ManifestError as err:
            raise SourceError(str(err)) from None
    foreign = _read_json(_img2dataset_stats_url(url), storage_options)
    if foreign is None:
        return None
    try:
        return check_stats(foreign, _img2dataset_stats_url(url), field="successes")["successes"]
    except ManifestError as err:
        raise SourceError(str(err)) from None


def _check_sizes(doc, where: str) -> dict:
    """open_clip's ``sizes.json``: ``{"00000.tar": N, ...}``."""
    if not isinstance(doc, dict):
        raise ManifestError(f"{where}: expected a JSON object of shard name -> samples, got {type(doc).__name__}")
    for name, value in doc.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ManifestError(f"{where}: field {name} must be a non-negative integer, got {value!r}")
    return doc


def _counts(urls: list[str], storage_options: dict | None) -> tuple[list[Shard], dict | None]:
    """Counts for explicit shard URLs: from their folder's manifest, else the folder's ``sizes.json`` (open_clip),
    else each shard's stats file (ours or img2dataset's)."""
    manifests: dict[str, dict | None] = {}
    sizes: dict[str, dict] = {}
    shards = []
    for url in urls:
        folder, name = url.rsplit("/", 1) if "/" in url else (".", url)
        if folder not in manifests:
            manifests[folder] = _read_json(f"{folder}/manifest.json", storage_options, check_manifest)
            sizes[folder] = (
                {}
                if manifests[folder] is not None
                else _read_json(f"{folder}/sizes.json", storage_options, _check_sizes) or {}
            )
        known = {s["shard"]: s["samples"] for s in (manifests[folder] or {}).get("shards", [])}
        if name in known:
            shards.append(Shard(url, int(known[name])))
            continue
        if name in sizes[folder]:
            shards.append(Shard(url, sizes[folder][name]))
            continue
        count = _shard_count(url, storage_options)
        if count is None:
            raise SourceError(
                f"no sample count for {url}: it is not in {folder}/manifest.json or sizes.json and has no "
                f"{_stats_url(url).rsplit('/', 1)[-1]} or {_img2dataset_stats_url(url).rsplit('/', 1)[-1]} (epochs "
                f"are planned from counts; `cnclip inspect {folder} --index` counts them once and writes a manifest)"
            )
        shards.append(Shard(url, count))
    single = list(manifests.values())
    return shards, single[0] if len(single) == 1 else None


def resolve_source(spec: str, storage_options: dict | None = None, weight: float = 1.0) -> Source:
    """One source string -> its shards with sample counts (see the module docstring)."""
    spec = spec.strip()
    if spec.endswith(".json"):
        manifest = _read_json(spec, storage_options, check_manifest)
        if manifest is None:
            raise SourceError(f"manifest not found: {spec}")
        return Source(spec, _from_manifest(spec, manifest), weight, manifest.get("group"), manifest)
    if "{" in spec or spec.endswith(".tar"):
        shards, manifest = _counts(list(braceexpand.braceexpand(spec)), storage_options)
        return Source(spec, shards, weight, (manifest or {}).get("group"), manifest)
    folder = spec.rstrip("/")
    manifest = _read_json(f"{folder}/manifest.json", storage_options, check_manifest)
    if manifest is not None:
        return Source(
            spec, _from_manifest(f"{folder}/manifest.json", manifest), weight, manifest.get("group"), manifest
        )
    fs, path = _fs(folder, storage_options)
    try:
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if p.endswith(".tar"))
    except FileNotFoundError:
        raise SourceError(f"source folder not found: {spec}") from None
    if not names:
        raise SourceError(f"no manifest.json and no .tar shards in {spec}")
    shards, _ = _counts([f"{folder}/{n}" for n in names], storage_options)
    return Source(spec, shards, weight)


def parse_weights(weights, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    values = [float(w) for w in (weights.split("::") if isinstance(weights, str) else weights)]
    if len(values) != count:
        raise SourceError(f"{len(values)} weights for {count} sources")
    if any(w <= 0 for w in values):
        raise SourceError(f"weights must be positive, got {values}")
    return values


def resolve_sources(sources, weights=None, storage_options: dict | None = None, check: bool = True) -> list[Source]:
    """``"a::b"``, a list of specs, or Source objects -> resolved Sources; with ``check`` every shard
    must exist now (a missing shard is an error at start, not mid-epoch)."""
    if isinstance(sources, Source):
        return [sources]
    specs = sources.split("::") if isinstance(sources, str) else list(sources)
    if all(isinstance(s, Source) for s in specs):
        return specs
    resolved = [resolve_source(s, storage_options, w) for s, w in zip(specs, parse_weights(weights, len(specs)))]
    for source in resolved:
        if not source.shards:
            raise SourceError(f"source has no shards: {source.spec}")
        if check:
            check_exist([s.url for s in source.shards], storage_options)
    return resolved


def check_exist(urls: list[str], storage_options: dict | None = None) -> None:
    """Raise SourceError naming the missing shards; one listing per folder (cheap on object stores)."""
    by_folder: dict[str, list[str]] = {}
    for url in urls:
        folder, name = url.rsplit("/", 1) if "/" in url else (".", url)
        by_folder.setdefault(folder, []).append(name)
    missing = []
    for folder, names in by_folder.items():
        fs, path = _fs(folder, storage_options)
        try:
            present = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False, refresh=True)}
        except FileNotFoundError:
            present = set()
        missing += [f"{folder}/{n}" for n in names if n not in present]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise SourceError(f"{len(missing)} shard(s) missing: {', '.join(missing[:3])}{more}")


def open_shard(url: str, storage_options: dict | None = None):
    """A binary, seekable-where-possible file for a shard URL (local path, fsspec URL, or ``pipe:``)."""
    if url.startswith("pipe:"):
        return gopen(url, "rb")
    if not _is_remote(url):
        return open(url.removeprefix("file://"), "rb", buffering=1 << 16)
    fs, path = _fs(url, storage_options)
    return fs.open(path, "rb")
