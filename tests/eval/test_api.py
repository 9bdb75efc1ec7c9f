"""evaluate_retrieval, the trainer's entry point, in one process without a process group."""

import torch

from cnclip_scale.eval import evaluate_retrieval
from cnclip_scale.eval.retrieval import recall
from cnclip_scale.model import Tokenizer, build_model, model_config
from cnclip_scale.model.configs import TINY
from cnclip_scale.model.transforms import normalize_batch

CAPTIONS = ["一只橘猫趴在窗台上", "红色的苹果", "宇航员在太空中漂浮", "北京故宫雪景", "高级感托特包", "海边的日落"]


class Batches:
    """An eval loader's batch format: image 3 appears in two batches' worth of captions (text 0 names 0 and 3)."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=g)
        self.captions = {k: [(str(10 + k), CAPTIONS[k])] for k in range(6)}
        self.captions[3].append(("10", CAPTIONS[0]))

    def __iter__(self):
        for lo, hi in [(0, 4), (4, 6)]:
            yield {
                "images": self.images[lo:hi],
                "image_ids": [str(100 + k) for k in range(lo, hi)],
                "texts": [self.captions[k] for k in range(lo, hi)],
            }


def test_evaluate_retrieval_matches_a_direct_computation():
    torch.manual_seed(0)
    model = build_model(model_config(TINY)).train()
    tok = Tokenizer(context_length=24)
    got = evaluate_retrieval(model, Batches(), tok, device="cpu", top_k=10)
    assert model.training  # the trainer's mode is restored
    assert (got["images"], got["texts"], got["pairs"]) == (6, 6, 7)
    with torch.no_grad():
        model.eval()
        img = model.encode_image(normalize_batch(Batches().images))
        txt = model.encode_text(*tok(CAPTIONS))
    t2i = (txt @ img.T).argsort(dim=1, descending=True, stable=True)
    gt_t, gt_i = torch.tensor([0, 1, 2, 3, 4, 5, 0]), torch.tensor([0, 1, 2, 3, 4, 5, 3])
    want = recall(t2i, gt_t, gt_i, 6)
    assert got["t2i"] == want
    assert got["i2t"] == recall((img @ txt.T).argsort(dim=1, descending=True, stable=True), gt_i, gt_t, 6)
    assert evaluate_retrieval(model, Batches(), tok, device="cpu", gallery_sharded=True) == got


def test_features_and_scores_stay_fp32_whatever_the_towers_ran_in():
    """bf16 features would make near-equal candidates exact ties (8 bits of mantissa): recall would drift from fp32."""
    from cnclip_scale.eval.embed import embed_split

    torch.manual_seed(0)
    model = build_model(model_config(TINY)).eval()
    tok = Tokenizer(context_length=24)
    full = embed_split(model, Batches(), tok, device="cpu", dtype=torch.float32)
    half = embed_split(model, Batches(), tok, device="cpu", dtype=torch.bfloat16)
    assert half.image_feats.dtype == half.text_feats.dtype == torch.float32
    # the towers did run in bf16 (autocast): close to fp32, not equal
    assert not torch.equal(half.image_feats, full.image_feats)
    assert torch.allclose(half.image_feats, full.image_feats, atol=0.05)
    assert torch.allclose(half.text_feats, full.text_feats, atol=0.05)
    half_scores = half.text_feats @ half.image_feats.T
    assert len(set(half_scores.flatten().tolist())) == half_scores.numel()  # no ties made by rounding
