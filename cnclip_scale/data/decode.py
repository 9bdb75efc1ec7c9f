"""Reading samples out of shard tars, and turning one into (image, captions).

``read_samples`` walks a tar's member headers and only reads the data of the samples it is asked
for: on a seekable file (local, s3fs, ...) skipped samples cost a header read and a seek, which is
how a worker starts mid-shard or resumes mid-epoch without reading what it does not use.

``decode_image`` asks libjpeg for a reduced-size decode (PIL ``draft``) when the JPEG is at least
twice the target side, then converts to RGB once and resizes with the model's preprocessing.

Damage never stops an epoch: a corrupt image, a bad caption JSON, or a shard that cannot be opened or
ends early is logged (rate-limited, naming shard and key) and counted in ``Counters``.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from PIL import Image
from webdataset.tariterators import base_plus_ext

from cnclip_scale.data.image_check import to_rgb
from cnclip_scale.data.sources import open_shard

log = logging.getLogger("cnclip_scale.data")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tiff")
COUNTER_NAMES = ("corrupt_samples", "missing_samples", "unreadable_shards", "filler_samples")


class RateLimitedLog:
    """The first ``burst`` warnings, then at most one per ``every`` seconds with a count of the rest."""

    def __init__(self, burst: int = 5, every: float = 30.0):
        self.burst, self.every, self.sent, self.held, self.last = burst, every, 0, 0, 0.0

    def warn(self, message: str) -> None:
        now = time.monotonic()
        if self.sent < self.burst or now - self.last >= self.every:
            extra = f" (+{self.held} similar warnings not shown)" if self.held else ""
            log.warning("%s%s", message, extra)
            self.sent, self.held, self.last = self.sent + 1, 0, now
        else:
            self.held += 1


@dataclass
class Counters:
    values: dict = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))
    warnings: RateLimitedLog = field(default_factory=RateLimitedLog)
    # Never reset by take(), and the latest message per kind: what an error says when nothing was usable.
    totals: dict = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))
    last: dict = field(default_factory=dict)

    def bad(self, kind: str, message: str, n: int = 1) -> None:
        self.values[kind] += n
        self.totals[kind] += n
        self.last[kind] = message
        self.warnings.warn(message)

    def summary(self) -> str:
        """One line: the non-zero totals and the latest message of each kind."""
        counts = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in self.totals.items() if n)
        examples = "; ".join(" ".join(self.last[kind].split())[:300] for kind in COUNTER_NAMES if kind in self.last)
        return f"{counts or 'nothing counted'}" + (f" (latest: {examples})" if examples else "")

    def take(self) -> dict:
        """The counts since the last take (each batch carries its own increments)."""
        out, self.values = self.values, dict.fromkeys(COUNTER_NAMES, 0)
        return out


@dataclass
class RawSample:
    key: str
    url: str
    members: dict  # extension -> bytes


def _members(f, url: str) -> Iterator[tarfile.TarInfo]:
    # Seekable files get random-access mode, where skipping a member is a seek; pipes stream.
    seekable = getattr(f, "seekable", lambda: False)()
    with tarfile.open(fileobj=f, mode="r:" if seekable else "r|") as tar:
        for info in tar:
            if info.isfile():
                yield tar, info


def read_samples(
    url: str, first: int, count: int, wanted, counters: Counters, storage_options: dict | None = None
) -> Iterator[tuple[int, RawSample | None]]:
    """Samples ``first .. first+count-1`` of the shard at ``url`` as ``(index, RawSample)``; data is read
    only where ``wanted(index)``. Every index in the range is yielded once (``None`` when the shard is
    unreadable or ends early), so callers can account for every planned sample."""
    index, key, members, done = -1, None, {}, first
    stop = first + count

    def finish():
        return (index, RawSample(key, url, members)) if wanted(index) else None

    try:
        with open_shard(url, storage_options) as f:
            for tar, info in _members(f, url):
                base, ext = base_plus_ext(info.name)
                if base is None or base.rsplit("/", 1)[-1].startswith("__"):
                    continue
                if base != key:
                    if key is not None and first <= index < stop:
                        out = finish()
                        if out is not None:
                            yield out
                        done = index + 1
                    index, key, members = index + 1, base, {}
                    if index >= stop:
                        return
                if first <= index and wanted(index):
                    members[ext.lower()] = tar.extractfile(info).read()
            if key is not None and first <= index < stop:
                out = finish()
                if out is not None:
                    yield out
                done = index + 1
    except Exception as err:  # a damaged or vanished shard: what it did not give is counted below
        counters.bad(
            "unreadable_shards",
            f"shard {url}: unreadable after sample {index} (key {key!r}): {type(err).__name__}: {err}",
        )
    missing = [i for i in range(max(done, first), stop) if wanted(i)]
    if missing:
        counters.bad(
            "missing_samples",
            f"shard {url}: {len(missing)} planned sample(s) not delivered "
            f"(shard shorter than its manifest count or unreadable)",
            len(missing),
        )
        for i in missing:
            yield i, None


def decode_image(data: bytes, size: int) -> Image.Image:
    """Decode ``data``; JPEGs much larger than ``size`` decode at 1/2, 1/4 or 1/8 scale (never below
    ``size`` on either side). The full decode happens here so damage raises here."""
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
        image.draft("RGB", (size, size))
    image.load()
    return to_rgb(image)


def parse_sample(raw: RawSample, size: int) -> tuple[Image.Image, str, list[tuple[str, str]]]:
    """(RGB image, image_id, [(text_id, text), ...]) or an exception saying what is wrong."""
    ext = next((e for e in IMAGE_EXTS if e in raw.members), None)
    if ext is None:
        raise ValueError(f"no image member (has {sorted(raw.members)})")
    meta = json.loads(raw.members["json"]) if "json" in raw.members else {}
    texts = [(str(t["text_id"]), t["text"]) for t in meta.get("texts", [])]
    if not texts and "txt" in raw.members:  # plain webdataset shards: one caption in .txt
        texts = [(raw.key, raw.members["txt"].decode("utf-8"))]
    if not texts and isinstance(meta.get("caption"), str) and meta["caption"]:  # img2dataset's json, no .txt
        texts = [(raw.key, meta["caption"])]
    image_id = str(meta.get("image_id", meta.get("key", raw.key)))  # img2dataset's json names its key
    return decode_image(raw.members[ext], size), image_id, texts
