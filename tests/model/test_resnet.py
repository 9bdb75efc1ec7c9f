"""RN50@RBT3-chinese: the ModifiedResNet image tower (model/resnet.py) against Chinese-CLIP's own model (cn_clip 1.6.0)
on real photos: official .pt in, features equal to 1e-5; native and official round trips; no HF layout."""

import pytest
import torch
import torch.nn.functional as F
from cn_clip.clip.model import CLIP as ReferenceCLIP
from PIL import Image

from cnclip_scale.checkpoints import convert, load_model, read_checkpoint
from cnclip_scale.model import WeightsError, build_model, model_config
from cnclip_scale.model.configs import TINY, CLIPConfig, ResNetConfig
from cnclip_scale.model.transforms import image_transform
from cnclip_scale.model.weights import infer_config
from tests.helpers.images import photos

TOL = 1e-5
RN_TINY = ResNetConfig(image_size=64, layers=(1, 2, 1, 1), width=16, embed_dim=32)  # heads 8, attention pool 512 wide


def reference(vision: ResNetConfig, text_name: str, seed: int = 1) -> ReferenceCLIP:
    t = model_config(f"ViT-B-16@{text_name}").text
    torch.manual_seed(seed)
    ref = ReferenceCLIP(
        embed_dim=vision.embed_dim,
        image_resolution=vision.image_size,
        vision_layers=list(vision.layers),
        vision_width=vision.width,
        vision_patch_size=None,
        vocab_size=t.vocab_size,
        text_attention_probs_dropout_prob=0.1,
        text_hidden_act="gelu",
        text_hidden_dropout_prob=0.1,
        text_hidden_size=t.hidden_size,
        text_initializer_range=0.02,
        text_intermediate_size=t.intermediate_size,
        text_max_position_embeddings=t.max_position_embeddings,
        text_num_attention_heads=t.heads,
        text_num_hidden_layers=t.layers,
        text_type_vocab_size=t.type_vocab_size,
    )
    with torch.no_grad():  # trained-looking batch norms: running statistics and affine parameters off 0/1
        for m in ref.visual.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return ref.eval()


def real_images(size: int) -> torch.Tensor:
    transform = image_transform(size)
    return torch.stack([transform(Image.fromarray(array)) for _, array in photos()[:4]])


def save_official(ref, path):
    torch.save(
        {"epoch": 1, "step": 2, "name": "rn", "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}},
        path,
    )
    return path


def assert_parity(ours, ref, images, tokenizer, captions):
    ids, mask = tokenizer(captions)
    with torch.no_grad():
        diff_img = (ours.encode_image(images, normalize=False) - ref.encode_image(images)).abs().max().item()
        diff_txt = (ours.encode_text(ids, mask, normalize=False) - ref.encode_text(ids)).abs().max().item()
    assert diff_img <= TOL and diff_txt <= TOL, (diff_img, diff_txt)


def test_tiny_resnet_official_checkpoint_matches_cn_clip(tmp_path, tokenizer, captions):
    ref = reference(RN_TINY, "RoBERTa-Tiny-chinese")
    ours = load_model(save_official(ref, tmp_path / "rn.pt")).eval()
    assert ours.config.vision == RN_TINY and ours.config.text == model_config(TINY).text
    assert_parity(ours, ref, real_images(64), tokenizer, captions)


def test_rn50_at_full_size_matches_cn_clip(tmp_path, tokenizer, captions):
    config = model_config("RN50@RBT3-chinese")
    ref = reference(config.vision, "RBT3-chinese")
    ours = load_model(save_official(ref, tmp_path / "clip_cn_rn50.pt")).eval()
    assert ours.config == config  # sizes read off the tensors and matched to the registry
    assert_parity(ours, ref, real_images(224)[:2], tokenizer, captions[:2])


def test_round_trips_and_no_hf_layout(tmp_path):
    torch.manual_seed(0)
    config = CLIPConfig(name="custom", vision=RN_TINY, text=model_config(TINY).text)
    model = build_model(config)
    native = tmp_path / "rn.safetensors"
    convert(save_official(reference(RN_TINY, "RoBERTa-Tiny-chinese"), tmp_path / "in.pt"), native, "native")
    convert(native, tmp_path / "out.pt", "official")
    a, config_a, _ = read_checkpoint(native)
    b, config_b, fmt = read_checkpoint(tmp_path / "out.pt")
    assert fmt == "official" and config_a == config_b == config
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(a) == sorted(model.state_dict())
    exported = torch.load(tmp_path / "out.pt", weights_only=True)["state_dict"]
    assert sorted(exported) == sorted("module." + k for k in reference(RN_TINY, "RoBERTa-Tiny-chinese").state_dict())
    with pytest.raises(WeightsError, match="ChineseCLIPModel has no ResNet image tower"):
        convert(native, tmp_path / "hf", "hf")


def test_registry_and_training_knobs():
    with torch.device("meta"):
        model = build_model(model_config("RN50@RBT3-chinese"))
    assert infer_config(model.state_dict()).name == "RN50@RBT3-chinese"
    n = sum(p.numel() for p in model.parameters())
    assert 75e6 < n < 80e6, n  # Chinese-CLIP lists RN50@RBT3-chinese at 77M
    model.set_grad_checkpointing(True)
    torch.manual_seed(0)
    tiny = build_model(CLIPConfig(name="custom", vision=RN_TINY, text=model_config(TINY).text), grad_checkpointing=True)
    images = torch.randn(2, 3, 64, 64)
    out = tiny.encode_image(images)
    out.sum().backward()
    assert out.shape == (2, 32) and tiny.visual.conv1.weight.grad is not None
    assert torch.allclose(F.normalize(out, dim=-1), out, atol=1e-6)
