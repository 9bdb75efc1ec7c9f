"""Images as files: a captions table (CSV / TSV / Parquet / JSONL) whose rows name an image file and a caption.

    image,caption[,split]        one row per caption; several rows may name one image (several captions)

The image column holds a path relative to the images folder (`--src` when it is a folder, else the table's
folder), an absolute path, a `file://` URL or an `s3://` (any fsspec) URL, read with `--storage-options`.

How the converter sees such a split (the same `SplitSource` as the seed layout, kind "table"):
  - every row of the split is a text record: `text_id` = its `line` (CSV/TSV/JSONL: the line of the file the row
    starts on, the header being line 1; Parquet: the 1-based row number), one pair (text -> its image);
  - every distinct image reference is an image record, in first-appearance order: `image_id` = the reference as
    written (relative paths normalised: `./a/b.jpg` and `a//b.jpg` are `a/b.jpg`), `line` = the first row naming it;
  - the image file is read by the worker that writes its shard: a missing file is an image reject `missing_file`,
    an unreadable one `unreadable_file`, bytes that are not an image the usual `not_an_image` / `truncated_image`;
    each reject line also carries `"file"` (the reference). A row with an empty caption is a text reject
    `empty_text`; a row without an image, `missing_field`; a JSONL line that is not an object, `invalid_json`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import posixpath
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

from cnclip_scale.data import seed_formats as sf
from cnclip_scale.shards.inputs import ImageSlot, InputError, SplitSource, TextEntry, fingerprint

TABLE_EXTENSIONS = (".csv", ".tsv", ".parquet", ".jsonl")
DEFAULT_NAMES = tuple(f"captions{ext}" for ext in TABLE_EXTENSIONS)  # looked for in an --src folder
REMOTE_GUESS_BYTES = 100_000  # size estimate (for shard byte limits) of an image not on local disk


@dataclass(frozen=True, kw_only=True)
class TableOptions:
    captions: str | None = None  # the table; default: --src if it is a table file, else --src/captions.{ext}
    image_column: str = "image"
    caption_column: str = "caption"
    split_column: str = "split"


@dataclass(slots=True)
class FileSlot(ImageSlot):
    ref: str = ""  # the image reference as the table wrote it

    @property
    def where(self) -> dict:
        return {"line": self.line, "file": self.ref}


def _is_table(path: str) -> bool:
    return path.lower().endswith(TABLE_EXTENSIONS) and os.path.isfile(path)


def _has_seed_layout(src: str) -> bool:
    try:
        names = os.listdir(src)
    except OSError:
        return False
    return "lmdb" in names or any(n.endswith("_imgs.tsv") for n in names) or os.path.isdir(os.path.join(src, "imgs"))


def table_path(src: str, opts: TableOptions, force: str | None = None) -> str | None:
    """The captions table when --src / --captions / --from say the input is one; None for the seed/LMDB layouts."""
    if force in ("tsv", "lmdb"):
        return None
    if opts.captions:
        return opts.captions
    seed_file = src.endswith(("_imgs.tsv", "_texts.jsonl"))  # a seed layout's own file, passed by mistake
    if os.path.isfile(src) and ((src.lower().endswith(TABLE_EXTENSIONS) and not seed_file) or force == "table"):
        return src
    if os.path.isdir(src) and (force == "table" or not _has_seed_layout(src)):
        for name in DEFAULT_NAMES:
            if os.path.isfile(os.path.join(src, name)):
                return os.path.join(src, name)
    if force == "table":
        raise InputError(
            f"--from table: no captions table at {src}: pass --captions FILE, a table as --src, or put "
            f"{' / '.join(DEFAULT_NAMES)} in the folder"
        )
    return None


def image_root(src: str, table: str) -> str:
    """Where relative image paths are resolved: --src if it is a folder, else the table's folder."""
    return src if os.path.isdir(src) else os.path.dirname(os.path.abspath(table))


