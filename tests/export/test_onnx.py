"""ONNX export of the tiny model: both towers equal PyTorch under onnxruntime at two batch sizes and two text
lengths (fp32 within 1e-4, fp16 within its stated tolerance), the JSON says how to call them, the embedder gives
the model's features, and a failed check or a bad checkpoint is one line and exit code 2."""

import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from cnclip_scale.checkpoints import load_model
from cnclip_scale.cli.export_onnx import main as export_main
from cnclip_scale.export import onnx as onnx_export
from cnclip_scale.export.onnx_runtime import OnnxEmbedder
from cnclip_scale.model import build_model, model_config
from cnclip_scale.model.configs import TINY
from cnclip_scale.model.tokenizer import Tokenizer
from cnclip_scale.model.transforms import image_transform
from cnclip_scale.model.weights import write_checkpoint
from tests.helpers.images import make_image

TEXTS = ["一只橘猫趴在窗台上", "宇航员在太空", "中国寺庙的屋顶", "一杯咖啡", "月球表面的陨石坑"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = build_model(model_config(TINY))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    write_checkpoint(model.state_dict(), model.config, path, "native")
    return str(path)


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    assert export_main([checkpoint, str(out)]) == 0
    return out


def photos(count: int, size: int) -> torch.Tensor:
    transform = image_transform(size)
    return torch.stack([transform(Image.open(io.BytesIO(make_image(10 + i, size=96)[0]))) for i in range(count)])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graphs_equal_pytorch_at_two_batches_and_lengths(exported, checkpoint, precision):
    model = load_model(checkpoint).eval()
    tolerance = {"fp32": 1e-4, "fp16": onnx_export.TOLERANCE["fp16"]}[precision]
    image = ort.InferenceSession(str(exported / f"image_{precision}.onnx"), providers=["CPUExecutionProvider"])
    text = ort.InferenceSession(str(exported / f"text_{precision}.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer()
    with torch.no_grad():
        for batch in (2, 5):
            pixels = photos(batch, model.image_size)
            got = image.run(None, {"pixel_values": pixels.numpy()})[0]
            assert got.shape == (batch, model.config.embed_dim)
            assert np.abs(got - model.encode_image(pixels).numpy()).max() <= tolerance
            for length in (52, 9):  # 9 cuts the longer captions: the mask is all ones there
                ids, mask = tokenizer(TEXTS[:batch], context_length=length)
                got = text.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.long().numpy()})[0]
                assert np.abs(got - model.encode_text(ids, mask).numpy()).max() <= tolerance


def test_fp16_differs_from_fp32_but_within_tolerance(exported):
    meta = json.loads((exported / "onnx_export.json").read_text())
    fp16 = meta["checks"]["fp16"]
    assert 0 < max(fp16["image_max_abs_diff"], fp16["text_max_abs_diff"]) <= onnx_export.TOLERANCE["fp16"]
    assert max(meta["checks"]["fp32"]["image_max_abs_diff"], meta["checks"]["fp32"]["text_max_abs_diff"]) <= 1e-4


def test_axes_are_symbolic_and_json_describes_the_graphs(exported):
    meta = json.loads((exported / "onnx_export.json").read_text())
    for precision in ("fp32", "fp16"):
        for tower in ("image", "text"):
            entry = meta["graphs"][precision][tower]
            graph = onnx.load(str(exported / entry["file"])).graph
            assert [i.name for i in graph.input] == [i["name"] for i in entry["inputs"]]
            assert [o.name for o in graph.output] == [o["name"] for o in entry["outputs"]]
            dims = graph.input[0].type.tensor_type.shape.dim
            assert dims[0].dim_param  # batch is a name, not a number
            if tower == "text":
                assert dims[1].dim_param
    pre = meta["preprocessing"]
    assert pre["image"]["size"] == 64 and len(pre["image"]["mean"]) == 3 and pre["text"]["context_length"] == 52
    assert (exported / pre["text"]["vocab_file"]).is_file() and pre["text"]["vocab_size"] == 21128


def test_embedder_gives_the_model_features(exported, checkpoint):
    model = load_model(checkpoint).eval()
    embedder = OnnxEmbedder(exported)
    images = [Image.open(io.BytesIO(make_image(i, size=80)[0])) for i in range(3)]
    with torch.no_grad():
        want_images = model.encode_image(torch.stack([image_transform(64)(i) for i in images])).numpy()
        want_texts = model.encode_text(*Tokenizer()(TEXTS)).numpy()
    assert np.abs(embedder.embed_images(images) - want_images).max() <= 1e-4
    assert np.abs(embedder.embed_texts(TEXTS) - want_texts).max() <= 1e-4


def test_failed_check_is_one_line(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(onnx_export.TOLERANCE, "fp16", 1e-9)  # fp16 cannot be this close: the check must refuse
    assert export_main([checkpoint, str(tmp_path / "o"), "--precision", "fp16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("export_onnx: ") and "differs from PyTorch" in err and err.count("\n") == 1


def test_bad_checkpoint_is_one_line(tmp_path, capsys):
    assert export_main([str(tmp_path / "none.safetensors"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("export_onnx: ") and err.count("\n") == 1
