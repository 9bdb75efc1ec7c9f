"""Cheap image validation: real format from the header, plus the format's end marker.

A full decode costs ~100x more than this and is only done when asked (`full=True`). The end-marker
check is what catches the common damage in base64 dumps: images cut short. JPEG and PNG (nearly all
of Chinese-CLIP's data) are checked by walking their headers here, which is ~20x cheaper than
PIL.Image.open (it parses every quantisation and Huffman table); other formats go through PIL.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from cnclip_scale.data.seed_formats import BadRecord

# PIL format name -> file extension used for the tar member (what webdataset decoders key on).
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}

_TAIL = 64  # encoders may pad a few bytes after the end marker


def _complete(fmt: str, data: bytes) -> bool:
    tail = data[-_TAIL:]
    if fmt == "JPEG":
        return b"\xff\xd9" in tail
    if fmt == "PNG":
        return b"IEND\xaeB`\x82" in tail
    if fmt == "GIF":
        return tail.rstrip(b"\0").endswith(b"\x3b")
    if fmt == "WEBP":  # RIFF header states the file length
        return int.from_bytes(data[4:8], "little") + 8 <= len(data)
    if fmt == "BMP":  # BITMAPFILEHEADER states the file length
        return int.from_bytes(data[2:6], "little") <= len(data)
    return True  # TIFF has no end marker; --verify full catches damage there


def _magic_format(data: bytes) -> str | None:
    for magic, fmt in ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"BM", "BMP")):
        if data.startswith(magic):
            return fmt
    return "WEBP" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else None


def _check_jpeg_header(data: bytes) -> None:
    """Walk the marker segments from SOI to the frame header (SOFn), which must hold a real size."""
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            raise BadRecord("not_an_image", f"JPEG header broken at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > end:
                break
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")  # (the height, at pos + 5, may be 0 until the DNL)
            if not width:
                raise BadRecord("not_an_image", "JPEG frame header with zero width")
            return
        if marker in (0xDA, 0xD9):
            raise BadRecord("not_an_image", "JPEG scan before any frame header")
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    raise BadRecord("truncated_image", f"JPEG of {len(data)} bytes ends inside its header")


def _check_png_header(data: bytes) -> None:
    if len(data) < 33:
        raise BadRecord("truncated_image", f"PNG of {len(data)} bytes ends inside its header")
    if (
        data[8:16] != b"\x00\x00\x00\x0dIHDR"
        or not int.from_bytes(data[16:20], "big")
        or not int.from_bytes(data[20:24], "big")
    ):
        raise BadRecord("not_an_image", "PNG without a valid IHDR chunk")


_FAST = {"JPEG": (_check_jpeg_header, "jpg"), "PNG": (_check_png_header, "png")}


# 16-bit and 32-bit integer single-channel modes (16-bit grayscale PNG/TIFF). PIL's convert() clips their
# values at 255 instead of scaling, so a 16-bit photo would come out almost white.
_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB with wide grayscale scaled to 8 bits (high byte), not clipped. 48-bit RGB needs
    nothing here: PIL's PNG decoder already keeps the high byte of each 16-bit sample."""
    if image.mode in _WIDE_GRAY:
        import numpy as np  # only for the rare 16-bit image; the converter's hot path never gets here

        wide = np.asarray(image).astype(np.int64)
        # "I" holds whatever range its file had; PNG and TIFF 16-bit land in 0..65535.
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def check_image(data: bytes, full: bool = False) -> str:
    """Return the extension for `data` ("jpg", "png", ...) or raise BadRecord saying what is wrong."""
    if not data:
        raise BadRecord("not_an_image", "0 bytes")
    fmt = _magic_format(data)
    if fmt in _FAST and not full:
        check_header, ext = _FAST[fmt]
        check_header(data)
        if not _complete(fmt, data):
            raise BadRecord("truncated_image", f"{fmt} of {len(data)} bytes has no end marker")
        return ext
    try:
        image = Image.open(io.BytesIO(data), formats=list(EXTENSIONS))
    except UnidentifiedImageError:
        raise BadRecord("not_an_image", f"unrecognised header {data[:8].hex()}") from None
    except Exception as err:  # header parsers raise assorted errors on garbage and on cut-short files
        fmt = _magic_format(data)
        cut = "truncated" in str(err).lower() or (fmt is not None and not _complete(fmt, data))
        raise BadRecord("truncated_image" if cut else "not_an_image", f"{type(err).__name__}: {err}") from None
    fmt = image.format
    if not _complete(fmt, data):
        raise BadRecord("truncated_image", f"{fmt} of {len(data)} bytes has no end marker")
    if full:
        try:
            image.load()
        except Exception as err:
            raise BadRecord("corrupt_image", f"{fmt} does not decode: {type(err).__name__}: {err}") from None
    return EXTENSIONS[fmt]
