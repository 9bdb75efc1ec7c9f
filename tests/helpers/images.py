"""Real photos bundled with scikit-image and scikit-learn, turned into encoded images with Chinese
captions for tests, demos and benchmarks (no download). No package ships captions, so captions are
written from the photo's label plus the attributes we vary (crop position, colour cast), which keeps
retrieval non-trivial: the same subject appears with different captions.
"""

from __future__ import annotations

import io
import random
from functools import cache

import numpy as np
from PIL import Image

# skimage.data name -> Chinese label. All are bundled in the wheel (others need a download).
SKIMAGE_PHOTOS = {
    "astronaut": "宇航员",
    "chelsea": "橘猫",
    "coffee": "一杯咖啡",
    "rocket": "火箭发射",
    "hubble_deep_field": "深空星系",
    "immunohistochemistry": "组织切片",
    "retina": "视网膜",
    "colorwheel": "色轮",
    "camera": "摄影师",
    "moon": "月球表面",
    "coins": "硬币",
    "brick": "砖墙",
    "grass": "草地",
    "gravel": "碎石",
    "clock": "时钟",
    "cell": "细胞",
    "page": "书页",
    "text": "文字",
}
SKLEARN_PHOTOS = {"china.jpg": "中国寺庙", "flower.jpg": "花朵"}

POSITIONS = {"左上": (0, 0), "右上": (1, 0), "左下": (0, 1), "右下": (1, 1), "中间": (0.5, 0.5)}
CASTS = {"原色": (1.0, 1.0, 1.0), "偏红": (1.25, 0.9, 0.9), "偏绿": (0.9, 1.2, 0.9), "偏蓝": (0.9, 0.9, 1.3)}


@cache
def photos() -> tuple[tuple[str, np.ndarray], ...]:
    """(Chinese label, RGB uint8 array) for every bundled photo, in a fixed order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    out = []
    for name, label in SKIMAGE_PHOTOS.items():
        array = np.asarray(getattr(skimage.data, name)())
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        out.append((label, np.ascontiguousarray(array[..., :3].astype(np.uint8))))
    bundle = load_sample_images()
    for path, array in zip(bundle.filenames, bundle.images):
        out.append((SKLEARN_PHOTOS[path.rsplit("/", 1)[-1]], array))
    return tuple(out)


def make_image(index: int, size: int = 224, quality: int = 90, fmt: str = "JPEG", seed: int = 0) -> tuple[bytes, str]:
    """Encoded bytes and a Chinese caption for image number `index`.

    A crop (at a named position) of one bundled photo, colour-cast, resized to `size` x `size`, encoded
    as `fmt` ("JPEG", "PNG", "WEBP", ...) at `quality`. Same arguments, same bytes.
    """
    rng = random.Random(f"{seed}:{index}")
    label, array = photos()[index % len(photos())]
    position = rng.choice(list(POSITIONS))
    cast = rng.choice(list(CASTS))
    h, w = array.shape[:2]
    side = int(min(h, w) * rng.uniform(0.55, 0.9))
    fx, fy = POSITIONS[position]
    top, left = int((h - side) * fy), int((w - side) * fx)
    crop = array[top : top + side, left : left + side].astype(np.float32) * np.array(CASTS[cast], np.float32)
    image = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
    caption = f"{position}视角的{label}，{cast}色调" if cast != "原色" else f"{position}视角的{label}"
    return buffer.getvalue(), caption


def size_for_bytes(target_bytes: int, quality: int = 90) -> int:
    """The square side whose JPEGs average about `target_bytes` at `quality` (measured, not guessed)."""
    side = 256
    for _ in range(6):
        mean = sum(len(make_image(i, side, quality)[0]) for i in range(len(photos()))) / len(photos())
        side = max(16, int(side * (target_bytes / mean) ** 0.5))
    return side
