"""Writing shards, their stats files and the split manifest to a local folder or any fsspec URL.

The rule every write here keeps: a reader never sees a half-written file. Locally we write under a
hidden temporary name and rename; on object stores (s3://...) the object only exists once the upload
completes on close, and a failed write aborts the upload instead of completing it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
from collections.abc import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

TMP_MARK = ".tmp-"  # in the names of local temporaries; a rerun removes leftovers


class DestinationError(Exception):
    """The destination cannot be used (unreachable, no bucket, bad credentials); message is one line."""


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def stats_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.stats.json"


class Destination:
    """A folder at `url` (local path or fsspec URL), opened with `storage_options` (e.g. endpoint_url)."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def check_writable(self) -> None:
        """Write and delete a probe object so a bad endpoint/bucket/credential fails now, clearly."""
        probe = self.path(".cnclip-write-probe")
        try:
            if self.is_local:
                os.makedirs(self.root, exist_ok=True)
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm_file(probe)
        except Exception as err:
            raise DestinationError(describe_storage_error(err, self.url)) from None

    @contextlib.contextmanager
    def open_atomic(self, rel: str) -> Iterator:
        """Open `rel` for writing; it appears under its name only if the block finishes."""
        final = self.path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}{TMP_MARK}{os.getpid()}")
            try:
                with open(tmp, "wb") as f:
                    yield f
                os.replace(tmp, final)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            return
        f = self.fs.open(final, "wb")
        try:
            yield f
        except BaseException:
            # Closing would complete a multipart upload of a partial shard; discard aborts it, and
            # marking the file closed stops its finaliser from trying to flush again.
            getattr(f, "discard", lambda: None)()
            f.closed = True
            raise
        f.close()

    def write_json(self, rel: str, obj) -> None:
        with self.open_atomic(rel) as f:
            f.write((json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))

    def write_lines(self, rel: str, objs) -> None:
        with self.open_atomic(rel) as f:
            for obj in objs:
                f.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))

    def read_json(self, rel: str):
        """The parsed JSON at `rel`, or None if it is missing or unreadable (e.g. cut short)."""
        try:
            return json.loads(self.fs.cat_file(self.path(rel)))
        except (FileNotFoundError, ValueError):
            return None

    def list_sizes(self, rel_dir: str) -> dict[str, int]:
        """{file name: size} directly inside `rel_dir` ({} if it does not exist)."""
        try:
            entries = self.fs.ls(self.path(rel_dir), detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        return {
            e["name"].rstrip("/").rsplit("/", 1)[-1]: e.get("size") or 0 for e in entries if e.get("type") == "file"
        }

    def remove(self, rel_paths: list[str]) -> None:
        if rel_paths:
            self.fs.rm([self.path(p) for p in rel_paths])


_MODE_OWNER = b"%07o\0" % 0o444 + b"%07o\0" % 0 * 2  # mode, uid, gid
_MTIME = b"%011o\0" % 0
_AFTER_CHECKSUM = (tarfile.REGTYPE + b"\0" * 100 + tarfile.POSIX_MAGIC).ljust(512 - 156, b"\0")
_CONSTANT_SUM = sum(_MODE_OWNER) + sum(_MTIME) + sum(_AFTER_CHECKSUM) + 8 * ord(" ")


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header tarfile writes for a regular file (mode 0444, owner root, mtime 0),
    assembled from constant parts: TarInfo.tobuf costs ~90 us, a tenth of a 100 KB image's budget.
    Sample keys keep names ASCII and short; anything else is refused rather than mis-encoded."""
    encoded = name.encode("ascii")
    if len(encoded) > 100 or size >= 8**11:
        raise ValueError(f"tar member {name!r} of {size} bytes does not fit a plain ustar header")
    size_field = b"%011o\0" % size
    checksum = _CONSTANT_SUM + sum(encoded) + sum(size_field)  # the checksum field counts as 8 spaces
    return b"".join(
        (encoded.ljust(100, b"\0"), _MODE_OWNER, size_field, _MTIME, b"%06o\0 " % checksum, _AFTER_CHECKSUM)
    )


class TarShard:
    """Tar members with fixed metadata (mtime 0, root, 0444) so equal input gives equal bytes;
    the sha256 and size are computed on the way out instead of re-reading the shard."""

    def __init__(self, fileobj):
        self._out = fileobj
        self._sha = hashlib.sha256()
        self.size = 0

    def _write(self, data: bytes) -> None:
        self._sha.update(data)
        self._out.write(data)
        self.size += len(data)

    def add(self, name: str, data: bytes) -> None:
        self._write(ustar_header(name, len(data)))
        self._write(data)
        if len(data) % tarfile.BLOCKSIZE:
            self._write(b"\0" * (tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE))

    def finish(self) -> str:
        """Write the end-of-archive blocks (padded to a full record, as tar does); return sha256 hex."""
        self._write(b"\0" * (2 * tarfile.BLOCKSIZE))
        if self.size % tarfile.RECORDSIZE:
            self._write(b"\0" * (tarfile.RECORDSIZE - self.size % tarfile.RECORDSIZE))
        return self._sha.hexdigest()


def describe_storage_error(err: Exception, url: str, verb: str = "write to") -> str:
    """One line a user can act on, from whatever the filesystem raised."""
    text = f"{type(err).__name__}: {err}".splitlines()[0][:300]
    lowered = text.lower()
    if (
        isinstance(err, PermissionError)
        or "accessdenied" in lowered
        or "signaturedoesnotmatch" in lowered
        or "invalidaccesskeyid" in lowered
        or "403" in lowered
    ):
        return f"access denied at {url} (check credentials / --storage-options): {text}"
    if "nosuchbucket" in lowered or (isinstance(err, FileNotFoundError) and "://" in url):
        return f"bucket does not exist for {url}: {text}"
    if "connect" in lowered or "endpoint" in lowered or isinstance(err, (ConnectionError, TimeoutError)):
        return f"cannot reach destination {url}: {text}"
    return f"cannot {verb} {url}: {text}"
