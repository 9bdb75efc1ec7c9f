"""Seed-layout datasets (`{split}_imgs.tsv` + `{split}_texts.jsonl`, Chinese-CLIP's format) built from
real bundled photos, the LMDB that Chinese-CLIP's own builder makes from them, and helpers that plant
each kind of bad record with the reject the converter must report for it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

from tests.helpers.images import make_image


@dataclass
class SeedSplit:
    """What a generated split contains: the ground truth tests compare the output against."""

    images: dict[str, bytes] = field(default_factory=dict)  # image_id -> encoded bytes
    texts: list[dict] = field(default_factory=list)  # {"text_id", "text", "image_ids"}

    def captions(self) -> dict[str, list[tuple]]:
        """image_id -> [(text_id, text)] in text order: what a group=image sample's JSON must hold."""
        out: dict[str, list] = {i: [] for i in self.images}
        for t in self.texts:
            for i in t["image_ids"]:
                if str(i) in out:
                    out[str(i)].append((t["text_id"], t["text"]))
        return out


def write_seed_split(
    root: str,
    split: str,
    n_images: int,
    texts_per_image: float = 1.5,
    size: int = 64,
    quality: int = 85,
    first_image_id: int = 1000000,
    first_text_id: int = 1,
    image_offset: int = 0,
    seed: int = 0,
) -> SeedSplit:
    """Write `{root}/{split}_imgs.tsv` and `{split}_texts.jsonl` and return their content.

    Images are JPEGs of real photos (see `make_image`); about `texts_per_image` captions per image.
    Every other text names two images (as in MUGE, where a query matches several products).
    """
    os.makedirs(root, exist_ok=True)
    out = SeedSplit()
    with open(os.path.join(root, f"{split}_imgs.tsv"), "w", encoding="utf-8") as tsv:
        for k in range(n_images):
            data, _ = make_image(image_offset + k, size, quality, seed=seed)
            image_id = str(first_image_id + k)
            out.images[image_id] = data
            tsv.write(f"{image_id}\t{base64.b64encode(data).decode('ascii')}\n")
    ids = list(out.images)
    n_texts = max(1, int(n_images * texts_per_image / 1.5))
    for k in range(n_texts):
        first = ids[k % n_images]
        linked = [first] if k % 2 == 0 or n_images == 1 else [first, ids[(k * 7 + 3) % n_images]]
        linked = list(dict.fromkeys(linked))
        _, caption = make_image(image_offset + int(first) - first_image_id, size, quality, seed=seed)
        out.texts.append(
            {"text_id": first_text_id + k, "text": f"{caption}（{k}）", "image_ids": [int(i) for i in linked]}
        )
    with open(os.path.join(root, f"{split}_texts.jsonl"), "w", encoding="utf-8") as jsonl:
        for t in out.texts:
            jsonl.write(json.dumps(t, ensure_ascii=False) + "\n")
    return out


def write_seed_dataset(root: str, sizes: dict[str, int], **kwargs) -> dict[str, SeedSplit]:
    """Several splits with disjoint image ids, e.g. `write_seed_dataset(d, {"train": 40, "valid": 10})`."""
    out, offset = {}, 0
    for split, n in sizes.items():
        out[split] = write_seed_split(
            root, split, n, first_image_id=1000000 + offset, first_text_id=1 + offset * 2, image_offset=offset, **kwargs
        )
        offset += n
    return out


def write_realistic_split(
    root: str,
    n: int,
    split: str = "train",
    side: int | None = None,
    target_bytes: int = 100_000,
    pool: int = 256,
    quality: int = 90,
) -> int:
    """A large seed split for benchmarks: `n` unique JPEGs of realistic size; returns the TSV's bytes.

    Encoding 20k big JPEGs would take minutes, so `pool` crops of real photos are encoded once (at
    `side` px, or the side that averages `target_bytes`) and made unique per image by a JPEG comment.
    One caption per image, every third text naming a second image (as in MUGE).
    """
    import pybase64

    from tests.helpers.images import size_for_bytes

    side = side or size_for_bytes(target_bytes, quality)
    photos = [make_image(i, side, quality) for i in range(pool)]
    os.makedirs(root, exist_ok=True)
    tsv_path = os.path.join(root, f"{split}_imgs.tsv")
    with open(tsv_path, "wb") as tsv, open(os.path.join(root, f"{split}_texts.jsonl"), "w", encoding="utf-8") as texts:
        for i in range(n):
            jpeg, caption = photos[i % pool]
            comment = f"image {i}".encode()
            unique = jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]
            tsv.write(b"%d\t%s\n" % (1_000_000 + i, pybase64.b64encode(unique)))
            ids = [1_000_000 + i] if i % 3 else [1_000_000 + i, 1_000_000 + (i * 7 + 1) % n]
            texts.write(
                json.dumps({"text_id": i + 1, "text": f"{caption}（{i}）", "image_ids": ids}, ensure_ascii=False) + "\n"
            )
    return os.path.getsize(tsv_path)


