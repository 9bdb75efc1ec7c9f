"""Starting from separately pretrained towers (model/towers.py): each source format is written here by its own library
at tiny sizes (open_clip for the OpenAI layout, as .pt, .safetensors and a TorchScript archive; timm; transformers'
BertModel), loaded into our model, and checked against that library's own features to 1e-5."""

import warnings
from functools import partial

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertModel

from cnclip_scale.checkpoints import convert, load_model
from cnclip_scale.cli.convert import main as convert_main
from cnclip_scale.model import Tokenizer, WeightsError, build_model, model_config
from cnclip_scale.model.configs import TINY
from cnclip_scale.model.foreign.torchscript import is_torchscript, read_torchscript
from cnclip_scale.model.tokenizer import default_vocab_file
from cnclip_scale.model.towers import apply_towers, read_text_tower, read_towers, read_vision_tower

TOL = 1e-5
CONFIG = model_config(TINY)  # ViT-Tiny-16 (64 px, patch 16, width 64, 2 layers) @ RoBERTa-Tiny
V, T = CONFIG.vision, CONFIG.text


def open_clip_tiny(width: int = V.width, seed: int = 5):
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    return CLIP(
        embed_dim=V.embed_dim,
        vision_cfg={
            "image_size": V.image_size,
            "layers": V.layers,
            "width": width,
            "patch_size": V.patch_size,
            "head_width": V.head_width,
        },
        text_cfg={"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
        quick_gelu=True,
    ).eval()


def timm_tiny(clip_head: bool = True, pre_norm: bool = True, seed: int = 6) -> VisionTransformer:
    """timm's ViT in the OpenAI-CLIP arrangement (timm's vit_*_clip_* models); its head a CLIP projection (zero bias,
    as timm's OpenAI conversion writes it) or an ImageNet-style classifier."""
    torch.manual_seed(seed)
    vit = VisionTransformer(
        img_size=V.image_size,
        patch_size=V.patch_size,
        embed_dim=V.width,
        depth=V.layers,
        num_heads=V.heads,
        qkv_bias=True,
        pre_norm=pre_norm,
        global_pool="token",
        class_token=True,
        num_classes=V.embed_dim if clip_head else 10,
        norm_layer=partial(nn.LayerNorm, eps=1e-5),
        act_layer="quick_gelu",
    ).eval()
    with torch.no_grad():
        for p in vit.parameters():  # non-trivial values everywhere (timm zero-inits some biases)
            p.add_(torch.randn_like(p) * 0.02)
        if clip_head:
            vit.head.bias.zero_()
    return vit


def bert_tiny(seed: int = 7) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=T.vocab_size,
        hidden_size=T.hidden_size,
        num_hidden_layers=T.layers,
        num_attention_heads=T.heads,
        intermediate_size=T.intermediate_size,
        max_position_embeddings=T.max_position_embeddings,
    )
    return BertModel(cfg).eval()


def ours() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(CONFIG).eval()


@pytest.fixture
def images():
    torch.manual_seed(3)
    return torch.randn(4, 3, V.image_size, V.image_size)


def assert_close(a, b):
    assert a.shape == b.shape
    diff = (a - b).abs().max().item()
    assert diff <= TOL, diff


# ---------------------------------------------------------------------------------------------------- image tower
def test_open_clip_pt_safetensors_and_torchscript_match_open_clip(tmp_path, images):
    ref = open_clip_tiny()
    expected = ref.encode_image(images)  # after the projection, before normalisation
    sd = ref.state_dict()
    # open_clip's training checkpoint: {"epoch", "name", "state_dict" (module.-prefixed), "optimizer"}
    torch.save({"epoch": 1, "name": "x", "state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "oc.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "oc.safetensors")
    torch.save(sd, tmp_path / "plain.pt")  # an OpenAI-layout state dict
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(ref), tmp_path / "openai.pt")  # the OpenAI release's TorchScript archive
    assert is_torchscript(tmp_path / "openai.pt") and not is_torchscript(tmp_path / "plain.pt")
    for name in ("oc.pt", "oc.safetensors", "plain.pt", "openai.pt"):
        model = ours()
        lines = apply_towers(model, *read_towers(tmp_path / name, None))
        assert "image tower" in lines[0]
        with torch.no_grad():
            assert_close(model.encode_image(images, normalize=False), expected)


def test_torchscript_reader_runs_no_code(tmp_path):
    """A pickle that names any callable beyond the tensor rebuilders is refused, not called."""
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
        z.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing (__builtin__|builtins)\.print"):
        read_torchscript(tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="unreadable TorchScript archive"):
        read_vision_tower(tmp_path / "evil.pt")


def test_timm_vit_matches_timm(tmp_path, images):
    ref = timm_tiny(clip_head=True)
    save_file(ref.state_dict(), tmp_path / "timm.safetensors")
    tower, what = read_vision_tower(tmp_path / "timm.safetensors")
    assert "head as projection" in what
    model = ours()
    apply_towers(model, (tower, what, "timm"))
    with torch.no_grad():
        assert_close(model.encode_image(images, normalize=False), ref(images))


