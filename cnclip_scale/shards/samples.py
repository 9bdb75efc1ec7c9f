"""What one WebDataset sample looks like: its key and its JSON member.

Keys must be unique and safe as tar member names whatever the ids contain: webdataset splits a
member name at the first "." after the last "/", so neither may appear in a key.
"""

from __future__ import annotations

import hashlib
import json
import string

_SAFE = frozenset(string.ascii_letters + string.digits)
_MAX_KEY = 80  # keeps member names well inside the 100-byte ustar name field


def _escape(value) -> str:
    # Everything but [A-Za-z0-9] becomes _HH per UTF-8 byte, so "-" can join ids without ambiguity.
    return "".join(
        c if c in _SAFE else "".join(f"_{b:02X}" for b in c.encode("utf-8", "surrogatepass")) for c in str(value)
    )


def sample_key(image_id: str, text_id=None) -> str:
    """`image_id` (group=image) or `image_id-text_id` (group=pair), escaped; long keys are hashed
    under a "_h" prefix that escaping never produces."""
    key = _escape(image_id) if text_id is None else f"{_escape(image_id)}-{_escape(text_id)}"
    if len(key) > _MAX_KEY:
        key = "_h" + hashlib.sha256(key.encode()).hexdigest()[:40]
    return key


def id_value(image_id: str) -> int | str:
    """The id as JSON: an int when the TSV/LMDB text is a plain decimal, else the string itself."""
    if image_id.isdigit() and image_id.isascii() and str(int(image_id)) == image_id:
        return int(image_id)
    return image_id


def caption_json(image_id: str, texts) -> bytes:
    """The `.json` member: {"image_id", "texts": [{"text_id", "text"}, ...]} (one text in group=pair)."""
    doc = {"image_id": id_value(image_id), "texts": [{"text_id": t, "text": s} for t, s in texts]}
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")
