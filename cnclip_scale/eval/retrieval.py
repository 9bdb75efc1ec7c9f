"""Exact top-k retrieval, its gallery-sharded form, and recall as Chinese-CLIP's ``evaluation.py`` computes it.

Ordering is total and deterministic: score descending, then gallery index ascending — the order the seed's
``make_topk_predictions.py`` produces (a stable ``sorted`` over the gallery in file order). Scores come from
chunked matrix products; a score must not depend on how the work was cut (1 rank vs N ranks, gallery shards),
and BLAS picks different kernels (different rounding) for operands with very few rows, so every operand is
padded to at least ``MIN_ROWS`` rows. With that, fp32 CPU scores are bitwise independent of the chunking.
"""

from __future__ import annotations

import torch

from cnclip_scale import comm

MIN_ROWS = 32  # below ~16 rows MKL switches to gemv-like kernels whose rounding differs
QUERY_CHUNK = 1024  # queries per matmul: the global grid ranks split (identical shapes on 1 or N ranks)
GALLERY_CHUNK = 16384  # gallery rows per matmul: QUERY_CHUNK × GALLERY_CHUNK fp32 scores = 64 MiB
NO_MATCH = -1  # index padding when the gallery has fewer than k items


def _pad_rows(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] >= MIN_ROWS:
        return x
    return torch.cat([x, x.new_zeros(MIN_ROWS - x.shape[0], *x.shape[1:])])


def scores(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """queries @ gallery.T with shape-independent rounding (see the module docstring)."""
    return (_pad_rows(queries) @ _pad_rows(gallery).T)[: queries.shape[0], : gallery.shape[0]]


def order(values: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` of each row by (value desc, index asc). Indices in a row are distinct (padding aside)."""
    by_index = index.argsort(dim=1)
    values, index = values.gather(1, by_index), index.gather(1, by_index)
    by_value = values.argsort(dim=1, descending=True, stable=True)[:, :k]
    return values.gather(1, by_value), index.gather(1, by_value)


def _chunk_best(s: torch.Tensor, k: int, gallery_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This chunk's best ``k`` per row. ``topk`` picks arbitrarily among values tied at the k-th place (seen
    as a (k+1)-th value equal to the k-th), so those rows are sorted in full (stable: lowest index first);
    ties elsewhere are fixed by ``order``."""
    k = min(k, s.shape[1])
    values, local = s.topk(min(k + 1, s.shape[1]), dim=1)
    tied = values[:, k] == values[:, k - 1] if values.shape[1] > k else torch.zeros(len(s), dtype=torch.bool)
    values, local = values[:, :k].contiguous(), local[:, :k].contiguous()
    if tied.any():
        rows = tied.nonzero().squeeze(1)
        full_values, full_local = s[rows].sort(dim=1, descending=True, stable=True)
        values[rows], local[rows] = full_values[:, :k], full_local[:, :k]
    return values, gallery_index[local]


def topk(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    *,
    gallery_index: torch.Tensor | None = None,
    gallery_chunk: int = GALLERY_CHUNK,
    query_chunk: int = QUERY_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` of every query over ``gallery`` → (scores float32 Q×k, indices int64 Q×k).

    ``gallery_index`` (ascending) names gallery rows globally (a gallery shard's rows in the full gallery);
    by default row i is i. Rows with fewer than k gallery items are padded with -inf / ``NO_MATCH``."""
    n = gallery.shape[0]
    if gallery_index is None:
        gallery_index = torch.arange(n, device=gallery.device)
    gallery_index = gallery_index.to(gallery.device, torch.long)
    out_v, out_i = [], []
    for q0 in range(0, queries.shape[0], query_chunk):
        q = queries[q0 : q0 + query_chunk]
        best_v = torch.full((q.shape[0], k), -torch.inf, device=gallery.device)
        best_i = torch.full((q.shape[0], k), NO_MATCH, dtype=torch.long, device=gallery.device)
        for g0 in range(0, n, gallery_chunk):
            v, i = _chunk_best(
                scores(q, gallery[g0 : g0 + gallery_chunk]).float(), k, gallery_index[g0 : g0 + gallery_chunk]
            )
            best_v, best_i = order(torch.cat([best_v, v], 1), torch.cat([best_i, i], 1), k)
        out_v.append(best_v)
        out_i.append(best_i)
    if not out_v:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
    return torch.cat(out_v).cpu(), torch.cat(out_i).cpu()


def sharded_topk(
    queries: torch.Tensor, gallery_shard: torch.Tensor, gallery_index: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k over a gallery split across ranks, exact: each rank ranks every query against its shard, the
    candidates (Q×k per rank) are gathered and merged with the same total order. Memory O(Q × k × ranks);
    the gallery never moves. Every rank gets the result. ``gallery_index``: global index of each shard row."""
    values, index = topk(queries, gallery_shard, k, gallery_index=gallery_index)
    values, index = comm.gather_rows(values[None]), comm.gather_rows(index[None])  # ranks × Q × k
    return order(torch.cat(list(values), 1), torch.cat(list(index), 1), k)


def split_topk(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of every query, the work shared by the ranks in whole ``QUERY_CHUNK`` blocks of a global grid
    (so 1 or N ranks run the same matmuls) and the results gathered to every rank."""
    r, w = comm.rank(), comm.world()
    starts = list(range(0, queries.shape[0], QUERY_CHUNK))[r::w]
    mine = [topk(queries[s : s + QUERY_CHUNK], gallery, k) for s in starts]
    values = torch.cat([v for v, _ in mine]) if mine else torch.empty(0, k)
    index = torch.cat([i for _, i in mine]) if mine else torch.empty(0, k, dtype=torch.long)
    rows = (
        torch.cat([torch.arange(s, min(s + QUERY_CHUNK, queries.shape[0])) for s in starts])
        if starts
        else torch.empty(0, dtype=torch.long)
    )
    rows, values, index = comm.gather_rows(rows), comm.gather_rows(values), comm.gather_rows(index)
    back = rows.argsort()
    return values[back], index[back]


def recall(
    predictions: torch.Tensor,
    gt_query: torch.Tensor,
    gt_item: torch.Tensor,
    n_items: int,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict:
    """Recall@k as Chinese-CLIP's ``evaluation.py``: a query with ground truth is a hit at k if any of its
    ground-truth items is among its first k predictions; queries without ground truth are not counted.
    Same float operations as ``report_score`` so the numbers match to the last bit.

    predictions: Q×K gallery indices; (gt_query[j], gt_item[j]): the ground-truth pairs."""
    q = predictions.shape[0]
    truth = gt_query.long() * n_items + gt_item.long()
    predicted = torch.arange(q).unsqueeze(1) * n_items + predictions
    hits = torch.isin(predicted, truth) & predictions.ge(0)
    counted = torch.bincount(gt_query.long(), minlength=q).gt(0)
    n = int(counted.sum())
    r = {k: int((hits[:, :k].any(dim=1) & counted).sum()) * 1.0 / n if n else 0.0 for k in ks}
    out = {f"r{k}": r[k] * 100 for k in ks}
    mean_recall = sum(r.values()) / float(len(ks))
    # queries: scored (with ground truth); predicted_only: predicted for, no ground truth (0.0 recall when n == 0:
    # callers that report a score check `queries` first)
    out.update(score=mean_recall * 100, mean_recall=mean_recall * 100, queries=n, predicted_only=q - n)
    return out
