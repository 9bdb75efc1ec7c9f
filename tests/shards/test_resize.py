"""`to_shards --resize`: output sizes per mode, never upscaled, alpha kept out, recorded in the manifest, read by
the loader, and resumed exactly (cnclip_scale/shards/resize.py)."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from cnclip_scale.shards.resize import Resize, resize_image, target_size
from tests.helpers.images import photos
from tests.helpers.seed_data import write_seed_dataset
from tests.helpers.shards import convert, read_tar_samples, shard_paths


def _photo(width: int, height: int, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    image = Image.fromarray(photos()[0][1]).resize((width, height), Image.BILINEAR)
    if mode == "RGBA":
        image = image.convert("RGBA")
        alpha = np.zeros((height, width), np.uint8)
        alpha[:, : width // 2] = 255  # left half opaque, right half fully transparent
        image.putalpha(Image.fromarray(alpha))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


@pytest.mark.parametrize(
    ("mode", "source", "expected"),
    [
        ("keep_ratio", (800, 600), (341, 256)),
        ("keep_ratio", (600, 800), (256, 341)),
        ("center_crop", (800, 600), (256, 256)),
        ("border", (800, 600), (256, 256)),
        # never upscaled: a small image keeps its size (center_crop crops to its shorter side, border pads)
        ("keep_ratio", (200, 120), (200, 120)),
        ("center_crop", (200, 120), (120, 120)),
        ("border", (200, 120), (256, 256)),
    ],
)
def test_output_size_per_mode(mode, source, expected):
    data, ext = resize_image(_photo(*source), "jpg", Resize(size=256, mode=mode))
    assert ext == "jpg" and _size(data) == expected


def test_nothing_is_upscaled_and_small_jpegs_keep_their_bytes():
    small = _photo(200, 120)
    assert resize_image(small, "jpg", Resize(size=256)) == (small, "jpg")
    scaled, _ = target_size(200, 120, Resize(size=256, mode="border"))
    assert scaled == (200, 120)
    out, _ = resize_image(small, "jpg", Resize(size=256, mode="border"))
    pixels = np.asarray(Image.open(io.BytesIO(out)))
    assert pixels[:60].max() < 20 and pixels[-60:].max() < 20  # the border is black padding, not stretched pixels


def test_border_keeps_the_whole_image_and_pads_the_short_side():
    out, _ = resize_image(_photo(800, 400), "jpg", Resize(size=200, mode="border"))
    pixels = np.asarray(Image.open(io.BytesIO(out))).astype(int)
    assert pixels.shape == (200, 200, 3)
    assert pixels[:45].max() < 20 and pixels[155:].max() < 20 and pixels[60:140].mean() > 30


def test_png_alpha_is_kept_out_and_quality_is_applied():
    png = _photo(400, 300, "PNG", "RGBA")
    out, ext = resize_image(png, "png", Resize(size=100))
    image = Image.open(io.BytesIO(out))
    assert (ext, image.format, image.mode, image.size) == ("jpg", "JPEG", "RGB", (133, 100))
    assert np.asarray(image)[:, 80:].min() > 235  # the transparent half is flattened on white
    low, _ = resize_image(_photo(800, 600), "jpg", Resize(size=256, jpeg_quality=30))
    high, _ = resize_image(_photo(800, 600), "jpg", Resize(size=256, jpeg_quality=95))
    assert len(low) < len(high) / 2


def test_bad_options_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError):
        Resize(size=0)
    with pytest.raises(ValueError):
        Resize(size=8, jpeg_quality=101)
    assert convert("--src", tmp_path, "--dst", tmp_path / "o", "--resize", "0") == 2
    assert "--resize" in capsys.readouterr().err


@pytest.fixture(scope="module")
def big_seed(tmp_path_factory):
    root = tmp_path_factory.mktemp("big_seed")
    return root, write_seed_dataset(str(root), {"train": 12}, size=160)


def test_resized_shards_record_it_and_the_loader_reads_them(big_seed, tmp_path):
    from cnclip_scale.data.pipeline import build_eval_loader

    root, truth = big_seed
    out = tmp_path / "out"
    args = ("--src", root, "--dst", out, "--splits", "train", "--samples-per-shard", "4", "--no-progress")
    assert convert(*args, "--resize", "64", "--resize-mode", "center_crop", "--jpeg-quality", "80") == 0
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    assert manifest["options"]["resize"] == {"size": 64, "mode": "center_crop", "jpeg_quality": 80}
    samples = read_tar_samples(shard_paths(out / "train"))
    assert len(samples) == len(truth["train"].images)
    for parts in samples.values():
        assert _size(parts["jpg"]) == (64, 64)
        image_id = str(json.loads(parts["json"])["image_id"])
        assert parts["jpg"] != truth["train"].images[image_id]
    loader = build_eval_loader(str(out / "train"), image_size=32, batch_size=5, workers=0, rank=0, world_size=1)
    keys = [k for batch in loader for k in batch["keys"]]
    assert sorted(keys) == sorted(samples)
    # a rerun with other resize options is another conversion: refused, not mixed into these shards
    assert convert(*args, "--resize", "48") == 2


def test_resume_with_resize_is_exact(big_seed, tmp_path):
    root, _ = big_seed
    out = tmp_path / "out"
    args = ("--src", root, "--dst", out, "--splits", "train", "--samples-per-shard", "3", "--no-progress")
    assert convert(*args, "--resize", "100", "--workers", "2") == 0
    first = {p.name: p.read_bytes() for p in (out / "train").iterdir()}
    tars = sorted(n for n in first if n.endswith(".tar"))
    (out / "train" / tars[1]).unlink()
    (out / "train" / tars[2]).unlink()
    (out / "train" / tars[2].replace(".tar", ".stats.json")).unlink()
    assert convert(*args, "--resize", "100") == 0
    again = {p.name: p.read_bytes() for p in (out / "train").iterdir()}
    assert [again[t] for t in tars] == [first[t] for t in tars]
    assert json.loads(again["manifest.json"])["resumed_shards"] == len(tars) - 2
