"""The converter's view of one split's input: its texts (parsed in full) and an index of its images
(ids, sizes and positions only — the image bytes stay on disk until a worker streams them).

Two layouts give the same view: `{split}_imgs.tsv` + `{split}_texts.jsonl`, or Chinese-CLIP's
`lmdb/{split}/{imgs,pairs}`. Texts are small and held in memory; images never are.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from itertools import starmap

from cnclip_scale.data import seed_formats as sf


class InputError(Exception):
    """The input cannot be read at all (missing file, unknown layout); message is one line."""


@dataclass(slots=True)
class ImageSlot:
    """One image record as the index scan found it (kept small: there is one per image)."""

    image_id: str | None  # the id the record claims (None if it has no usable id; the worker says why)
    est_bytes: int  # decoded size estimate, for sizing shards
    line: int = 0  # TSV: line number, byte offset and length of the line
    offset: int = 0
    length: int = 0
    key: bytes = b""  # LMDB: the key

    @property
    def where(self) -> dict:
        """How rejects and fingerprints name the record: {"line": n} or {"key": "..."}."""
        return {"line": self.line} if self.line else {"key": self.key.decode("utf-8", "backslashreplace")}


@dataclass
class TextEntry:
    text_id: int | str
    text: str
    where: dict
    links: list = field(default_factory=list)  # [(image_id, where)] in source order


@dataclass
class SplitSource:
    kind: str  # "tsv" | "lmdb"
    image_path: str  # the TSV file or the LMDB imgs folder
    image_label: str  # how rejects name it, e.g. "train_imgs.tsv" or "lmdb/train/imgs"
    text_label: str
    fingerprint: str
    images: list[ImageSlot]
    texts: list[TextEntry]
    text_rejects: list[dict]  # rejected text/pair records found while parsing
    texts_input: int
    pairs_input: int


def detect_layout(src: str, split: str, force: str | None = None) -> tuple[str, str]:
    """(kind, folder) for `split` under `src`: a seed folder, a seed folder with lmdb/, or an lmdb/ folder."""
    tsv = os.path.join(src, f"{split}_imgs.tsv")
    candidates = [
        ("tsv", src, tsv),
        ("lmdb", os.path.join(src, "lmdb"), os.path.join(src, "lmdb", split, "imgs")),
        ("lmdb", src, os.path.join(src, split, "imgs")),
    ]
    for kind, folder, marker in candidates:
        if (force in (None, kind)) and os.path.exists(marker):
            return kind, folder
    if os.path.exists(src) and not os.path.isdir(src):
        raise InputError(
            f"--src {src} is a file, not a folder: pass the folder that holds {split}_imgs.tsv and "
            f"{split}_texts.jsonl (or lmdb/)"
        )
    if not os.path.isdir(src):
        raise InputError(f"missing input: source folder {src} does not exist")
    wanted = {"tsv": f"{tsv}", "lmdb": os.path.join(src, "lmdb", split, "imgs")}
    raise InputError(f"missing input: {wanted.get(force, tsv)} (no {split} split in TSV or LMDB layout)")


def _file_digest(path: str, size: int) -> str:
    # Head and tail, not the whole file: a 100 GB TSV must not be read twice to fingerprint it.
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        sha.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            sha.update(f.read())
    return sha.hexdigest()


def fingerprint(paths: list[str], root: str) -> str:
    """Names, sizes, and head/tail digests of the input files."""
    sha = hashlib.sha256()
    for path in paths:
        size = os.path.getsize(path)
        sha.update(f"{os.path.relpath(path, root)}|{size}|{_file_digest(path, size)}\n".encode())
    return sha.hexdigest()


def _reject(record: str, source: str, where: dict, reason: str, detail: str = "", **ids) -> dict:
    return {"record": record, "source": source, **where, **ids, "reason": reason, "detail": detail}


def load_tsv_split(folder: str, split: str, pool=None, parts: int = 1) -> SplitSource:
    """Texts parsed in full; images indexed by a scan in `parts` byte ranges (in `pool` if given)."""
    image_path = os.path.join(folder, f"{split}_imgs.tsv")
    text_path = os.path.join(folder, f"{split}_texts.jsonl")
    for path in (image_path, text_path):
        if not os.path.isfile(path):
            raise InputError(f"missing input: {path}")
    text_label = os.path.basename(text_path)
    texts, rejects, seen, texts_input, pairs_input = [], [], {}, 0, 0
    for line, rec in sf.iter_texts_jsonl(text_path):
        texts_input += 1
        if isinstance(rec, sf.BadRecord):
            rejects.append(_reject("text", text_label, {"line": line}, rec.reason, rec.detail, **rec.ids))
            continue
        # Ids compare as text, as everywhere downstream (sample keys, loaders, evaluator): 1 and "1" are one id.
        if str(rec.text_id) in seen:
            rejects.append(
                _reject(
                    "text",
                    text_label,
                    {"line": line},
                    "duplicate_text_id",
                    f"text_id first seen at line {seen[str(rec.text_id)]}",
                    text_id=rec.text_id,
                )
            )
            continue
        seen[str(rec.text_id)] = line
        entry = TextEntry(rec.text_id, rec.text, {"line": line})
        for image_id in rec.image_ids:
            pairs_input += 1
            if any(image_id == linked for linked, _ in entry.links):
                rejects.append(
                    _reject(
                        "pair",
                        text_label,
                        {"line": line},
                        "duplicate_pair",
                        "image listed twice",
                        text_id=rec.text_id,
                        image_id=image_id,
                    )
                )
            else:
                entry.links.append((image_id, {"line": line}))
        texts.append(entry)
    cuts = sf.tsv_line_starts(image_path, parts)
    ranges = [(image_path, a, b) for a, b in zip(cuts, cuts[1:])]
    index = [
        row for part in (pool.starmap(sf.scan_tsv, ranges) if pool else starmap(sf.scan_tsv, ranges)) for row in part
    ]
    images = [
        ImageSlot(image_id, length * 3 // 4, line=n, offset=offset, length=length)
        for n, (offset, length, image_id) in enumerate(index, start=1)
    ]
    return SplitSource(
        "tsv",
        image_path,
        os.path.basename(image_path),
        text_label,
        fingerprint([image_path, text_path], folder),
        images,
        texts,
        rejects,
        texts_input,
        pairs_input,
    )


def load_lmdb_split(folder: str, split: str) -> SplitSource:
    imgs_dir, pairs_dir = os.path.join(folder, split, "imgs"), os.path.join(folder, split, "pairs")
    for path in (imgs_dir, pairs_dir):
        if not os.path.isfile(os.path.join(path, "data.mdb")):
            raise InputError(f"missing input: {path}/data.mdb")
    pairs_label, imgs_label = f"lmdb/{split}/pairs", f"lmdb/{split}/imgs"
    by_text: dict = {}
    texts, rejects = [], []
    env = sf.open_lmdb(pairs_dir)
    try:
        keys = sf.lmdb_data_keys(env, "pairs")
        with env.begin() as txn:
            for key, _ in keys:
                where = {"key": key.decode("utf-8", "backslashreplace")}
                try:
                    image_id, text_id, text = sf.unpickle_pair(txn.get(key))
                except sf.BadRecord as bad:
                    rejects.append(_reject("pair", pairs_label, where, bad.reason, bad.detail))
                    continue
                entry = by_text.get(str(text_id))  # 1 and "1" are one id (see load_tsv_split)
                if entry is None:
                    entry = by_text[str(text_id)] = TextEntry(text_id, text, where)
                    texts.append(entry)
                elif entry.text != text:
                    rejects.append(
                        _reject(
                            "pair",
                            pairs_label,
                            where,
                            "conflicting_text",
                            f"text_id has another text at key {entry.where['key']}",
                            text_id=text_id,
                            image_id=image_id,
                        )
                    )
                    continue
                if any(image_id == linked for linked, _ in entry.links):
                    rejects.append(
                        _reject(
                            "pair",
                            pairs_label,
                            where,
                            "duplicate_pair",
                            "same image and text again",
                            text_id=text_id,
                            image_id=image_id,
                        )
                    )
                    continue
                entry.links.append((image_id, where))
    finally:
        env.close()
    env = sf.open_lmdb(imgs_dir)
    try:
        images = [ImageSlot(_key_id(k), size * 3 // 4, key=k) for k, size in sf.lmdb_data_keys(env, "imgs")]
    finally:
        env.close()
    files = [os.path.join(imgs_dir, "data.mdb"), os.path.join(pairs_dir, "data.mdb")]
    return SplitSource(
        "lmdb",
        imgs_dir,
        imgs_label,
        pairs_label,
        fingerprint(files, folder),
        images,
        texts,
        rejects,
        len(texts),
        len(keys),
    )


def _key_id(key: bytes) -> str | None:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def load_split(src: str, split: str, force: str | None = None, pool=None, parts: int = 1) -> SplitSource:
    kind, folder = detect_layout(src, split, force)
    return load_tsv_split(folder, split, pool, parts) if kind == "tsv" else load_lmdb_split(folder, split)
