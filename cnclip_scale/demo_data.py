"""The demo dataset: real handwritten digits (scikit-learn's bundled scans) in colours, with Chinese captions.

Each image is one of 1,797 real 8×8 handwritten digits, upscaled, drawn in one of six colours on a light or dark
background. Captions name the colour and the digit ("一个红色的手写数字七"), so retrieval needs
both attributes: six images share each digit and ten share each colour. Written in the Chinese-CLIP seed layout
(``{split}_imgs.tsv`` base64 + ``{split}_texts.jsonl``); train texts describe one image each, valid/test texts
describe a colour × digit class and list every image of it (several ground-truth images per text, as in MUGE).
Also writes ``zeroshot_classes.txt`` (the 60 class names, one per line): a valid/test image's caption is its class
name, which is how the evaluator labels it for zero-shot accuracy.
"""

from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS = "零一二三四五六七八九"
COLOURS = {
    "红色": (220, 40, 40),
    "绿色": (40, 170, 60),
    "蓝色": (40, 80, 220),
    "黄色": (230, 200, 30),
    "紫色": (150, 60, 190),
    "橙色": (245, 130, 20),
}
TRAIN_TEMPLATES = [
    "一个{c}的手写数字{d}",
    "{c}的数字{d}",
    "手写的{d}，颜色是{c}",
    "这是{c}的{d}",
    "图片里有一个{c}的数字{d}",
]
CLASS_TEMPLATE = "一个{c}的手写数字{d}"


def class_name(colour: str, digit: int) -> str:
    return CLASS_TEMPLATE.format(c=colour, d=DIGITS[digit])


def render(digit_image: np.ndarray, colour: tuple, rng: random.Random, size: int) -> bytes:
    """An 8×8 scan (0-16) → a JPEG: the strokes in ``colour`` on a light or dark background."""
    ink = Image.fromarray((digit_image / 16.0 * 255).astype(np.uint8)).resize((size * 3 // 4,) * 2, Image.BICUBIC)
    dark = rng.random() < 0.5
    background = tuple(rng.randint(10, 60) if dark else rng.randint(200, 250) for _ in range(3))
    canvas = Image.new("RGB", (size, size), background)
    offset = (size // 8, size // 8)  # centred: a tiny ViT trained for minutes learns shapes it need not also find
    canvas.paste(Image.new("RGB", ink.size, colour), offset, mask=ink)
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=90)
    return out.getvalue()


def build(
    root: str | Path, size: int = 32, splits=(("train", 0.78), ("valid", 0.07), ("test", 0.15)), seed: int = 0
) -> dict[str, dict]:
    """Write the seed-layout demo dataset under ``root``; returns per-split counts. Deterministic for a seed."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rng = random.Random(seed)
    order = list(range(len(digits.images)))
    rng.shuffle(order)
    colours = list(COLOURS)
    counts, start, image_id, text_id = {}, 0, 100000, 1
    for split, fraction in splits:
        n = round(fraction * len(order)) if split != splits[-1][0] else len(order) - start
        members = order[start : start + n]
        start += n
        by_class: dict[str, list[int]] = {}
        texts = []
        with open(root / f"{split}_imgs.tsv", "w", encoding="ascii") as tsv:
            for index in members:
                colour = rng.choice(colours)
                digit = int(digits.target[index])
                data = render(digits.images[index], COLOURS[colour], rng, size)
                tsv.write(f"{image_id}\t{base64.b64encode(data).decode('ascii')}\n")
                name = class_name(colour, digit)
                by_class.setdefault(name, []).append(image_id)
                if split == "train":
                    caption = rng.choice(TRAIN_TEMPLATES).format(c=colour, d=DIGITS[digit])
                    texts.append({"text_id": text_id, "text": caption, "image_ids": [image_id]})
                    text_id += 1
                image_id += 1
        if split != "train":  # one query per colour × digit class, listing every image of that class
            for name, ids in sorted(by_class.items()):
                texts.append({"text_id": text_id, "text": name, "image_ids": ids})
                text_id += 1
        with open(root / f"{split}_texts.jsonl", "w", encoding="utf-8") as f:
            for t in texts:
                f.write(json.dumps(t, ensure_ascii=False) + "\n")
        counts[split] = {"images": len(members), "texts": len(texts), "classes": len(by_class)}
    (root / "zeroshot_classes.txt").write_text(
        "".join(class_name(c, d) + "\n" for c in colours for d in range(10)), encoding="utf-8"
    )
    return counts
