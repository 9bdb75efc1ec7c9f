"""--to official for sizes cn_clip does not ship also writes the model_configs/*.json pair its create_model reads;
cn_clip builds the model from them and loads the export strictly (ViT and ResNet towers)."""

import json
import shutil
from pathlib import Path

import cn_clip.clip.utils as cn_utils
import pytest
import torch

from cnclip_scale.checkpoints import convert
from cnclip_scale.model import build_model, model_config
from cnclip_scale.model.configs import TINY, CLIPConfig
from cnclip_scale.model.weights import write_native
from tests.model.test_resnet import RN_TINY


def cn_clip_create_model(tmp_path: Path, monkeypatch, model_configs: Path, name: str, export: Path):
    """create_model reads model_configs/ next to its own module: a copy of the package's, plus the exported pair."""
    fake = tmp_path / "cn_clip_pkg"
    shutil.copytree(Path(cn_utils.__file__).parent / "model_configs", fake / "model_configs")
    for f in model_configs.glob("*.json"):
        shutil.copy(f, fake / "model_configs" / f.name)
    monkeypatch.setattr(cn_utils, "__file__", str(fake / "utils.py"))
    return cn_utils.create_model(name, checkpoint=torch.load(export, weights_only=True))


@pytest.mark.parametrize(
    "config",
    [model_config(TINY), CLIPConfig(name="custom", vision=RN_TINY, text=model_config(TINY).text)],
    ids=["vit-tiny", "resnet-custom"],
)
def test_cn_clip_create_model_loads_the_export(tmp_path, monkeypatch, config, tokenizer, captions):
    torch.manual_seed(0)
    ours = build_model(config).eval()
    write_native(ours.state_dict(), config, tmp_path / "m.safetensors")
    out = tmp_path / "export" / "model.pt"
    out.parent.mkdir()
    message = convert(tmp_path / "m.safetensors", out, "official")
    name = message.split("create_model('")[1].split("'")[0]
    assert name == (TINY if config.name == TINY else "model-vision@RoBERTa-Tiny-chinese")
    files = sorted(p.name for p in (out.parent / "model_configs").iterdir())
    assert files == sorted(f"{part}.json" for part in name.split("@"))
    if config.vision == RN_TINY:
        assert (
            json.loads((out.parent / "model_configs" / "model-vision.json").read_text())["vision_layers"] == "[1,2,1,1]"
        )
    ref = cn_clip_create_model(tmp_path, monkeypatch, out.parent / "model_configs", name, out)  # strict load
    ref = ref.float().eval()  # create_model converts to fp16; compare in fp32 with the exported weights
    ref.load_state_dict(
        {k.removeprefix("module."): v for k, v in torch.load(out, weights_only=True)["state_dict"].items()}
    )
    images = torch.randn(2, 3, 64, 64)
    ids, mask = tokenizer(captions)
    with torch.no_grad():
        assert (ours.encode_image(images, normalize=False) - ref.encode_image(images)).abs().max() <= 1e-5
        assert (ours.encode_text(ids, mask, normalize=False) - ref.encode_text(ids)).abs().max() <= 1e-5


def test_official_sizes_write_no_configs(tmp_path):
    config = model_config("ViT-B-16@RoBERTa-wwm-ext-base-chinese")
    from cnclip_scale.model.foreign.cn_clip_configs import write_model_configs

    assert write_model_configs(config, tmp_path / "x.pt") is None and not (tmp_path / "model_configs").exists()
    assert write_model_configs(model_config("ViT-B-16@RoBERTa-wwm-ext-base-chinese", image_size=96), tmp_path / "x.pt")
    assert sorted(p.name for p in (tmp_path / "model_configs").iterdir()) == ["x-vision.json"]
