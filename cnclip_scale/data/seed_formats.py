"""Readers for the Chinese-CLIP data layouts: `{split}_imgs.tsv`, `{split}_texts.jsonl` and the LMDB pair.

One place knows these formats; the shard converter and the data pipeline both read through here.
Every malformed record becomes a `BadRecord(reason, detail)` so the caller can count and list it;
nothing here prints or drops anything silently.

Layouts (see the Chinese-CLIP README, "Data Preprocessing"):
  TSV   line: `image_id<TAB>base64(image bytes)`  (standard base64; URL-safe accepted too)
  JSONL line: `{"text_id": 8428, "text": "高级感托特包斜挎", "image_ids": [1076345, 517602]}`
  LMDB  `lmdb/{split}/imgs`: key str(image_id) -> base64 bytes, plus b"num_images"
        `lmdb/{split}/pairs`: key b"0".."N-1" -> pickle((image_id, text_id, text)), plus b"num_samples"
"""

from __future__ import annotations

import io
import json
import mmap
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass

import pybase64


class BadRecord(Exception):
    """A record that cannot be used: `reason` is a short stable code, `detail` says what exactly."""

    def __init__(self, reason: str, detail: str = "", ids: dict | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.ids = ids or {}  # the ids the record did have (e.g. {"text_id": 8428}), for the reject line


@dataclass(frozen=True)
class TextRecord:
    text_id: int | str
    text: str
    # As strings: the TSV and LMDB key an image by the text of its id. Empty for a query without ground truth
    # (the seed README leaves `"image_ids": []` for test texts: MUGE's test set, a leaderboard submission).
    image_ids: tuple[str, ...]


# ----------------------------------------------------------------------------------------------- TSV

BOM = b"\xef\xbb\xbf"  # editors on Windows start UTF-8 files with it; never part of an id or JSON
_WHITESPACE = b" \t\r\n\x0b\x0c"  # what bytes.strip() strips, as Chinese-CLIP's line.strip() does
_MAX_ID = 4096  # an id longer than this is not an id


def iter_tsv_lines(
    path: str, start: int = 0, end: int | None = None, first_line: int = 1
) -> Iterator[tuple[int, int, memoryview]]:
    """Yield (line_number, byte_offset, line) for the lines that *start* in [start, end).

    `start` must be a line start (0 or an offset from a previous scan). A line keeps its newline so
    offsets add up. Lines are zero-copy views of a memory map: the TSV is mostly image bytes, and
    copying each line costs about as much as decoding it.
    """
    size = os.path.getsize(path)
    if size == 0:
        return
    mapped = _map(path)
    view, pos, number = memoryview(mapped), start, first_line
    end = size if end is None else min(end, size)
    if pos == 0 and mapped[: len(BOM)] == BOM:
        pos = len(BOM)  # the first line starts after it: offsets stay exact for tsv_lines_at
    while pos < end:
        newline = mapped.find(b"\n", pos)
        stop = size if newline < 0 else newline + 1
        yield number, pos, view[pos:stop]
        pos, number = stop, number + 1


def _map(path: str) -> mmap.mmap:
    with open(path, "rb") as f:
        # Not closed explicitly: the views handed out keep it alive, and it unmaps when they are gone.
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def tsv_lines_at(path: str, spans: list[tuple[int, int, int]]) -> Iterator[tuple[int, memoryview]]:
    """(line_number, line) for known (line_number, offset, length) spans from a scan: no newline search."""
    view = memoryview(_map(path)) if spans else None
    for number, offset, length in spans:
        yield number, view[offset : offset + length]


def tsv_line_starts(path: str, parts: int) -> list[int]:
    """`parts` + 1 offsets that cut the TSV into byte ranges starting at line starts (for parallel scans)."""
    size = os.path.getsize(path)
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, parts):
            f.seek(max(size * k // parts - 1, cuts[-1]))
            f.readline()  # to the start of the next line
            cuts.append(max(min(f.tell(), size), cuts[-1]))
    return cuts + [size]


def scan_tsv(path: str, start: int, end: int) -> list[tuple[int, int, str | None]]:
    """(byte offset, length, claimed image id) of each line starting in [start, end): the index the
    converter plans shards from, without copying image bytes."""
    return [(offset, len(line), tsv_line_id(line[:_MAX_ID])) for _, offset, line in iter_tsv_lines(path, start, end)]


def _bounds(line) -> tuple[int, int]:
    """[begin, end) of `line` without surrounding whitespace, found without copying it."""
    begin, end = 0, len(line)
    while end > begin and line[end - 1] in _WHITESPACE:
        end -= 1
    while begin < end and line[begin] in _WHITESPACE:
        begin += 1
    return begin, end


def tsv_line_id(line) -> str | None:
    """The image id a TSV line claims, or None when it has no usable id (parse_tsv_line says why)."""
    try:
        return parse_tsv_line(line)[0]
    except BadRecord:
        return None


def tsv_line_named_id(line) -> str | None:
    """The id a reject line names for a TSV line, even an unusable one: the text before the first TAB (the whole
    line when it has none: `9000004` alone is the id of an image whose base64 is missing), if it is short UTF-8."""
    found = tsv_line_id(line)
    if found is not None:
        return found
    view = memoryview(line)
    begin, end = _bounds(view)
    if bytes(view[:begin]).find(b"\t") >= 0:
        return None  # the line starts with its TAB: the id field is empty
    head = bytes(view[begin : min(end, begin + _MAX_ID)])
    tab = head.find(b"\t")
    if tab < 0 and end - begin >= _MAX_ID:
        return None  # no TAB in 4 KB: base64 without an id, not an id
    try:
        named = head[: tab if tab >= 0 else len(head)].strip().decode("utf-8")
    except UnicodeDecodeError:
        return None
    return named or None


def parse_tsv_line(line) -> tuple[str, memoryview]:
    """Split one TSV line (bytes or memoryview) into (image_id, base64 view); BadRecord otherwise.

    Extra TAB-separated fields are not searched for here (that would read the whole line once more):
    they make the base64 invalid, and `read_tsv_image` then names them as extra fields."""
    view = memoryview(line)
    begin, end = _bounds(view)
    if begin == end:
        raise BadRecord("blank_line")
    head = bytes(view[begin : min(end, begin + _MAX_ID)])
    tab = head.find(b"\t")
    if tab < 0:
        raise BadRecord(
            "missing_base64_field",
            "no TAB in line" if end - begin < _MAX_ID else f"no TAB in the first {_MAX_ID} bytes",
        )
    try:
        image_id = head[:tab].strip().decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRecord("non_utf8", f"image id is not UTF-8 ({err.reason} at byte {err.start})") from None
    if not image_id:
        raise BadRecord("empty_image_id")
    if begin + tab + 1 == end:
        raise BadRecord("missing_base64_field", "empty base64 field")
    return image_id, view[begin + tab + 1 : end]


def read_tsv_image(line) -> tuple[str, bytes]:
    """(image_id, image bytes) from one TSV line, or BadRecord saying what is wrong with it."""
    image_id, b64 = parse_tsv_line(line)
    try:
        return image_id, decode_base64(b64)
    except BadRecord as bad:
        if b"\t" in bytes(b64):  # (memoryview's `in` compares single bytes)
            fields = bytes(b64).count(b"\t") + 2
            raise BadRecord("extra_fields", f"{fields} TAB-separated fields, expected 2") from None
        raise bad


def decode_base64(b64: bytes) -> bytes:
    """Decode standard or URL-safe base64 (the seed snippet writes standard; Chinese-CLIP's reader
    decodes URL-safe). Validating decode: a stray character is an error, not silently skipped."""
    try:
        return pybase64.b64decode(b64, validate=True)
    except ValueError:
        pass
    try:
        return pybase64.b64decode(b64, altchars=b"-_", validate=True)
    except ValueError as err:
        if not bytes(b64).isascii():
            try:
                bytes(b64).decode("utf-8")
            except UnicodeDecodeError as utf_err:
                raise BadRecord("non_utf8", f"base64 field has non-UTF-8 bytes at {utf_err.start}") from None
        raise BadRecord("invalid_base64", str(err)) from None


# --------------------------------------------------------------------------------------------- JSONL


def _id_value(value, field: str) -> int | str:
    # bool is an int subclass in Python; an id of `true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise BadRecord("bad_field_type", f"{field} must be an int or a non-empty string, got {value!r}")
    return value


def parse_text_line(line: bytes) -> TextRecord:
    """Parse one JSONL text line into a TextRecord; raise BadRecord for anything else."""
    if not line.strip():
        raise BadRecord("blank_line")
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRecord("non_utf8", f"{err.reason} at byte {err.start}") from None
    try:
        obj = json.loads(decoded)
    except json.JSONDecodeError as err:
        raise BadRecord("invalid_json", f"{err.msg} at column {err.colno}") from None
    if not isinstance(obj, dict):
        raise BadRecord("invalid_json", f"expected an object, got {type(obj).__name__}")
    ids = {}
    if "text_id" in obj:
        text_id = _id_value(obj["text_id"], "text_id")
        ids = {"text_id": text_id}  # every later reject of this line names it
    try:
        for field in ("text_id", "text", "image_ids"):
            if field not in obj:
                raise BadRecord("missing_field", field)
        text = obj["text"]
        if not isinstance(text, str):
            raise BadRecord("bad_field_type", f"text must be a string, got {type(text).__name__}")
        if not text.strip():
            raise BadRecord("empty_text")
        image_ids = obj["image_ids"]
        if not isinstance(image_ids, list):
            raise BadRecord("bad_field_type", f"image_ids must be a list, got {type(image_ids).__name__}")
        # An empty list is a query without ground truth, not an error (see TextRecord).
        return TextRecord(text_id, text, tuple(str(_id_value(i, "image_ids[]")) for i in image_ids))
    except BadRecord as bad:
        bad.ids = ids
        raise


def iter_texts_jsonl(path: str) -> Iterator[tuple[int, TextRecord | BadRecord]]:
    """Yield (line_number, TextRecord or BadRecord) for every line of a `{split}_texts.jsonl`."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if number == 1:
                line = line.removeprefix(BOM)
            try:
                yield number, parse_text_line(line)
            except BadRecord as bad:
                yield number, bad


# ---------------------------------------------------------------------------------------------- LMDB


class _TuplesOnlyUnpickler(pickle.Unpickler):
    # Refusing every global is what makes this safe: without find_class a pickle cannot name a
    # callable, so REDUCE/BUILD/INST have nothing to call. The result's type is checked separately.
    def find_class(self, module, name):
        raise BadRecord("unsafe_pickle", f"pickle references {module}.{name}")


def unpickle_pair(payload: bytes) -> tuple[str, int | str, str]:
    """Decode one Chinese-CLIP LMDB pair value into (image_id as str, text_id, text), safely."""
    try:
        value = _TuplesOnlyUnpickler(io.BytesIO(payload)).load()
    except BadRecord:
        raise
    except Exception as err:  # a broken pickle can raise almost anything; all of it is "bad data"
        raise BadRecord("bad_pickle", f"{type(err).__name__}: {err}") from None
    if not (isinstance(value, tuple) and len(value) == 3):
        raise BadRecord("bad_pair", f"expected a 3-tuple (image_id, text_id, text), got {type(value).__name__}")
    image_id, text_id, text = value
    image_id = _id_value(image_id, "image_id")
    text_id = _id_value(text_id, "text_id")
    if not isinstance(text, str):
        raise BadRecord("bad_field_type", f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise BadRecord("empty_text")
    return str(image_id), text_id, text


_COUNT_KEYS = {"imgs": b"num_images", "pairs": b"num_samples"}


def lmdb_data_keys(env, table: str) -> list[tuple[bytes, int]]:
    """All (key, value length) of an LMDB table except its count key, in Chinese-CLIP's index order
    (pair keys "0".."N-1" numerically; other keys bytewise). Values are not copied."""
    with env.begin(buffers=True) as txn:
        items = [(bytes(k), len(v)) for k, v in txn.cursor() if bytes(k) != _COUNT_KEYS[table]]
    items.sort(key=lambda kv: (0, int(kv[0]), b"") if kv[0].isdigit() else (1, 0, kv[0]))
    return items


def open_lmdb(path: str):
    """Open an LMDB read-only the way Chinese-CLIP does (no lock file, no readahead)."""
    import lmdb  # only the LMDB path needs it

    return lmdb.open(path, readonly=True, create=False, lock=False, readahead=False, meminit=False, max_readers=64)