def _columns_error(table: str, missing: str, option: str, columns) -> InputError:
    return InputError(
        f"{table} has no column {missing!r} (columns: {', '.join(map(str, columns)) or 'none'}); name it with {option}"
    )


def read_rows(table: str, opts: TableOptions) -> tuple[bool, Iterator[tuple[int, object, object, object]]]:
    """(has a split column, iterator of (line, image, caption, split) | (line, BadRecord, None, None))."""
    if not os.path.isfile(table):
        raise InputError(f"missing input: captions table {table}")
    lower = table.lower()
    if lower.endswith(".parquet"):
        return _parquet_rows(table, opts)
    if lower.endswith(".jsonl"):
        return _jsonl_rows(table, opts)
    return _csv_rows(table, opts, "\t" if lower.endswith(".tsv") else ",")


def _check_columns(table: str, columns, opts: TableOptions) -> bool:
    for name, option in ((opts.image_column, "--image-column"), (opts.caption_column, "--caption-column")):
        if name not in columns:
            raise _columns_error(table, name, option, columns)
    return opts.split_column in columns


def _parquet_rows(table: str, opts: TableOptions):
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(table)
    except Exception as err:
        raise InputError(f"cannot read Parquet table {table}: {err}") from None
    has_split = _check_columns(table, schema.names, opts)
    wanted = [opts.image_column, opts.caption_column] + ([opts.split_column] if has_split else [])

    def rows():
        data = pq.read_table(table, columns=wanted).to_pydict()
        splits = data[opts.split_column] if has_split else [None] * len(data[opts.image_column])
        yield from zip(
            range(1, len(splits) + 1), data[opts.image_column], data[opts.caption_column], splits, strict=True
        )

    return has_split, rows()


def _csv_rows(table: str, opts: TableOptions, delimiter: str):
    try:
        with open(table, encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f, delimiter=delimiter), [])
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"cannot read {table}: {err}") from None
    has_split = _check_columns(table, header, opts)
    pos = {name: i for i, name in enumerate(header)}

    def cell(row, name):
        i = pos.get(name)
        return row[i] if i is not None and i < len(row) else None

    def rows():
        with open(table, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            next(reader, None)
            line = reader.line_num + 1
            try:
                for row in reader:
                    if row:  # blank lines are no records
                        yield (
                            line,
                            cell(row, opts.image_column),
                            cell(row, opts.caption_column),
                            cell(row, opts.split_column),
                        )
                    line = reader.line_num + 1
            except (UnicodeDecodeError, csv.Error) as err:
                raise InputError(f"cannot read {table} after line {line - 1}: {err}") from None

    return has_split, rows()


def _jsonl_rows(table: str, opts: TableOptions):
    first = None
    with open(table, "rb") as f:
        for raw in f:
            try:
                first = json.loads(raw)
            except ValueError:
                continue
            if isinstance(first, dict):
                break
    has_split = isinstance(first, dict) and opts.split_column in first

    def rows():
        with open(table, "rb") as f:
            for line, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.removeprefix(b"\xef\xbb\xbf"))
                except ValueError as err:
                    yield line, sf.BadRecord("invalid_json", str(err)[:200]), None, None
                    continue
                if not isinstance(obj, dict):
                    yield line, sf.BadRecord("invalid_json", f"a {type(obj).__name__}, not an object"), None, None
                    continue
                yield line, obj.get(opts.image_column), obj.get(opts.caption_column), obj.get(opts.split_column)

    return has_split, rows()


def table_splits(table: str, opts: TableOptions) -> list[str]:
    """The splits a table holds, in first-appearance order (["train"] without a split column)."""
    has_split, rows = read_rows(table, opts)
    if not has_split:
        rows.close()
        return ["train"]
    seen: dict[str, None] = {}
    for _, image, _, split in rows:
        if not isinstance(image, sf.BadRecord) and split not in (None, ""):
            seen.setdefault(str(split), None)
    return list(seen) or ["train"]


