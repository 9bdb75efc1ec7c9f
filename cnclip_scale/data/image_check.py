"""Cheap image validation: real format from the header, plus the format's end marker.

A full decode costs ~100x more than this and is only done when asked (`full=True`). The end-marker
check is what catches the common damage in base64 dumps: images cut short.
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


def check_image(data: bytes, full: bool = False) -> str:
    """Return the extension for `data` ("jpg", "png", ...) or raise BadRecord saying what is wrong."""
    if not data:
        raise BadRecord("not_an_image", "0 bytes")
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
