"""A searchable index over L2-normalised float32 features and their ids: exact, HNSW or IVF-PQ (``params.py`` says
which), saved as a directory:

    index.json    kind, faiss factory string and parameters, tuning result, sizes (written last: its presence
                  means the directory is complete)
    ids.npy       int64 or unicode, row i = the id of vector i
    vectors.npy   float32 N×D: exact search reads it into RAM; the FAISS kinds memory-map it to re-rank
    index.faiss   the FAISS index (not for exact)

``search(queries, k) -> (scores float32 Q×k, ids Q×k)``, best first, ties by collection order (as the evaluator).
Scores are always exact inner products: exact search computes them, HNSW stores the float32 vectors, and IVF-PQ
re-scores its candidates from ``vectors.npy``.
"""

from __future__ import annotations

import json
import mmap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cnclip_scale.errors import UserError
from cnclip_scale.eval import retrieval

from . import params as P
from .tune import exact_topk, tune

FORMAT = "cnclip-vector-index"
VERSION = 1
INDEX_JSON, IDS_FILE, VECTORS_FILE, FAISS_FILE = "index.json", "ids.npy", "vectors.npy", "index.faiss"
ADD_BLOCK = 65536
TRAIN_POINTS_PER_LIST = 40  # FAISS warns below 39; more only slows k-means down
MIN_TRAIN = 65536  # PQ's 256 centroids per sub-quantizer want a few hundred points each
QUERY_BLOCK = 1024


class IndexSearchError(UserError):
    """A query, k or index directory that cannot be searched."""


