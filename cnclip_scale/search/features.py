"""The feature files an index is built from, as the evaluator writes them:

* ``{stem}.img_feat.npy`` (float32 N×D) + ``{stem}.img_ids.npy`` beside it (any ``*_feat.npy`` / ``*_ids.npy`` pair);
* the seed's JSONL, ``{"image_id": .., "feature": [..]}`` per line (or ``text_id``: the id key is read from the file).

A ``.npy`` is memory-mapped, so a collection larger than RAM is read block by block by the build.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cnclip_scale.errors import UserError
from cnclip_scale.eval.outputs import ids_array, read_features_jsonl

NORM_TOLERANCE = 1e-2  # fp16 features normalised then stored as float32 are within ~1e-3 of unit length
CHECK_BLOCK = 65536


class FeatureFileError(UserError):
    """A features or ids file that is missing, unreadable, or does not match the other."""


def ids_path_for(features: Path) -> Path:
    """``x.img_feat.npy`` -> ``x.img_ids.npy``; ``x.npy`` -> ``x.ids.npy``."""
    name = features.name
    if name.endswith("_feat.npy"):
        return features.with_name(name.removesuffix("_feat.npy") + "_ids.npy")
    return features.with_name(features.stem + ".ids.npy")


def read_features(path: str | Path, ids_path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(vectors float32 N×D, possibly memory-mapped; ids int64 or unicode, N) from either format, checked."""
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(f"{path}: no such features file")
    if path.suffix == ".jsonl":
        vectors, ids = _read_jsonl(path)
    elif path.suffix == ".npy":
        vectors, ids = _read_npy(path, Path(ids_path) if ids_path else ids_path_for(path))
    else:
        raise FeatureFileError(f"{path}: expected a .npy features file (with its ids .npy) or a seed .jsonl")
    check_vectors(vectors, ids, str(path))
    return vectors, ids


def _read_npy(path: Path, ids_path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not ids_path.is_file():
        raise FeatureFileError(
            f"{ids_path}: ids file missing (the evaluator writes it beside {path.name}; or pass --ids)"
        )
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
        ids = np.load(ids_path, allow_pickle=False)
    except ValueError as err:
        raise FeatureFileError(f"{path} / {ids_path}: not a plain .npy array ({err})") from None
    return vectors, ids


def _read_jsonl(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:
        keys = [k for k in json.loads(first) if k != "feature"] if first.strip() else []
    except json.JSONDecodeError:
        keys = []
    if len(keys) != 1:
        raise FeatureFileError(
            f'{path}: the first line is not a seed feature record ({{"image_id": .., "feature": [..]}})'
        )
    try:
        ids, vectors = read_features_jsonl(str(path), keys[0])
    except (json.JSONDecodeError, KeyError, ValueError) as err:
        raise FeatureFileError(f"{path}: not a seed feature JSONL ({type(err).__name__}: {err})") from None
    return vectors, ids_array(ids)


def check_vectors(vectors: np.ndarray, ids: np.ndarray, where: str) -> None:
    """2-D float32, one id per row, finite and L2-normalised (the index scores by inner product = cosine)."""
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise FeatureFileError(f"{where}: features must be a non-empty N×D array, got shape {vectors.shape}")
    if vectors.dtype != np.float32:
        raise FeatureFileError(f"{where}: features must be float32, got {vectors.dtype}")
    if ids.ndim != 1 or len(ids) != len(vectors):
        raise FeatureFileError(f"{where}: {len(vectors):,} vectors but {ids.size:,} ids")
    if ids.dtype.kind not in "iuU":
        raise FeatureFileError(f"{where}: ids must be integers or strings, got {ids.dtype}")
    for start in range(0, len(vectors), CHECK_BLOCK):
        norms = np.linalg.norm(np.asarray(vectors[start : start + CHECK_BLOCK]), axis=1)
        bad = ~(np.abs(norms - 1) <= NORM_TOLERANCE)  # NaN compares False: caught here too
        if bad.any():
            row = start + int(np.argmax(bad))
            raise FeatureFileError(
                f"{where}: row {row} has norm {norms[row - start]:.4g}; the index expects "
                "finite L2-normalised features (as the evaluator writes them)"
            )
