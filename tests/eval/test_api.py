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
            yield {"images": self.images[lo:hi], "image_ids": [str(100 + k) for k in range(lo, hi)],
                   "texts": [self.captions[k] for k in range(lo, hi)]}


def test_evaluate_retrieval_matches_a_direct_computation():
    torch.manual_seed(0)
    model = build_model(model_config(TINY)).train()
    tok = Tokenizer(context_length=24)
    got = evaluate_retrieval(model, Batches(), tok, device="cpu", top_k=10)
    assert model.training                                            # the trainer's mode is restored
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
