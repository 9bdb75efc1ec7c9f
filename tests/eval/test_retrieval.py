"""Top-k, its sharded merge and recall, checked against plain reference computations."""

import json
import random

import pytest
import torch

from cnclip_scale.eval import retrieval as R


def unit(n, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def reference_topk(q, g, k):
    """The seed's rule in plain Python: stable sort of (index, score) by score descending."""
    s = (q.double() @ g.double().T).tolist()  # exact enough to have no near-ties on random data
    return [[i for i, _ in sorted(enumerate(row), key=lambda x: x[1], reverse=True)[:k]] for row in s]


def test_topk_matches_sorting_across_chunk_sizes():
    q, g = unit(70, seed=1), unit(500, seed=2)
    want = reference_topk(q, g, 10)
    for gallery_chunk, query_chunk in [(16384, 1024), (7, 3), (64, 33), (1, 1)]:
        _, idx = R.topk(q, g, 10, gallery_chunk=gallery_chunk, query_chunk=query_chunk)
        assert idx.tolist() == want


def test_ties_broken_by_lowest_gallery_index():
    # Gallery rows 3, 5, 8, 9 are the same vector: every query scores them equally.
    g = unit(12, seed=3)
    g[[5, 8, 9]] = g[3].clone()
    q = torch.cat([g[3:4], unit(4, seed=4)])
    for chunk in (16384, 4, 2, 1):
        v, idx = R.topk(q, g, 3, gallery_chunk=chunk)
        assert idx[0].tolist() == [3, 5, 8]
        assert idx.tolist() == [
            [i for i, _ in sorted(enumerate(r), key=lambda x: -x[1])[:3]] for r in (q @ g.T).tolist()
        ]
    # All-equal scores (e.g. a degenerate model): plain index order.
    assert R.topk(torch.ones(2, 4), torch.ones(9, 4), 5, gallery_chunk=4)[1].tolist() == [[0, 1, 2, 3, 4]] * 2


def test_scores_do_not_depend_on_operand_shapes():
    q, g = unit(300, 64, 5), unit(3000, 64, 6)
    full = R.scores(q, g)
    rng = random.Random(0)
    for _ in range(50):
        a = rng.randrange(300)
        b = rng.randrange(3000)
        qa, gb = q[a : a + rng.choice([1, 2, 5, 40])], g[b : b + rng.choice([1, 3, 17, 900])]
        assert torch.equal(R.scores(qa, gb), full[a : a + qa.shape[0], b : b + gb.shape[0]])


@pytest.mark.parametrize("cuts", [[0, 250, 500], [0, 1, 2, 499, 500], [0, 0, 500], [0, 137, 311, 312, 500]])
def test_sharded_merge_equals_full_topk(cuts):
    """Each shard ranked locally (with its global index), candidates merged: exactly the full top-k."""
    q, g = unit(40, seed=7), unit(500, seed=8)
    g[[10, 260, 400]] = g[77].clone()  # ties across shard boundaries
    q[0] = g[77]
    full_v, full_i = R.topk(q, g, 10)
    parts = [R.topk(q, g[a:b], 10, gallery_index=torch.arange(a, b)) for a, b in zip(cuts, cuts[1:])]
    v, i = R.order(torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1), 10)
    assert torch.equal(i, full_i) and torch.equal(v, full_v)
    assert i[0, :4].tolist() == [10, 77, 260, 400]


def test_short_gallery_is_padded():
    v, i = R.topk(unit(3), unit(4, seed=1), 10)
    assert (i[:, 4:] == R.NO_MATCH).all() and torch.isinf(v[:, 4:]).all()
    assert sorted(i[0, :4].tolist()) == [0, 1, 2, 3]


def seed_recall(reference: dict, predictions: dict) -> list[float]:
    """Chinese-CLIP evaluation.py's loop, restated."""
    stats = [0, 0, 0]
    for qid, truth in reference.items():
        for n, k in enumerate((1, 5, 10)):
            stats[n] += any(i in predictions[qid][:k] for i in set(truth))
    r = [s * 1.0 / len(reference) for s in stats]
    return [(r[0] + r[1] + r[2]) / 3.0 * 100, r[0] * 100, r[1] * 100, r[2] * 100]


def test_recall_matches_the_seed_loop_bit_for_bit():
    rng = random.Random(1)
    n_q, n_g = 97, 50
    preds = torch.tensor([rng.sample(range(n_g), 10) for _ in range(n_q)])
    pairs = sorted({(q, rng.randrange(n_g)) for q in range(n_q) for _ in range(rng.choice([1, 1, 2, 3]))})
    gt_q, gt_g = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    got = R.recall(preds, gt_q, gt_g, n_g)
    reference = {}
    for a, b in pairs:
        reference.setdefault(a, []).append(b)
    want = seed_recall(reference, {q: preds[q].tolist() for q in range(n_q)})
    assert [got["mean_recall"], got["r1"], got["r5"], got["r10"]] == want
    assert got["queries"] == n_q and 0 < got["r1"] < got["r10"] < 100
    assert json.dumps(got["score"]) == json.dumps(want[0])


def test_recall_skips_queries_without_ground_truth():
    preds = torch.tensor([[0, 1], [1, 0], [0, 1]])
    got = R.recall(preds, torch.tensor([0, 1]), torch.tensor([1, 1]), 2, ks=(1,))
    assert got["queries"] == 2 and got["r1"] == 50.0
