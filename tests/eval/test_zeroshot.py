"""Zero-shot: class embeddings from templates, labels from captions, top-1/top-5 accuracy."""

import pytest
import torch

from cnclip_scale.eval import zeroshot as Z


class TableModel(torch.nn.Module):
    """encode_text looks texts up in a table (normalised), enough to check averaging and scoring."""

    def __init__(self, table):
        super().__init__()
        self.table, self.config = table, type("C", (), {"embed_dim": 3})

    def encode_text(self, ids, mask):
        return torch.nn.functional.normalize(torch.stack([self.table[int(i)] for i in ids[:, 0]]), dim=-1)


class IndexTokenizer:
    def __init__(self, texts):
        self.index = {t: k for k, t in enumerate(texts)}

    def __call__(self, texts):
        ids = torch.tensor([[self.index[t]] for t in texts])
        return ids, torch.ones_like(ids, dtype=torch.bool)


def test_class_embedding_is_renormalised_mean_of_normalised_templates():
    templates, classes = ["一张{}的照片。", "{}"], ["猫", "狗"]
    prompts = [t.replace("{}", c) for c in classes for t in templates]
    table = [torch.tensor([3.0, 0, 0]), torch.tensor([0, 1.0, 0]), torch.tensor([0, 0, 2.0]), torch.tensor([0, 4.0, 0])]
    got = Z.class_embeddings(
        TableModel(table), IndexTokenizer(prompts), classes, templates, device="cpu", dtype=torch.float32
    )
    s = 2**-0.5
    assert torch.allclose(got[0], torch.tensor([s, s, 0]))
    assert torch.allclose(got[1], torch.tensor([0, s, s]))  # not (0, 4, 2)/|.|: each template normalised first


def test_class_embeddings_are_deterministic_for_a_model_in_training_mode():
    """A freshly loaded model is in training mode; its text tower's dropout must not reach the class embeddings."""
    from cnclip_scale.model import build_model, model_config
    from cnclip_scale.model.configs import TINY
    from cnclip_scale.model.tokenizer import Tokenizer

    torch.manual_seed(0)
    model = build_model(model_config(TINY))
    assert model.config.text.hidden_dropout > 0
    model.train()
    tokenizer = Tokenizer(context_length=32)
    classes = ["红色的数字三", "蓝色的数字七"]
    runs = [
        Z.class_embeddings(model, tokenizer, classes, Z.TEMPLATES, device="cpu", dtype=torch.float32) for _ in range(2)
    ]
    assert model.training  # the caller's mode comes back
    model.eval()
    reference = Z.class_embeddings(model, tokenizer, classes, Z.TEMPLATES, device="cpu", dtype=torch.float32)
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], reference)


def test_labels_from_captions():
    classes = ["猫", "橘猫", "狗"]
    index = {c: k for k, c in enumerate(classes)}
    assert Z.label_of(["狗"], classes, index) == 2
    assert Z.label_of(["一只橘猫在睡觉"], classes, index) == 1  # longest contained name
    assert Z.label_of(["汽车"], classes, index) is None


def test_accuracy_top1_top5():
    class_feats = torch.eye(6)
    feats = torch.tensor([[1.0, 0, 0, 0, 0, 0], [0.1, 0.9, 0, 0, 0, 0], [0, -1.0, 0, 0, 0, 1.0], [1.0, 0, 0, 0, 0, 0]])
    captions = {"a": ["c0"], "b": ["c0"], "c": ["c1"], "d": ["没有"]}
    got = Z.zeroshot_accuracy(feats, ["a", "b", "c", "d"], captions, class_feats, [f"c{k}" for k in range(6)])
    # a: right; b: second (top-5 only); c: its class c1 scores last; d: no class in its caption
    assert got["images"] == 3 and got["unlabelled"] == 1
    assert got["top1"] == pytest.approx(100 / 3) and got["top5"] == pytest.approx(200 / 3)


def test_templates_are_ours_and_well_formed(tmp_path):
    assert len(Z.TEMPLATES) >= 12 and all("{}" in t for t in Z.TEMPLATES)
    bad = tmp_path / "t.txt"
    bad.write_text("一张{}的照片\n没有占位符\n", encoding="utf-8")
    with pytest.raises(ValueError):
        Z.read_templates(str(bad))
