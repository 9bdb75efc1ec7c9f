"""Sharded embedding of an evaluation split.

Each rank embeds the images its loader share holds (the loader reads every image sample once across ranks).
Captions arrive attached to images, and a caption naming several images may sit on several ranks, so texts
are agreed on first: every rank sends its (text_id, text) pairs, all ranks build the same sorted list of
unique texts, and rank r embeds the r-th contiguous slice of it — no text twice, none missed.

The canonical order of a split (gallery index, file order of outputs) is images and texts sorted by id
(numerically where ids are numbers): it does not depend on the number of ranks or loader workers.
An image id seen twice within a source (e.g. pair-grouped shards) keeps its first occurrence (lowest rank,
earliest batch). The same id in two sources of ``a::b`` would be two different images under one id, and their
texts would land on the wrong image: that stops the evaluation (DataError, on every rank) naming the first one.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from PIL import Image

from cnclip_scale import comm
from cnclip_scale.data.sources import DataError
from cnclip_scale.eval.ids import id_key
from cnclip_scale.model.transforms import normalize_batch

THUMB_SIZE = 96


@dataclass
class Split:
    """One rank's view of an embedded split. Image features are this rank's share; everything else is global."""

    image_ids: list[str]  # all images, canonical order
    image_index: torch.Tensor  # canonical index of each local row (ascending)
    image_feats: torch.Tensor  # local rows (device, float32)
    text_ids: list[str]  # all texts, canonical order
    texts: list[str]
    text_feats: torch.Tensor  # all texts (device, float32)
    gt_text: torch.Tensor  # ground-truth pairs as canonical (text index, image index)
    gt_image: torch.Tensor
    local_captions: dict[str, list[str]] = field(default_factory=dict)  # local image id -> caption texts
    thumbs: dict[str, bytes] = field(default_factory=dict)  # local image id -> JPEG thumbnail
    loader_stats: dict = field(default_factory=dict)


def _thumbnail(image: torch.Tensor) -> bytes:
    pil = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    pil.thumbnail((THUMB_SIZE, THUMB_SIZE))
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


@contextmanager
def eval_mode(model):
    """Dropout off while embedding, the caller's mode back afterwards (the trainer validates mid-run)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _full_batch(x: torch.Tensor, rows: int | None) -> torch.Tensor:
    """``x`` grown to ``rows`` rows by repeating its last row (cut off again after the forward).

    A matrix product's rounding depends on its shape (BLAS and cuBLAS pick kernels and blockings by the row count), so
    an image's features would depend on how many others shared its batch, which changes with the number of ranks and
    loader workers. With every batch the same shape, features — and so rankings — are the same bits however the
    split was cut. Only each worker's last batch grows."""
    if rows is None or len(x) >= rows or len(x) == 0:
        return x
    return torch.cat([x, x[-1:].expand(rows - len(x), *x.shape[1:])])


