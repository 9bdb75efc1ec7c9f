"""The search-time knob, measured rather than guessed: the smallest ``nprobe`` (IVF) or ``efSearch`` (HNSW) whose
recall@10 against exact search reaches the target on sample queries.

The sample queries are collection vectors pushed off in a random direction by the typical distance from a vector to
its 10th neighbour: they land inside a neighbourhood, as real queries do, and not on a stored vector (a stored vector
finds itself at any setting and would make every knob look good; a query far from the data makes none look good).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from cnclip_scale.eval import retrieval

from . import params as P

TUNE_QUERIES = 256
TUNE_K = 10
GALLERY_BLOCK = 262144  # rows read from a memory map per exact matmul pass (512 MiB at dim 512)
NPROBES = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024, 2048]
EF_SEARCHES = [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024]
RERANKS = [4, 8, 16, 32, 64]  # candidates per result re-scored exactly; 64 x 10 rows of 2 KiB is still < 2 MiB
PLATEAU = 0.005  # a knob step that gains less recall than this has stopped paying


def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, positions) over vectors that may not fit in RAM: the evaluator's ``topk`` per block of
    rows, merged in its total order."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best_v = torch.full((len(q), k), -torch.inf)
    best_i = torch.full((len(q), k), retrieval.NO_MATCH, dtype=torch.long)
    for s in range(0, len(vectors), GALLERY_BLOCK):
        block = torch.from_numpy(np.array(vectors[s : s + GALLERY_BLOCK], dtype=np.float32))
        v, i = retrieval.topk(q, block, k, gallery_index=torch.arange(s, s + len(block)))
        best_v, best_i = retrieval.order(torch.cat([best_v, v], 1), torch.cat([best_i, i], 1), k)
    return best_v.numpy(), best_i.numpy()


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k (the usual ANN recall@k)."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def sample_queries(vectors: np.ndarray, count: int, k: int, seed: int) -> tuple[np.ndarray, float]:
    """(queries, the noise norm used): sampled vectors moved by the median distance to their k-th neighbour."""
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(len(vectors), min(count, len(vectors)), replace=False))
    base = np.asarray(vectors[rows], dtype=np.float32)
    kth = exact_topk(base, vectors, min(k + 1, len(vectors)))[0][:, -1]  # +1: each finds itself first
    noise_norm = float(np.median(np.sqrt(np.maximum(0.0, 2 - 2 * kth))))  # unit vectors: |a-b|² = 2 - 2 a·b
    noise = rng.standard_normal(base.shape).astype(np.float32)
    q = base + noise * (noise_norm / np.linalg.norm(noise, axis=1, keepdims=True))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32), noise_norm


def measure(
    index, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, p: P.IndexParams
) -> tuple[float, float]:
    """(recall@k, batched ms per query) of ``index`` searched with ``p``'s knobs."""
    from .index import apply_search_params, best_first, rescore

    apply_search_params(index, p)
    k = truth.shape[1]
    t0 = time.perf_counter()
    scores, positions = index.search(queries, min(len(vectors), k * max(1, p.rerank)))
    if p.rerank:
        scores = rescore(queries, vectors, positions)
    _, positions = best_first(scores, positions, k)
    return recall_at_k(positions, truth), (time.perf_counter() - t0) * 1000 / len(queries)


def tune(
    index, vectors: np.ndarray, p: P.IndexParams, target: float, seed: int, log: Callable[[str], None]
) -> tuple[P.IndexParams, dict]:
    """Walk up a staircase of (knob, re-rank depth), both only increasing: raise the knob while it still pays, and
    the re-rank depth once it stops paying (compressed scores too coarse to order near-ties) or runs out."""
    from .index import apply_search_params

    k = min(TUNE_K, len(vectors))
    queries, noise_norm = sample_queries(vectors, TUNE_QUERIES, k, seed)
    _, truth = exact_topk(queries, vectors, k)
    field, settings = (
        ("nprobe", [x for x in NPROBES if x <= p.nlist]) if p.kind == "ivfpq" else ("ef_search", EF_SEARCHES)
    )
    reranks = [r for r in RERANKS if r >= p.rerank] if p.rerank else [0]
    s, r, tried = 0, 0, []
    while True:
        trial = replace(p, **{field: settings[s]}, rerank=reranks[r])
        recall, ms = measure(index, vectors, queries, truth, trial)
        tried.append(
            {field: settings[s], "rerank": reranks[r], "recall_at_10": round(recall, 4), "ms_per_query": round(ms, 3)}
        )
        log(f"  {field}={settings[s]} rerank={reranks[r]}x: recall@{k} {recall:.3f}, {ms:.2f} ms/query (batched)")
        if recall >= target:
            break
        flat = len(tried) > 1 and tried[-2]["rerank"] == reranks[r] and recall - tried[-2]["recall_at_10"] < PLATEAU
        if r + 1 < len(reranks) and (flat or s + 1 == len(settings)):
            r += 1
        elif s + 1 < len(settings):
            s += 1
        else:
            log(f"  target recall {target} not reached; keeping the last setting")
            break
    chosen = replace(p, **{field: tried[-1][field]}, rerank=tried[-1]["rerank"])
    apply_search_params(index, chosen)
    return chosen, {
        "target_recall": target,
        "k": k,
        "queries": len(queries),
        "query_noise": round(noise_norm, 4),
        "recall": tried[-1]["recall_at_10"],
        field: chosen.nprobe or chosen.ef_search,
        "rerank": chosen.rerank,
        "tried": tried,
    }