def test_timm_classifier_head_is_dropped(tmp_path, images):
    ref = timm_tiny(clip_head=False)
    save_file(ref.state_dict(), tmp_path / "timm.safetensors")
    tower, what = read_vision_tower(tmp_path / "timm.safetensors")
    assert "classifier head dropped" in what and "visual.head.weight" not in tower
    model = ours()
    projection = model.visual.head.weight.clone()
    apply_towers(model, (tower, what, "timm"))
    assert torch.equal(model.visual.head.weight, projection)  # the model's own initialisation stays
    with torch.no_grad():
        pooled = model.visual.forward_head(model.visual.forward_features(images), pre_logits=True)
        assert_close(pooled, ref.forward_head(ref.forward_features(images), pre_logits=True))


def test_timm_vit_without_norm_pre_is_refused(tmp_path):
    save_file(timm_tiny(pre_norm=False).state_dict(), tmp_path / "timm.safetensors")
    with pytest.raises(WeightsError, match="without norm_pre"):
        read_vision_tower(tmp_path / "timm.safetensors")


def test_size_mismatch_is_one_line_naming_the_tensors(tmp_path):
    torch.save(open_clip_tiny(width=96).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(WeightsError) as e:
        apply_towers(ours(), *read_towers(tmp_path / "wide.pt", None))
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"image tower {tmp_path / 'wide.pt'} (OpenAI/open_clip layout)")
    assert "shape mismatch: visual.blocks.0.attn.proj.bias: source (96,) vs model (64,)" in message
    assert "visual.blocks.0.mlp.fc1.weight: source (384, 96) vs model (256, 64)" in message


# ---------------------------------------------------------------------------------------------------- text tower
def save_bert_dir(path, model, tokenizer_json: bool = False):
    model.save_pretrained(path)
    if tokenizer_json:  # a transformers-5 dir: tokenizer.json, no vocab.txt
        Tokenizer()._rust.save(str(path / "tokenizer.json"))
    else:
        (path / "vocab.txt").write_bytes(default_vocab_file().read_bytes())
    return path


def test_hf_bert_dir_matches_transformers(tmp_path, tokenizer, captions):
    ref = bert_tiny()
    ids, mask = tokenizer(captions)
    for variant in ("bertmodel", "masked_lm"):
        if variant == "bertmodel":
            src = save_bert_dir(tmp_path / variant, ref)
        else:  # BertForMaskedLM: keys under bert. beside the cls.* head, as hfl's checkpoints
            torch.manual_seed(8)
            mlm = BertForMaskedLM(ref.config).eval()
            mlm.bert.load_state_dict(ref.state_dict(), strict=False)
            src = save_bert_dir(tmp_path / variant, mlm)
        tower, what = read_text_tower(src)
        assert what == "Hugging Face BERT" and all(k.startswith("bert.") for k in tower)
        model = ours()
        apply_towers(model, None, (tower, what, str(src)))
        with torch.no_grad():
            expected = ref(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            got = model.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            assert_close(got, expected)
            assert_close(model.encode_text(ids, mask, normalize=False), expected[:, 0] @ model.text_projection)


def test_tokenizer_json_only_dir_gives_the_same_ids(tmp_path, captions):
    src = save_bert_dir(tmp_path / "t5", bert_tiny(), tokenizer_json=True)
    assert not (src / "vocab.txt").exists()
    from_json = Tokenizer.for_model_dir(src)
    assert from_json.vocab_file.name == "tokenizer.json"
    assert torch.equal(from_json(captions)[0], Tokenizer()(captions)[0])
    from_json.save_vocab(tmp_path / "vocab.txt")
    assert Tokenizer(tmp_path / "vocab.txt").vocab == Tokenizer().vocab


def test_text_size_mismatch_is_one_line(tmp_path):
    torch.manual_seed(0)
    wide = BertModel(BertConfig(vocab_size=T.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2))
    src = save_bert_dir(tmp_path / "wide", wide)
    with pytest.raises(WeightsError, match=r"^text tower .*shape mismatch: bert\.embeddings"):
        apply_towers(ours(), *read_towers(None, src))


# ---------------------------------------------------------------------------------------------------- convert
def test_convert_from_towers(tmp_path, images, tokenizer, captions, capsys):
    vision = open_clip_tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(vision), tmp_path / "openai.pt")
    bert = bert_tiny()
    text_dir = save_bert_dir(tmp_path / "bert", bert, tokenizer_json=True)
    rc = convert_main(
        [str(tmp_path / "init.safetensors"), "--vision", str(tmp_path / "openai.pt"), "--text", str(text_dir)]
        + ["--model", TINY, "--to", "native"]
    )
    assert rc == 0 and "image tower from" in capsys.readouterr().out
    model = load_model(tmp_path / "init.safetensors").eval()
    ids, mask = tokenizer(captions)
    with torch.no_grad():
        assert_close(model.encode_image(images, normalize=False), vision.encode_image(images))
        expected = bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        assert_close(model.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state, expected)
    # an HF output dir gets the text tower's vocab (here from its tokenizer.json) as vocab.txt
    convert(None, tmp_path / "hf", "hf", name=TINY, text=text_dir)
    assert Tokenizer(tmp_path / "hf" / "vocab.txt").vocab == Tokenizer().vocab
    # a tower replaces the one of a full checkpoint
    convert(tmp_path / "init.safetensors", tmp_path / "swapped.safetensors", "native", vision=tmp_path / "openai.pt")
    with pytest.raises(WeightsError, match="--model NAME"):
        convert(None, tmp_path / "x.safetensors", "native", vision=tmp_path / "openai.pt")
