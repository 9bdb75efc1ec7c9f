"""`to_shards --resize N`: images made small at conversion so the loader's decode keeps a GPU fed.

Modes, named as img2dataset names them (pixels are never upscaled in any mode):
  keep_ratio   the shorter side becomes N, aspect kept (an image whose shorter side is <= N keeps its size)
  center_crop  as keep_ratio, then the centre square: N x N (an image whose shorter side s < N: s x s)
  border       the longer side becomes N (if larger), then black borders pad it to exactly N x N

Output is JPEG at `jpeg_quality`; alpha is kept out (RGBA/LA/P-with-transparency images are flattened on white), so
every resized sample is an RGB `.jpg`. A JPEG that needs no change (keep_ratio, already small enough) keeps its
exact bytes. JPEG decode uses libjpeg's DCT scaling (PIL `draft`) to the smallest scale still >= the target, which
makes the converter's extra work a fraction of a full decode.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal, get_args

from PIL import Image

from cnclip_scale.data.seed_formats import BadRecord

ResizeMode = Literal["keep_ratio", "center_crop", "border"]


@dataclass(frozen=True, kw_only=True)
class Resize:
    size: int
    mode: ResizeMode = "keep_ratio"
    jpeg_quality: int = 95

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"Resize.size must be at least 1, got {self.size}")
        if self.mode not in get_args(ResizeMode):
            raise ValueError(f"Resize.mode: {self.mode!r} is not one of {', '.join(get_args(ResizeMode))}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"Resize.jpeg_quality must be 1..100, got {self.jpeg_quality}")

    def as_dict(self) -> dict:
        return {"size": self.size, "mode": self.mode, "jpeg_quality": self.jpeg_quality}


def target_size(width: int, height: int, r: Resize) -> tuple[tuple[int, int], tuple[int, int]]:
    """((scaled w, h), (output w, h)) for an image of width x height; the scale is never above 1."""
    side = min(width, height) if r.mode != "border" else max(width, height)
    scale = min(1.0, r.size / side)
    scaled = (max(1, round(width * scale)), max(1, round(height * scale)))
    if r.mode == "keep_ratio":
        return scaled, scaled
    if r.mode == "center_crop":
        side = min(r.size, *scaled)
        return scaled, (side, side)
    return scaled, (r.size, r.size)


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image


def resize_image(data: bytes, ext: str, r: Resize) -> tuple[bytes, str]:
    """(new bytes, extension) for one validated image; BadRecord("corrupt_image") if it does not decode."""
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        scaled, out = target_size(width, height, r)
        if ext == "jpg" and scaled == (width, height) and out == scaled and image.mode in ("RGB", "L"):
            return data, ext  # nothing to change: the exact bytes, no generation loss
        if image.format == "JPEG":
            image.draft("RGB", scaled)  # DCT-domain downscale to >= scaled: most of the decode saved
        image = _flatten(image)
        if image.size != scaled:
            image = image.resize(scaled, Image.BICUBIC, reducing_gap=3.0)
        if out != scaled:
            if r.mode == "center_crop":
                left, top = (scaled[0] - out[0]) // 2, (scaled[1] - out[1]) // 2
                image = image.crop((left, top, left + out[0], top + out[1]))
            else:  # border
                canvas = Image.new("RGB", out, (0, 0, 0))
                canvas.paste(image, ((out[0] - scaled[0]) // 2, (out[1] - scaled[1]) // 2))
                image = canvas
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=r.jpeg_quality)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise BadRecord("corrupt_image", f"cannot resize: {type(err).__name__}: {err}"[:200]) from None
    return buffer.getvalue(), "jpg"
