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
import pickle
from dataclasses import dataclass
from typing import Iterator

import pybase64


class BadRecord(Exception):
    """A record that cannot be used: `reason` is a short stable code, `detail` says what exactly."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TextRecord:
    text_id: int | str
    text: str
    image_ids: tuple[str, ...]  # as strings: the TSV and LMDB key an image by the text of its id


# ----------------------------------------------------------------------------------------------- TSV

def iter_tsv_lines(path: str, start: int = 0, end: int | None = None, first_line: int = 1
                   ) -> Iterator[tuple[int, int, bytes]]:
    """Yield (line_number, byte_offset, raw_line) for the lines that *start* in [start, end).

    `start` must be a line start (0 or an offset from a previous scan). Lines keep their trailing
    newline so offsets add up; callers strip. Line numbers count from `first_line`.
    """
    with open(path, "rb", buffering=1 << 20) as f:
        f.seek(start)
        offset, number = start, first_line
        for line in f:
            if end is not None and offset >= end:
                break
            yield number, offset, line
            offset += len(line)
            number += 1


def tsv_line_id(line: bytes) -> str | None:
    """The image id a TSV line claims, or None when the line has no usable id (parsed in full later)."""
    tab = line.find(b"\t")
    if tab <= 0:
        return None
    try:
        return line[:tab].strip().decode("utf-8") or None
    except UnicodeDecodeError:
        return None


def parse_tsv_line(line: bytes) -> tuple[str, bytes]:
    """Split one TSV line into (image_id, base64 bytes); raise BadRecord for anything else."""
    line = line.strip()
    if not line:
        raise BadRecord("blank_line")
    tab = line.find(b"\t")
    if tab < 0:
        raise BadRecord("missing_base64_field", "no TAB in line")
    if line.find(b"\t", tab + 1) >= 0:
        fields = line.count(b"\t") + 1
        raise BadRecord("extra_fields", f"{fields} TAB-separated fields, expected 2")
    try:
        image_id = line[:tab].strip().decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRecord("non_utf8", f"image id is not UTF-8 ({err.reason} at byte {err.start})") from None
    if not image_id:
        raise BadRecord("empty_image_id")
    b64 = line[tab + 1:]
    if not b64:
        raise BadRecord("missing_base64_field", "empty base64 field")
    return image_id, b64


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
        if not b64.isascii():
            try:
                b64.decode("utf-8")
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
    for field in ("text_id", "text", "image_ids"):
        if field not in obj:
            raise BadRecord("missing_field", field)
    text_id = _id_value(obj["text_id"], "text_id")
    text = obj["text"]
    if not isinstance(text, str):
        raise BadRecord("bad_field_type", f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise BadRecord("empty_text")
    image_ids = obj["image_ids"]
    if not isinstance(image_ids, list):
        raise BadRecord("bad_field_type", f"image_ids must be a list, got {type(image_ids).__name__}")
    if not image_ids:
        raise BadRecord("no_image_ids")
    return TextRecord(text_id, text, tuple(str(_id_value(i, "image_ids[]")) for i in image_ids))


def iter_texts_jsonl(path: str) -> Iterator[tuple[int, TextRecord | BadRecord]]:
    """Yield (line_number, TextRecord or BadRecord) for every line of a `{split}_texts.jsonl`."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
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

    return lmdb.open(path, readonly=True, create=False, lock=False, readahead=False, meminit=False,
                     max_readers=64)