def _autocast(device, dtype: torch.dtype):
    """The towers run in ``dtype``; what comes out is cast back to float32 by the callers: retrieval scores in half
    precision would turn near-equal candidates into exact ties and move recall away from fp32's."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype in (torch.float16, torch.bfloat16))


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str], *, device, dtype, batch_size: int = 256) -> torch.Tensor:
    """Embeddings of ``texts`` (normalised, float32 on ``device``; the towers run in ``dtype``), this process alone."""
    out = []
    for s in range(0, len(texts), batch_size):
        ids, mask = tokenizer(texts[s : s + batch_size])
        n = len(ids)
        with _autocast(device, dtype):
            feats = model.encode_text(_full_batch(ids.to(device), batch_size), _full_batch(mask.to(device), batch_size))
        out.append(feats[:n].float())
    dim = model.config.embed_dim
    return torch.cat(out) if out else torch.empty(0, dim, device=device)


def embed_texts_sharded(model, tokenizer, texts: list[str], *, device, dtype, batch_size: int = 256) -> torch.Tensor:
    """Every rank passes the same list; rank r embeds its contiguous slice; every rank gets all rows."""
    r, w, n = comm.rank(), comm.world(), len(texts)
    mine = embed_texts(
        model, tokenizer, texts[n * r // w : n * (r + 1) // w], device=device, dtype=dtype, batch_size=batch_size
    )
    return comm.gather_rows(mine)


@torch.no_grad()
def embed_split(model, loader, tokenizer, *, device, dtype, text_batch_size: int = 256, thumbs_limit: int = 0) -> Split:
    """Embed this rank's share of ``loader`` (an eval loader for this rank) and the split's texts.
    Keeps up to ``thumbs_limit`` image thumbnails per rank for the report (0: none)."""
    ids, sources, feats, pairs, captions, thumbs = [], [], [], [], {}, {}
    rows = getattr(loader, "batch_size", None)
    for batch in loader:
        images = normalize_batch(batch["images"].to(device, non_blocking=True))
        with _autocast(device, dtype):
            feats.append(model.encode_image(_full_batch(images, rows))[: len(images)].float())
        batch_sources = batch.get("sources") or [0] * len(batch["image_ids"])
        sources += batch_sources
        for k, (image_id, texts, source) in enumerate(zip(batch["image_ids"], batch["texts"], batch_sources)):
            image_id = str(image_id)
            ids.append(image_id)
            pairs += [(str(t), text, image_id, source) for t, text in texts]
            captions.setdefault(image_id, []).extend(text for _, text in texts)
            if len(thumbs) < thumbs_limit and image_id not in thumbs:
                thumbs[image_id] = _thumbnail(batch["images"][k])
    feats = torch.cat(feats) if feats else torch.empty(0, model.config.embed_dim, device=device)

    # Images: agree on the canonical order and on which copy of a repeated id counts.
    every = comm.gather_objects(list(zip(ids, sources)))
    first: dict[str, tuple[int, int]] = {}
    source_of: dict[str, int] = {}
    clashes: dict[str, tuple[int, int]] = {}
    for r, rank_ids in enumerate(every):
        for pos, (image_id, source) in enumerate(rank_ids):
            first.setdefault(image_id, (r, pos))
            if source_of.setdefault(image_id, source) != source:
                clashes.setdefault(image_id, tuple(sorted((source_of[image_id], source))))
    if clashes:  # every rank sees the same gathered lists, so every rank raises here: nothing waits
        _raise_clash(clashes, getattr(loader, "source_names", []))
    image_ids = sorted(first, key=id_key)
    image_pos = {image_id: k for k, image_id in enumerate(image_ids)}
    me = comm.rank()
    keep = [(image_pos[i], p) for p, i in enumerate(ids) if first[i] == (me, p)]
    keep.sort()
    image_index = torch.tensor([g for g, _ in keep], dtype=torch.long)
    image_feats = feats[torch.tensor([p for _, p in keep], dtype=torch.long, device=feats.device)]

    # Texts: the union of every rank's captions, deduplicated by text_id, then embedded once each.
    text_of: dict[str, str] = {}
    gt = set()
    text_source: dict[str, int] = {}
    text_clashes: dict[str, tuple[int, int]] = {}
    for rank_pairs in comm.gather_objects(pairs):
        for text_id, text, image_id, source in rank_pairs:
            text_of.setdefault(text_id, text)
            if text_source.setdefault(text_id, source) != source:
                text_clashes.setdefault(text_id, tuple(sorted((text_source[text_id], source))))
            gt.add((text_id, image_id))
    # Texts without ground truth ("image_ids": []): no image carries them; every rank's loader lists the same ones.
    # They are queries (predicted for) and gallery items of image→text, with no pair: recall never counts them.
    for text_id, text, source in getattr(loader, "queries", []):
        text_id = str(text_id)
        text_of.setdefault(text_id, text)
        if text_source.setdefault(text_id, source) != source:
            text_clashes.setdefault(text_id, tuple(sorted((text_source[text_id], source))))
    if text_clashes:  # a text id in two sources would merge two captions into one
        _raise_clash(text_clashes, getattr(loader, "source_names", []), "text")
    text_ids = sorted(text_of, key=id_key)
    text_pos = {t: k for k, t in enumerate(text_ids)}
    texts = [text_of[t] for t in text_ids]
    text_feats = embed_texts_sharded(model, tokenizer, texts, device=device, dtype=dtype, batch_size=text_batch_size)
    gt = sorted((text_pos[t], image_pos[i]) for t, i in gt)
    stats = loader.stats() if hasattr(loader, "stats") else {}
    return Split(
        image_ids,
        image_index,
        image_feats,
        text_ids,
        texts,
        text_feats,
        torch.tensor([t for t, _ in gt], dtype=torch.long),
        torch.tensor([i for _, i in gt], dtype=torch.long),
        captions,
        thumbs,
        stats,
    )


def _raise_clash(clashes: dict[str, tuple[int, int]], names: list[str], what: str = "image") -> None:
    first = min(clashes, key=id_key)
    a, b = (names[k] if k < len(names) else f"source {k}" for k in clashes[first])
    raise DataError(
        f"{what} id {first} is in two evaluated sources: {a} and {b} ({len(clashes)} colliding id(s)): "
        f"ids must be unique across the sources evaluated together; evaluate them separately"
    )


def gather_images(split: Split) -> torch.Tensor:
    """All image features in canonical order, on every rank (the all-gather mode)."""
    index = comm.gather_rows(split.image_index.to(split.image_feats.device))
    feats = comm.gather_rows(split.image_feats)
    out = torch.empty(len(split.image_ids), feats.shape[1], dtype=feats.dtype, device=feats.device)
    out[index] = feats
    return out