def check_table(table: str, opts: TableOptions, splits: list[str]) -> None:
    """Before anything is written: the table exists, has its columns, and a table without a split column
    is converted as exactly one split."""
    has_split, rows = read_rows(table, opts)
    rows.close()
    if not has_split and len(splits) > 1:
        raise InputError(
            f"{table} has no {opts.split_column!r} column, so it is one split: pass --splits with one name "
            f"(e.g. --splits train), or add a {opts.split_column!r} column"
        )


def normalise_ref(ref: str) -> str:
    if "://" in ref:
        return ref
    return posixpath.normpath(ref.replace(os.sep, "/")) if not os.path.isabs(ref) else os.path.normpath(ref)


def _local_path(ref: str, root: str) -> str | None:
    if ref.startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlparse(ref).path)
    if "://" in ref:
        return None
    return ref if os.path.isabs(ref) else os.path.join(root, ref)


def _reject(where: dict, label: str, reason: str, detail: str = "", **ids) -> dict:
    return {"record": "text", "source": label, **where, **ids, "reason": reason, "detail": detail}


def load_table_split(src: str, split: str, opts: TableOptions, table: str) -> SplitSource:
    """One split of a captions table as the converter's SplitSource (texts in full, images as references)."""
    root = image_root(src, table)
    label = os.path.basename(table)
    has_split, rows = read_rows(table, opts)
    texts, rejects, slots, texts_input = [], [], {}, 0
    for line, image, caption, row_split in rows:
        if has_split and (row_split is None or str(row_split) != split):
            continue
        texts_input += 1
        where = {"line": line}
        if isinstance(image, sf.BadRecord):
            rejects.append(_reject(where, label, image.reason, image.detail))
            continue
        ref = normalise_ref(str(image).strip()) if image is not None and str(image).strip() else ""
        if not ref:
            rejects.append(_reject(where, label, "missing_field", f"no {opts.image_column!r}", text_id=line))
            continue
        if ref not in slots:
            path = _local_path(ref, root)
            try:
                size = os.path.getsize(path) if path is not None else REMOTE_GUESS_BYTES
            except OSError:
                size = 0
            slots[ref] = FileSlot(ref, size, line=line, ref=ref)
        text = "" if caption is None else str(caption).strip()
        if not text:
            rejects.append(_reject(where, label, "empty_text", f"no {opts.caption_column!r}", text_id=line))
            continue
        texts.append(TextEntry(line, text, where, [(ref, dict(where))]))
    sha = hashlib.sha256(fingerprint([table], os.path.dirname(os.path.abspath(table))).encode())
    sha.update(json.dumps([os.path.abspath(root), opts.image_column, opts.caption_column, has_split]).encode())
    return SplitSource(
        kind="table",
        image_path=root,
        image_label=label,
        text_label=label,
        fingerprint=sha.hexdigest(),
        images=list(slots.values()),
        texts=texts,
        text_rejects=rejects,
        texts_input=texts_input,
        pairs_input=len(texts),
    )


def read_image(ref: str, root: str, storage_options: dict) -> bytes:
    """The bytes of one image reference; BadRecord("missing_file" | "unreadable_file") if it cannot be read."""
    path = _local_path(ref, root)
    try:
        if path is not None:
            with open(path, "rb") as f:
                return f.read()
        import fsspec

        fs, remote = fsspec.core.url_to_fs(ref, **storage_options)
        return fs.cat_file(remote)
    except FileNotFoundError:
        raise sf.BadRecord("missing_file", f"{ref} does not exist") from None
    except (OSError, ValueError) as err:
        raise sf.BadRecord("unreadable_file", f"{ref}: {type(err).__name__}: {err}"[:200]) from None


def table_records(task) -> Iterator[tuple[dict, str | None, bytes | sf.BadRecord]]:
    """(where, image_id, bytes or BadRecord) for a build task's image references (see build._records)."""
    for line, ref in task.files:
        try:
            data = read_image(ref, task.image_path, task.storage_options)
        except sf.BadRecord as bad:
            data = bad
        yield {"line": line, "file": ref}, ref, data
