"""The two towers as ONNX graphs for onnxruntime / Triton, each checked against the PyTorch model on export.

    image_{fp32,fp16}.onnx   pixel_values float32 [batch, 3, S, S] (resized, normalised) -> image_features [batch, D]
    text_{fp32,fp16}.onnx    input_ids, attention_mask int64 [batch, length]             -> text_features [batch, D]
    onnx_export.json         names, shapes, preprocessing, the checks' max abs diffs     (vocab.txt beside it)

Features come out L2-normalised, as ``CLIP.encode_image`` / ``encode_text`` return them. The fp16 graphs compute
in half precision but keep float32 inputs and outputs, so a caller switches precision by file name only.
Exported with torch's dynamo exporter (``torch.export`` + onnxscript): batch and text length are symbolic.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnclip_scale.errors import UserError
from cnclip_scale.model.tokenizer import Tokenizer
from cnclip_scale.model.transforms import MEAN, STD, image_transform

OPSET = 18
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3}  # max abs diff on unit-norm features vs the fp32 PyTorch model
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
CHECK_BATCHES = (1, 3)  # two batch sizes and two text lengths prove the axes are dynamic
SHORT_CONTEXT = 16
EXPORT_JSON = "onnx_export.json"


class ExportCheckError(UserError):
    """An exported graph whose outputs differ from the PyTorch model by more than the tolerance."""


class ImageTower(nn.Module):
    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values.to(self.dtype)).float()


class TextTower(nn.Module):
    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask).float()


def sample_inputs(image_size: int, tokenizer: Tokenizer, count: int = 4) -> tuple[torch.Tensor, list[str]]:
    """Real photos (bundled with scikit-image / scikit-learn) preprocessed as at evaluation, and their Chinese
    captions."""
    import io

    from PIL import Image

    from tests.helpers.images import make_image

    transform = image_transform(image_size)
    pairs = [make_image(i, size=max(image_size, 128)) for i in range(count)]
    images = torch.stack([transform(Image.open(io.BytesIO(data))) for data, _ in pairs])
    return images, [caption for _, caption in pairs]


def export_graph(
    tower: nn.Module, args: tuple, path: Path, input_names: list[str], output_name: str, dynamic_shapes: dict
) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not about our graph
        program = torch.onnx.export(
            tower,
            args,
            dynamo=True,
            opset_version=OPSET,
            input_names=input_names,
            output_names=[output_name],
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    program.save(str(path))


def export_towers(
    model: nn.Module,
    out_dir: str | Path,
    *,
    tokenizer: Tokenizer | None = None,
    precisions: tuple[str, ...] = ("fp32", "fp16"),
    source: str = "",
    log=print,
) -> dict:
    """Write both towers in each precision, check each with onnxruntime, write ``onnx_export.json``; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    tokenizer = tokenizer or Tokenizer()
    cfg = model.config
    images, texts = sample_inputs(cfg.vision.image_size, tokenizer)
    ids, mask = tokenizer(texts)
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("length", min=2, max=cfg.text.max_position_embeddings)
    meta = {
        "model": cfg.name,
        "source": str(source),
        "opset": OPSET,
        "graphs": {},
        "checks": {},
        "preprocessing": preprocessing(cfg, tokenizer),
        "embed_dim": cfg.embed_dim,
        "logit_scale": float(model.logit_scale.detach().clamp(0, np.log(100)).exp()),
    }
    for precision in precisions:
        half = _copy_as(model, PRECISIONS[precision])
        image_file, text_file = f"image_{precision}.onnx", f"text_{precision}.onnx"
        export_graph(
            ImageTower(half, PRECISIONS[precision]),
            (images[:2],),
            out / image_file,
            ["pixel_values"],
            "image_features",
            {"pixel_values": {0: batch}},
        )
        export_graph(
            TextTower(half, PRECISIONS[precision]),
            (ids[:2], mask[:2].long()),
            out / text_file,
            ["input_ids", "attention_mask"],
            "text_features",
            {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
        )
        meta["graphs"][precision] = graph_entry(image_file, text_file, cfg)
        meta["checks"][precision] = check_graphs(
            model, out / image_file, out / text_file, images, texts, tokenizer, TOLERANCE[precision]
        )
        log(
            f"{precision}: {image_file}, {text_file}; max abs diff vs PyTorch fp32: "
            f"image {meta['checks'][precision]['image_max_abs_diff']:.2e}, "
            f"text {meta['checks'][precision]['text_max_abs_diff']:.2e} (tolerance {TOLERANCE[precision]:g})"
        )
    tokenizer.save_vocab(out / "vocab.txt")
    (out / EXPORT_JSON).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return meta


def _copy_as(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(dtype).eval() if dtype != torch.float32 else model


def preprocessing(cfg, tokenizer: Tokenizer) -> dict:
    return {
        "image": {
            "size": cfg.vision.image_size,
            "resize": "bicubic to size x size (no crop)",
            "color": "RGB",
            "scale": "pixel / 255",
            "mean": list(MEAN),
            "std": list(STD),
            "layout": "NCHW",
        },
        "text": {
            "vocab_file": "vocab.txt",
            "vocab_size": tokenizer.vocab_size,
            "context_length": tokenizer.context_length,
            "max_length": cfg.text.max_position_embeddings,
            "lowercase": True,
            "tokenizer": "BERT WordPiece (Chinese characters split, accents stripped)",
            "format": "[CLS] tokens[:length-2] [SEP], padded with pad_id; attention_mask = input_ids != pad_id",
            "cls_id": tokenizer.cls_id,
            "sep_id": tokenizer.sep_id,
            "pad_id": tokenizer.pad_id,
        },
    }


def graph_entry(image_file: str, text_file: str, cfg) -> dict:
    d = cfg.embed_dim
    return {
        "image": {
            "file": image_file,
            "inputs": [
                {
                    "name": "pixel_values",
                    "dtype": "float32",
                    "shape": ["batch", 3, cfg.vision.image_size, cfg.vision.image_size],
                }
            ],
            "outputs": [{"name": "image_features", "dtype": "float32", "shape": ["batch", d]}],
        },
        "text": {
            "file": text_file,
            "inputs": [
                {"name": n, "dtype": "int64", "shape": ["batch", "length"]} for n in ("input_ids", "attention_mask")
            ],
            "outputs": [{"name": "text_features", "dtype": "float32", "shape": ["batch", d]}],
        },
    }


def check_graphs(
    model: nn.Module,
    image_path: Path,
    text_path: Path,
    images: torch.Tensor,
    texts: list[str],
    tokenizer: Tokenizer,
    tolerance: float,
) -> dict:
    """onnxruntime vs the fp32 PyTorch model at batch sizes ``CHECK_BATCHES`` and two text lengths."""
    import onnxruntime as ort

    image_session = ort.InferenceSession(str(image_path), providers=["CPUExecutionProvider"])
    text_session = ort.InferenceSession(str(text_path), providers=["CPUExecutionProvider"])
    image_diff = text_diff = 0.0
    with torch.no_grad():
        for b in CHECK_BATCHES:
            want = model.encode_image(images[:b]).numpy()
            got = image_session.run(None, {"pixel_values": images[:b].numpy()})[0]
            image_diff = max(image_diff, float(np.abs(got - want).max()))
            for length in (tokenizer.context_length, SHORT_CONTEXT):
                ids, mask = tokenizer(texts[:b], context_length=length)
                want = model.encode_text(ids, mask).numpy()
                got = text_session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.long().numpy()})[0]
                text_diff = max(text_diff, float(np.abs(got - want).max()))
    if max(image_diff, text_diff) > tolerance:
        raise ExportCheckError(
            f"{image_path.parent}: onnxruntime differs from PyTorch by image {image_diff:.3g}, "
            f"text {text_diff:.3g} (tolerance {tolerance:g})"
        )
    return {
        "image_max_abs_diff": image_diff,
        "text_max_abs_diff": text_diff,
        "tolerance": tolerance,
        "batch_sizes": list(CHECK_BATCHES),
        "text_lengths": [tokenizer.context_length, SHORT_CONTEXT],
        "images": "bundled real photos (tests.helpers.images)",
        "texts": texts,
    }
