"""The vector index: exact equals brute force bit for bit, FAISS kinds reach their recall and keep their parameters
through save/load, ids of either kind come back, and bad input is one line and exit code 2."""

import json

import numpy as np
import pytest
import torch

from cnclip_scale.cli.build_index import main as build_index_main
from cnclip_scale.eval.outputs import save_npy, write_features_jsonl
from cnclip_scale.search import (
    FeatureFileError,
    IndexParamsError,
    IndexSearchError,
    VectorIndex,
    build_index,
    choose,
    read_features,
)
from cnclip_scale.search.params import nlist_for, parse_bytes
from cnclip_scale.search.tune import exact_topk, recall_at_k

GiB = 2**30


def clustered(n: int, d: int, seed: int, centres: int = 200) -> np.ndarray:
    """Unit vectors around random centres (same centres for every seed, so queries share the data's clusters)."""
    c = np.random.default_rng(1234).standard_normal((centres, d)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = c[rng.integers(0, centres, n)] / np.sqrt(d) + rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def silent(_line: str) -> None:
    pass


def test_exact_index_equals_brute_force(tmp_path):
    gallery, queries = clustered(5000, 32, 0), clustered(64, 32, 1)
    gallery[7] = gallery[3]  # a tie: the lower position must come first, as in the evaluator
    ids = np.arange(5000, dtype=np.int64) * 3 + 11
    index = build_index(gallery, ids, tmp_path / "exact", memory_budget=GiB, log=silent)
    assert index.params.kind == "exact"
    scores, found = index.search(queries, 10)

    full = torch.from_numpy(queries) @ torch.from_numpy(gallery).T
    want_scores, want_pos = full.sort(dim=1, descending=True, stable=True)
    assert np.array_equal(scores, want_scores[:, :10].numpy())
    assert np.array_equal(found, ids[want_pos[:, :10].numpy()])
    tied = np.nonzero((found == ids[3]).any(1) & (found == ids[7]).any(1))[0]
    for row in tied:
        assert list(found[row]).index(ids[3]) < list(found[row]).index(ids[7])


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_faiss_index_recall_and_params_round_trip(tmp_path, kind):
    gallery, queries = clustered(20000, 64, 0), clustered(200, 64, 2)
    ids = np.arange(20000, dtype=np.int64)
    index = build_index(gallery, ids, tmp_path / kind, memory_budget=GiB, kind=kind, log=silent)
    _, truth = exact_topk(queries, gallery, 10)
    scores, found = index.search(queries, 10)
    assert recall_at_k(found, truth) >= 0.9

    meta = json.loads((tmp_path / kind / "index.json").read_text())
    assert meta["params"]["kind"] == kind and meta["params"]["factory"] == index.params.factory
    assert meta["params"]["nprobe" if kind == "ivfpq" else "ef_search"] > 0
    loaded = VectorIndex.load(tmp_path / kind)
    assert loaded.params == index.params
    again_scores, again = loaded.search(queries, 10)
    assert np.array_equal(again, found) and np.array_equal(again_scores, scores)
    # the returned scores are exact inner products whatever the index stores
    assert np.allclose(scores, np.einsum("qkd,qd->qk", gallery[found], queries), atol=1e-5)


def test_string_ids_from_seed_jsonl_and_npy(tmp_path):
    gallery = clustered(300, 16, 0)
    names = [f"商品-{i}" for i in range(300)]
    write_features_jsonl(str(tmp_path / "g.img_feat.jsonl"), "image_id", names, torch.from_numpy(gallery))
    save_npy(str(tmp_path), "g", "img", torch.from_numpy(gallery), names)
    for source in ("g.img_feat.jsonl", "g.img_feat.npy"):
        vectors, ids = read_features(tmp_path / source)
        index = build_index(vectors, ids, tmp_path / source.replace(".", "_"), memory_budget=GiB, log=silent)
        _, found = VectorIndex.load(tmp_path / source.replace(".", "_")).search(gallery[[5, 42]], 3)
        assert found.dtype.kind == "U" and list(found[:, 0]) == ["商品-5", "商品-42"]
        assert index.params.kind == "exact"


def test_parameter_rule():
    assert choose(1_000_000, 512, 4 * GiB).kind == "exact"
    assert choose(1_000_000, 512, 4 * GiB, exact_max=0).kind == "hnsw"  # vectors + graph fit 4 GiB
    p = choose(1_000_000, 512, GiB, exact_max=0)
    assert (p.kind, p.nlist, p.pq_m, p.factory) == ("ivfpq", 4096, 64, "IVF4096,PQ64x8np")
    assert choose(1_000_000, 512, 40 * 2**20, exact_max=0).pq_m < 32  # a tighter budget, smaller codes
    assert choose(100_000_000, 512, 16 * GiB).factory == "IVF32768_HNSW32,PQ64x8np"  # 4·sqrt(1e8) ≈ 2^15.3
    assert nlist_for(1000) <= 1000 // 39
    assert parse_bytes("512M") == 512 * 2**20 and parse_bytes("1.5GiB") == int(1.5 * GiB)


@pytest.mark.parametrize("bad", ["0", "-1G", "lots"])
def test_bad_budget(bad):
    with pytest.raises(IndexParamsError):
        parse_bytes(bad)


def test_budget_too_small_is_named():
    with pytest.raises(IndexParamsError, match="too small"):
        choose(10_000_000, 512, 2**20)


def test_search_input_errors(tmp_path):
    gallery = clustered(100, 16, 0)
    index = build_index(gallery, np.arange(100), tmp_path / "i", memory_budget=GiB, log=silent)
    with pytest.raises(IndexSearchError, match="dimension 16"):
        index.search(np.zeros((2, 8), np.float32), 5)
    for k in (0, 101, 2.5, True):
        with pytest.raises(IndexSearchError, match="out of range"):
            index.search(gallery[:2], k)
    with pytest.raises(IndexSearchError, match="NaN"):
        index.search(np.full(16, np.nan, np.float32), 1)
    (tmp_path / "i" / "ids.npy").unlink()
    with pytest.raises(IndexSearchError, match="missing"):
        VectorIndex.load(tmp_path / "i")


def test_feature_file_errors(tmp_path):
    gallery = clustered(50, 8, 0)
    np.save(tmp_path / "a.img_feat.npy", gallery)
    with pytest.raises(FeatureFileError, match="ids file missing"):
        read_features(tmp_path / "a.img_feat.npy")
    np.save(tmp_path / "a.img_ids.npy", np.arange(49))
    with pytest.raises(FeatureFileError, match="50 vectors but 49 ids"):
        read_features(tmp_path / "a.img_feat.npy")
    np.save(tmp_path / "b.img_feat.npy", gallery * 3)
    np.save(tmp_path / "b.img_ids.npy", np.arange(50))
    with pytest.raises(FeatureFileError, match="L2-normalised"):
        read_features(tmp_path / "b.img_feat.npy")


def test_command_line(tmp_path, capsys):
    save_npy(str(tmp_path), "g", "img", torch.from_numpy(clustered(500, 16, 0)), [str(i) for i in range(500)])
    assert build_index_main([str(tmp_path / "g.img_feat.npy"), str(tmp_path / "idx")]) == 0
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["params"]["kind"] == "exact"
    capsys.readouterr()
    assert build_index_main([str(tmp_path / "missing.npy"), str(tmp_path / "x")]) == 2
    assert build_index_main([str(tmp_path / "g.img_feat.npy"), str(tmp_path / "x"), "--memory-budget", "lots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and err.startswith("build_index: ") and "Traceback" not in err
