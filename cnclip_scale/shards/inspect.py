"""What `cnclip inspect` (``python tools/inspect_shards.py``) does with a split written by to_shards.

Reads a split (local or any fsspec URL): prints its counts, checks every shard is there at its recorded size (and
with ``verify``, its sha256 and sample count against the stats), decodes N samples and prints id and captions, and
draws a PNG contact sheet.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import tarfile
from collections.abc import Iterator

from cnclip_scale.data.manifest import check_manifest, check_stats
from cnclip_scale.shards.writer import Destination, DestinationError

THUMB = 160


class ShardContentError(Exception):
    """A shard holds something to_shards never writes (e.g. a link member); one line naming shard and member."""


def iter_samples(dest: Destination, rel: str) -> Iterator[dict]:
    """Samples of one shard as {"__key__", ext: bytes}, streaming (members of a sample are adjacent)."""
    current: dict = {}
    with dest.fs.open(dest.path(rel), "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                kind = "a symbolic link" if member.issym() else "a hard link" if member.islnk() else "not a file"
                raise ShardContentError(
                    f"{dest.path(rel)}: member {member.name} is {kind}"
                    + (", not a file" if member.issym() or member.islnk() else "")
                    + " (to_shards writes regular files only)"
                )
            key, ext = member.name.split(".", 1)
            if current and current["__key__"] != key:
                yield current
                current = {}
            current["__key__"] = key
            current[ext] = tar.extractfile(member).read()
    if current:
        yield current


def verify_shard(dest: Destination, split: str, entry: dict) -> list[str]:
    """Problems with one shard: sha256, bytes and sample count against the manifest and its stats."""
    sha, size, samples = hashlib.sha256(), 0, 0
    with dest.fs.open(dest.path(f"{split}/{entry['shard']}"), "rb") as f:
        while chunk := f.read(8 << 20):
            sha.update(chunk)
            size += len(chunk)
    try:
        samples = sum(1 for _ in iter_samples(dest, f"{split}/{entry['shard']}"))
    except ShardContentError as err:
        return [f"{entry['shard']}: {str(err).split(': ', 1)[1]}"]
    stats_rel = f"{split}/{entry['shard'].replace('.tar', '.stats.json')}"
    stats = dest.read_json(stats_rel)
    stats = {} if stats is None else check_stats(stats, dest.path(stats_rel))
    problems = []
    for what, got, want in (
        ("sha256", sha.hexdigest(), entry["sha256"]),
        ("bytes", size, entry["bytes"]),
        ("samples", samples, entry["samples"]),
        ("stats sha256", sha.hexdigest(), stats.get("sha256")),
    ):
        if got != want:
            problems.append(f"{entry['shard']}: {what} {got} != recorded {want}")
    return problems


def _cjk_font(size: int):
    import matplotlib  # its font list covers fonts installed the usual ways
    from PIL import ImageFont

    patterns = (
        "/usr/share/fonts/**/*CJK*",
        "/usr/share/fonts/**/*wqy*",
        "/usr/share/fonts/**/*Hei*",
        "/usr/share/fonts/**/*Song*",
    )
    candidates = [p for pattern in patterns for p in glob.glob(pattern, recursive=True)]
    candidates += [p for p in glob.glob(matplotlib.get_data_path() + "/fonts/ttf/*") if "CJK" in p]
    for path in candidates:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            continue
    return None


def montage(samples: list[dict], out_path: str, columns: int = 4) -> bool:
    """Contact sheet of thumbnails with id and caption; returns whether a CJK font drew the captions."""
    from PIL import Image, ImageDraw, ImageFont
    from PIL.PngImagePlugin import PngInfo

    from cnclip_scale.data.image_check import to_rgb

    font = _cjk_font(14)
    fallback = ImageFont.load_default()
    rows = -(-len(samples) // columns)
    sheet = Image.new("RGB", (columns * (THUMB + 10), rows * (THUMB + 50)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, s in enumerate(samples):
        x, y = (k % columns) * (THUMB + 10) + 5, (k // columns) * (THUMB + 50) + 5
        image = to_rgb(Image.open(io.BytesIO(s["image"])))
        image.thumbnail((THUMB, THUMB))
        sheet.paste(image, (x, y))
        meta = json.loads(s["json"])
        draw.text((x, y + THUMB + 2), f"id {meta['image_id']}", fill="black", font=fallback)
        if font is not None and meta["texts"]:
            draw.text((x, y + THUMB + 18), meta["texts"][0]["text"][:11], fill="black", font=font)
    info = PngInfo()
    info.add_itxt("captions", json.dumps([json.loads(s["json"]) for s in samples], ensure_ascii=False))
    sheet.save(out_path, pnginfo=info)
    return font is not None


def open_split(url: str, storage_options: dict) -> tuple[Destination, str, dict]:
    """(destination of the parent folder, split name, checked manifest) of a split folder URL."""
    parent, _, split = url.rstrip("/").rpartition("/")
    dest = Destination(parent or ".", storage_options)
    manifest = dest.read_json(f"{split}/manifest.json")
    if manifest is None:
        raise DestinationError(f"no readable manifest.json at {url} (not converted, or still running)")
    if isinstance(manifest, dict) and manifest.get("format") == "cnclip_scale.index/1":
        totals = manifest.get("totals", {})
        raise DestinationError(
            f"{url}: manifest.json was written by --index ({totals.get('samples')} samples in {totals.get('shards')} "
            "shards of another tool): the loaders read it; --verify, --show and --montage read to_shards' splits"
        )
    check_manifest(manifest, dest.path(f"{split}/manifest.json"), full=True)
    return dest, split, manifest


def _check_queries(dest: Destination, split: str, queries, on_disk: dict, verify: bool) -> list[str]:
    """The split's texts without ground truth (the manifest's ``queries`` file): present at its recorded size, and
    with ``verify`` its sha256; prints their count."""
    if not isinstance(queries, dict):
        return []
    name, size = queries.get("file"), queries.get("bytes")
    print(f"  {queries.get('texts')} texts without images (queries without ground truth) in {name}")
    if name not in on_disk:
        return [f"{name}: missing"]
    if on_disk[name] != size:
        return [f"{name}: {on_disk[name]} bytes, recorded {size}"]
    if verify and hashlib.sha256(dest.fs.cat_file(dest.path(f"{split}/{name}"))).hexdigest() != queries.get("sha256"):
        return [f"{name}: sha256 differs from the manifest"]
    return []


def inspect_split(
    dest: Destination,
    split: str,
    manifest: dict,
    *,
    verify: bool = False,
    show: int = 0,
    montage_path: str | None = None,
) -> int:
    """Print the split's counts and shard check (sha256 and sample counts too with ``verify``), ``show`` decoded
    samples, and write a contact sheet to ``montage_path``; 1 if a shard is missing or differs, else 0."""
    t = manifest["totals"]
    print(
        f"{split}: {t['shards']} shards, {t['samples']} samples (group={manifest['group']}), {t['images']} images, "
        f"{t['texts']} texts, {t['pairs']} pairs, {t['bytes'] / 1e6:.1f} MB"
    )
    for kind, row in manifest["records"].items():
        print(
            f"  {kind}: input {row['input']} = written {row['written']} + rejected {row['rejected']}"
            + (f"  {manifest['rejects'].get(kind, {})}" if row["rejected"] else "")
        )
    on_disk = dest.list_sizes(split)
    problems = [
        f"{e['shard']}: missing"
        if e["shard"] not in on_disk
        else f"{e['shard']}: {on_disk[e['shard']]} bytes, recorded {e['bytes']}"
        for e in manifest["shards"]
        if on_disk.get(e["shard"]) != e["bytes"]
    ]
    if verify and not problems:
        for entry in manifest["shards"]:
            problems += verify_shard(dest, split, entry)
    problems += _check_queries(dest, split, manifest.get("queries"), on_disk, verify)
    print(
        "\n".join(f"  PROBLEM {p}" for p in problems)
        if problems
        else f"  all {t['shards']} shards present" + (", sha256 and sample counts match" if verify else "")
    )
    wanted = show or (16 if montage_path else 0)
    shown = []
    for entry in manifest["shards"] if wanted else []:
        for sample in iter_samples(dest, f"{split}/{entry['shard']}"):
            if len(shown) == wanted:
                break
            image_ext = next(k for k in sample if k not in ("__key__", "json", "txt"))
            sample["image"] = sample[image_ext]
            shown.append(sample)
        if len(shown) == wanted:
            break
    if show:
        from PIL import Image

        for s in shown:
            meta, image = json.loads(s["json"]), Image.open(io.BytesIO(s["image"]))
            image.load()
            captions = " | ".join(f"[{x['text_id']}] {x['text']}" for x in meta["texts"]) or "(no captions)"
            size = f"{image.size[0]}x{image.size[1]}"
            print(f"  {s['__key__']}: image {meta['image_id']} {image.format} {size}: {captions}")
    if montage_path:
        drew_captions = montage(shown, montage_path)
        print(
            f"  montage of {len(shown)} samples -> {montage_path}"
            + (
                ""
                if drew_captions
                else " (no CJK font here: ids drawn; captions are in the PNG's 'captions' text chunk)"
            )
        )
    return 1 if problems else 0