def build_lmdb_chinese_clip(root: str, splits: list[str]) -> str:
    """Run Chinese-CLIP's own `build_lmdb_dataset.py` (cn-clip 1.6.0) on `root`; return `root/lmdb`."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "cn_clip.preprocess.build_lmdb_dataset",
            "--data_dir",
            root,
            "--splits",
            ",".join(splits),
        ],
        check=True,
        capture_output=True,
    )
    return os.path.join(root, "lmdb")


# ------------------------------------------------------------------------------------ bad records


def _append(path: str, lines: list[bytes]) -> int:
    """Append raw lines; return the line number of the first one."""
    with open(path, "rb") as f:
        first = f.read().count(b"\n") + 1
    with open(path, "ab") as f:
        f.write(b"".join(line + b"\n" for line in lines))
    return first


def plant_bad_records(root: str, split: str, truth: SeedSplit) -> list[tuple]:
    """Append one record of every bad kind to a split written by `write_seed_split`, plus one good
    image in URL-safe base64 that must be accepted. Updates `truth` and returns the exact rejects
    expected, as sorted (record, source file, line, reason) tuples."""
    tsv, jsonl = f"{split}_imgs.tsv", f"{split}_texts.jsonl"
    good_id = next(iter(truth.images))
    jpeg, _ = make_image(10_001, 96, 80)
    b64 = base64.b64encode(jpeg)
    urlsafe_jpeg = next(
        d
        for d in (make_image(10_002 + i, 48, 80)[0] for i in range(50))
        if b"+" in base64.b64encode(d) or b"/" in base64.b64encode(d)
    )
    image_lines = [
        (b"9000001\t!!not*base64!!", "invalid_base64"),
        (b"9000002\t" + base64.b64encode("这不是图片 not an image".encode()), "not_an_image"),
        (b"9000003\t" + base64.b64encode(jpeg[: len(jpeg) * 2 // 3]), "truncated_image"),
        (b"9000004", "missing_base64_field"),
        (b"9000005\t" + b64 + b"\textra", "extra_fields"),
        (b"", "blank_line"),
        (good_id.encode() + b"\t" + b64, "duplicate_image_id"),
        (b"\xff\xfe9000008\t" + b64, "non_utf8"),
        (b"9000009\t" + base64.urlsafe_b64encode(urlsafe_jpeg), None),  # URL-safe: accepted
    ]
    first = _append(os.path.join(root, tsv), [line for line, _ in image_lines])
    expected = [("image", tsv, first + k, reason) for k, (_, reason) in enumerate(image_lines) if reason]
    truth.images["9000009"] = urlsafe_jpeg
    next_text = max(t["text_id"] for t in truth.texts) + 1
    kept = {"text_id": next_text + 5, "text": "一张图片，另一张不存在", "image_ids": [int(good_id), 999999999]}
    url_text = {"text_id": next_text + 9, "text": "网址安全编码的图片", "image_ids": [9000009]}
    text_lines = [
        (b"{not json", [("text", "invalid_json")]),
        (json.dumps({"text_id": next_text, "image_ids": [int(good_id)]}).encode(), [("text", "missing_field")]),
        (
            json.dumps({"text": "没有编号", "image_ids": [int(good_id)]}, ensure_ascii=False).encode(),
            [("text", "missing_field")],
        ),
        (
            json.dumps({"text_id": next_text + 1, "text": "没有图片"}, ensure_ascii=False).encode(),
            [("text", "missing_field")],
        ),
        (
            json.dumps(
                {"text_id": next_text + 2, "text": "图片不存在", "image_ids": [999999998]}, ensure_ascii=False
            ).encode(),
            [("text", "unknown_image_ids"), ("pair", "unknown_image_id")],
        ),
        (
            json.dumps(
                {"text_id": next_text + 3, "text": "图片被拒", "image_ids": [9000003]}, ensure_ascii=False
            ).encode(),
            [("text", "images_rejected"), ("pair", "image_rejected")],
        ),
        ('{"text_id": 1, "text": "坏编码'.encode() + b'\xff"}', [("text", "non_utf8")]),
        (b"", [("text", "blank_line")]),
        (
            json.dumps(
                {"text_id": truth.texts[0]["text_id"], "text": "重复编号", "image_ids": [int(good_id)]},
                ensure_ascii=False,
            ).encode(),
            [("text", "duplicate_text_id")],
        ),
        (json.dumps(kept, ensure_ascii=False).encode(), [("pair", "unknown_image_id")]),
        (json.dumps(url_text, ensure_ascii=False).encode(), []),
    ]
    first = _append(os.path.join(root, jsonl), [line for line, _ in text_lines])
    expected += [
        (record, jsonl, first + k, reason) for k, (_, rejects) in enumerate(text_lines) for record, reason in rejects
    ]
    truth.texts += [{**kept, "image_ids": [int(good_id)]}, url_text]
    return sorted(expected)
