"""Issue 13 item 8: 16-bit PNGs (I;16 grayscale, 48-bit RGB) decode to their 8-bit values in training and in
evaluation (I;16 used to become an almost white image: PIL's convert("RGB") clips 16-bit values at 255)."""

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cnclip_scale.data.decode import decode_image
from cnclip_scale.data.pipeline import Reading, build_eval_loader, build_train_loader
from cnclip_scale.model.transforms import ImageTransform
from cnclip_scale.shards.convert import Options, convert_split
from cnclip_scale.shards.writer import Destination

SIDE = 32
GRAY16 = 20000  # 8-bit: 20000 >> 8 = 78 (clipping made it 255)
RGB48 = (1000, 30000, 50000)  # 8-bit: 3, 117, 195


def _png_gray16(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((SIDE, SIDE), value, dtype=np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def _png_rgb48(rgb) -> bytes:
    """PIL cannot write 48-bit PNGs: the chunks by hand (IHDR bit depth 16, colour type 2)."""
    row = b"\0" + np.tile(np.array(rgb, dtype=">u2"), SIDE).tobytes()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", SIDE, SIDE, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * SIDE))
        + chunk(b"IEND", b"")
    )


EXPECTED = {"1": (GRAY16 >> 8,) * 3, "2": tuple(v >> 8 for v in RGB48)}


@pytest.fixture(scope="module")
def png16_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("png16")
    images = {"1": _png_gray16(GRAY16), "2": _png_rgb48(RGB48)}
    assert Image.open(io.BytesIO(images["1"])).mode == "I;16"
    with open(root / "train_imgs.tsv", "w") as f:
        f.writelines(f"{i}\t{base64.b64encode(d).decode()}\n" for i, d in images.items())
    with open(root / "train_texts.jsonl", "w") as f:
        f.writelines(
            json.dumps({"text_id": 10 + int(i), "text": f"图{i}", "image_ids": [int(i)]}) + "\n" for i in images
        )
    manifest = convert_split(
        str(root), "train", Destination(str(root / "shards")), Options(progress=False, verify_full=True)
    )
    assert manifest["records"]["images"]["written"] == 2
    return str(root), str(root / "shards" / "train")


def _colours(images, image_ids):
    return {i: tuple(int(c) for c in img.reshape(3, -1).float().mean(1).round()) for i, img in zip(image_ids, images)}


def test_decode_image_scales_16_bit_to_8_bit():
    for data, want in ((_png_gray16(GRAY16), EXPECTED["1"]), (_png_rgb48(RGB48), EXPECTED["2"])):
        image = decode_image(data, SIDE)
        assert image.mode == "RGB"
        assert np.asarray(image).reshape(-1, 3).mean(0).round().tolist() == list(want)


def test_training_batches_hold_the_8_bit_values(png16_shards, tokenizer):
    _, shards = png16_shards
    loader = build_train_loader(
        Reading(sources=shards, batch_size=2),
        tokenizer=tokenizer,
        transform=ImageTransform(resolution=SIDE),
        rank=0,
        world_size=1,
        seed=0,
    )
    (batch,) = list(loader)
    assert _colours(batch["images"], batch["image_ids"]) == EXPECTED
    assert loader.stats()["corrupt_samples"] == 0


@pytest.mark.parametrize("which", ["shards", "seed"])
def test_evaluation_batches_hold_the_8_bit_values(png16_shards, which):
    seed, shards = png16_shards
    source = shards if which == "shards" else seed
    loader = build_eval_loader(source, image_size=SIDE, batch_size=4, workers=0, rank=0, world_size=1, split="train")
    (batch,) = list(loader)
    assert _colours(batch["images"], batch["image_ids"]) == EXPECTED
