"""Zero-shot classification: class names × Chinese prompt templates → one embedding per class (mean of the
normalised template embeddings, re-normalised); each image's label comes from its captions.

Labels: a split prepared for classification carries the class name as the caption, so an image's label is
the class whose name equals one of its captions; failing that, the longest class name contained in a
caption; images matching no class are not scored (counted as ``unlabelled``).
"""

from __future__ import annotations

import torch

from cnclip_scale import comm
from cnclip_scale.eval.embed import embed_texts_sharded, eval_mode

# Our own prompt set (``{}`` is the class name): plain, photographic and drawn renderings, a few conditions.
TEMPLATES = [
    "{}",
    "一张{}的照片。",
    "这是一张{}的图片。",
    "图片里是{}。",
    "照片中可以看到{}。",
    "拍到了{}。",
    "{}的特写。",
    "一张很清楚的{}照片。",
    "一张有点模糊的{}照片。",
    "光线昏暗时拍的{}。",
    "黑白照片里的{}。",
    "手绘的{}。",
    "一幅{}的插画。",
    "{}的卡通形象。",
    "近处拍的{}。",
    "远处拍的{}。",
    "网上随手找到的{}图片。",
    "商品图：{}。",
]


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def read_templates(path: str) -> list[str]:
    templates = read_lines(path)
    bad = [t for t in templates if "{}" not in t]
    if bad or not templates:
        raise ValueError(f"{path}: every template needs a '{{}}' for the class name; bad: {bad[:3]}")
    return templates


def class_embeddings(model, tokenizer, classes: list[str], templates: list[str], *, device, dtype) -> torch.Tensor:
    """C×D: per class the re-normalised mean of its normalised template embeddings (texts split over ranks)."""
    prompts = [t.replace("{}", c) for c in classes for t in templates]
    with eval_mode(model):  # a freshly loaded model is in training mode: its dropout made zero-shot vary run to run
        feats = embed_texts_sharded(model, tokenizer, prompts, device=device, dtype=dtype).float()
    feats = feats.view(len(classes), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(feats, dim=-1)


def label_of(captions: list[str], classes: list[str], index: dict[str, int]) -> int | None:
    for c in captions:
        if c.strip() in index:
            return index[c.strip()]
    found = [k for k, name in enumerate(classes) if any(name in c for c in captions)]
    return max(found, key=lambda k: len(classes[k])) if found else None


def zeroshot_accuracy(
    image_feats: torch.Tensor,
    image_ids: list[str],
    captions: dict[str, list[str]],
    class_feats: torch.Tensor,
    classes: list[str],
) -> dict:
    """Top-1/top-5 accuracy over the labelled images of every rank (each rank passes its own images)."""
    index = {name: k for k, name in enumerate(classes)}
    labels = [label_of(captions.get(i, []), classes, index) for i in image_ids]
    rows = [k for k, lab in enumerate(labels) if lab is not None]
    correct = {1: 0, 5: 0}
    if rows:
        logits = image_feats[rows].float() @ class_feats.to(image_feats.device).T
        target = torch.tensor([labels[k] for k in rows], device=logits.device)
        top = logits.topk(min(5, len(classes)), dim=1).indices
        for k in correct:
            correct[k] = int((top[:, :k] == target[:, None]).any(dim=1).sum())
    totals = [0, 0, 0, 0]
    for part in comm.gather_objects([correct[1], correct[5], len(rows), len(labels) - len(rows)]):
        totals = [a + b for a, b in zip(totals, part)]
    top1, top5, n, unlabelled = totals
    return {
        "top1": 100.0 * top1 / n if n else 0.0,
        "top5": 100.0 * top5 / n if n else 0.0,
        "images": n,
        "unlabelled": unlabelled,
        "classes": len(classes),
    }