class VectorIndex:
    def __init__(self, directory: Path, meta: dict, ids: np.ndarray, vectors: np.ndarray, faiss_index=None):
        self.directory, self.meta, self.ids, self.vectors, self.faiss_index = directory, meta, ids, vectors, faiss_index
        self.params = P.IndexParams(**meta["params"])
        self._gallery = torch.from_numpy(vectors) if self.params.kind == "exact" else None
        if faiss_index is not None:
            apply_search_params(faiss_index, self.params)

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = self._check_queries(queries)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= self.size:
            raise IndexSearchError(f"k={k!r} is out of range: expected an integer from 1 to {self.size:,}")
        parts = [self._positions(q[s : s + QUERY_BLOCK], int(k)) for s in range(0, len(q), QUERY_BLOCK)]
        scores = np.concatenate([s for s, _ in parts]) if parts else np.empty((0, k), np.float32)
        positions = np.concatenate([p for _, p in parts]) if parts else np.empty((0, k), np.int64)
        return scores, self._ids_at(positions)

    def _positions(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.params.kind == "exact":
            scores, positions = retrieval.topk(torch.from_numpy(q), self._gallery, k)
            return scores.numpy(), positions.numpy()
        wanted = min(self.size, k * max(1, self.params.rerank))
        scores, positions = self.faiss_index.search(q, wanted)
        if self.params.rerank:
            scores = rescore(q, self.vectors, positions)
        return best_first(scores, positions, k)

    def _check_queries(self, queries) -> np.ndarray:
        try:
            q = np.asarray(queries, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise IndexSearchError(f"queries are not a numeric array: {err}") from None
        q = q[None] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise IndexSearchError(f"queries have shape {np.shape(queries)}; this index holds dimension {self.dim}")
        if not np.isfinite(q).all():
            raise IndexSearchError("queries contain NaN or infinity")
        return np.ascontiguousarray(q)

    def _ids_at(self, positions: np.ndarray) -> np.ndarray:
        """Ids of the positions; a slot FAISS could not fill (-1) gets -1 (int ids) or "" (string ids)."""
        out = self.ids[np.maximum(positions, 0)]
        out[positions < 0] = -1 if self.ids.dtype.kind in "iu" else ""
        return out

    @classmethod
    def load(cls, directory: str | Path) -> VectorIndex:
        directory = Path(directory)
        meta = read_meta(directory)
        for name in (IDS_FILE, VECTORS_FILE) + ((FAISS_FILE,) if meta["params"]["kind"] != "exact" else ()):
            if not (directory / name).is_file():
                raise IndexSearchError(f"{directory / name}: missing; rebuild the index with tools/build_index.py")
        ids = np.load(directory / IDS_FILE, allow_pickle=False)
        # exact search wants the vectors in RAM; the others touch only their re-ranked candidates
        vectors = np.load(
            directory / VECTORS_FILE, allow_pickle=False, mmap_mode=None if meta["params"]["kind"] == "exact" else "r"
        )
        if len(ids) != meta["n"] or vectors.shape != (meta["n"], meta["dim"]):
            raise IndexSearchError(
                f"{directory}: ids/vectors do not match {INDEX_JSON} (n={meta['n']}, "
                f"dim={meta['dim']}); rebuild the index"
            )
        random_access(vectors)
        faiss_index = None
        if meta["params"]["kind"] != "exact":
            import faiss

            faiss_index = faiss.read_index(str(directory / FAISS_FILE))
        return cls(directory, meta, ids, vectors, faiss_index)


def random_access(vectors: np.ndarray) -> None:
    """Re-ranking reads a few scattered rows per query: without this hint the kernel reads ahead around each one and
    a cold search pulls most of the file into memory, which is what the memory budget is meant to avoid."""
    raw = getattr(vectors, "_mmap", None)  # numpy's memmap keeps its mmap.mmap here
    if raw is not None and hasattr(mmap, "MADV_RANDOM"):
        raw.madvise(mmap.MADV_RANDOM)


def read_meta(directory: Path) -> dict:
    path = directory / INDEX_JSON
    if not path.is_file():
        raise IndexSearchError(f"{directory}: not an index directory (no {INDEX_JSON})")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise IndexSearchError(f"{path}: not a {FORMAT} v{VERSION} index")
    return meta


def rescore(q: np.ndarray, vectors: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Exact inner products of each query with its candidates (-inf where FAISS returned none)."""
    valid = positions >= 0
    flat = np.where(valid, positions, 0).ravel()
    order = np.argsort(flat, kind="stable")  # read the memory map in file order
    rows = np.empty((len(flat), q.shape[1]), np.float32)
    rows[order] = vectors[flat[order]]
    scores = np.einsum("qcd,qd->qc", rows.reshape(*positions.shape, -1), q)
    return np.where(valid, scores, -np.inf).astype(np.float32)


def best_first(scores: np.ndarray, positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """First k per row by score descending, then position ascending (the evaluator's order); unfilled last."""
    key = np.where(positions >= 0, positions, np.iinfo(np.int64).max)
    order = np.lexsort((key, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(positions, order, 1)


def apply_search_params(index, p: P.IndexParams) -> None:
    import faiss

    space = faiss.ParameterSpace()
    if p.kind == "ivfpq":
        space.set_index_parameter(index, "nprobe", max(1, p.nprobe))
        if "_HNSW" in p.factory:  # the coarse HNSW must return at least nprobe good lists
            space.set_index_parameter(index, "quantizer_efSearch", max(64, 2 * p.nprobe))
    elif p.kind == "hnsw":
        space.set_index_parameter(index, "efSearch", max(16, p.ef_search))


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    out_dir: str | Path,
    *,
    memory_budget: int,
    kind: str = "auto",
    exact_max: int = P.EXACT_MAX,
    target_recall: float = 0.97,
    seed: int = 0,
    log: Callable[[str], None] = print,
    source: str = "",
) -> VectorIndex:
    """Index checked features (``features.read_features``) into ``out_dir`` and return the loaded index."""
    started = time.perf_counter()
    n, d = vectors.shape
    p = P.choose(n, d, memory_budget, kind=kind, exact_max=exact_max)
    log(
        f"{n:,} vectors of dim {d}, budget {memory_budget / 2**20:,.0f} MiB -> {p.kind}"
        + (f" ({p.factory})" if p.factory else "")
        + f", ~{p.ram_bytes / 2**20:,.0f} MiB in RAM"
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_JSON).unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    np.save(out / IDS_FILE, ids)
    stored = np.lib.format.open_memmap(out / VECTORS_FILE, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, ADD_BLOCK):
        stored[s : s + ADD_BLOCK] = vectors[s : s + ADD_BLOCK]
    stored.flush()
    tuning = {}
    if p.kind != "exact":
        import faiss

        index = train_and_add(faiss, stored, p, seed, log)
        p, tuning = tune(index, stored, p, target_recall, seed, log)
        faiss.write_index(index, str(out / FAISS_FILE))
    else:
        (out / FAISS_FILE).unlink(missing_ok=True)
    del stored
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "n": n,
        "dim": d,
        "metric": "inner_product",
        "ids_dtype": "int64" if ids.dtype.kind in "iu" else "str",
        "ids_file": IDS_FILE,
        "vectors_file": VECTORS_FILE,
        "faiss_file": FAISS_FILE if p.kind != "exact" else None,
        "memory_budget_bytes": memory_budget,
        "exact_max": exact_max,
        "params": p.to_dict(),
        "tuning": tuning,
        "build_seconds": round(time.perf_counter() - started, 2),
        "source": source,
    }
    (out / INDEX_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return VectorIndex.load(out)


def train_and_add(faiss, vectors: np.ndarray, p: P.IndexParams, seed: int, log: Callable[[str], None]):
    n, d = vectors.shape
    index = faiss.index_factory(d, p.factory, faiss.METRIC_INNER_PRODUCT)
    if p.kind == "ivfpq":
        rng = np.random.default_rng(seed)
        count = min(n, max(TRAIN_POINTS_PER_LIST * p.nlist, MIN_TRAIN))
        sample = np.ascontiguousarray(vectors[np.sort(rng.choice(n, count, replace=False))])
        t0 = time.perf_counter()
        faiss.extract_index_ivf(index).cp.seed = seed
        index.train(sample)
        log(f"  trained on {count:,} vectors in {time.perf_counter() - t0:.1f}s")
    elif p.kind == "hnsw":
        # the tuned efSearch is what recall is checked at; 64 builds ~1.5x faster than 128
        index.hnsw.efConstruction = 64
    t0 = time.perf_counter()
    for s in range(0, n, ADD_BLOCK):
        index.add(np.ascontiguousarray(vectors[s : s + ADD_BLOCK]))
    log(f"  added {n:,} vectors in {time.perf_counter() - t0:.1f}s")
    return index


__all__ = ["VectorIndex", "IndexSearchError", "build_index", "exact_topk", "rescore", "best_first"]
