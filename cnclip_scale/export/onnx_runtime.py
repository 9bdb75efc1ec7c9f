"""Embed texts and images with the exported graphs and onnxruntime: no model code, only ``onnx_export.json``,
the graphs and ``vocab.txt`` (for a service that should not load PyTorch weights, or that runs on Triton's
onnxruntime backend with the same inputs).

    embedder = OnnxEmbedder("export/", precision="fp16")
    embedder.embed_texts(["一只橘猫"])          # float32 [1, D], L2-normalised
    embedder.embed_images([PIL.Image.open(...)])
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cnclip_scale.errors import UserError

from .onnx import EXPORT_JSON


class OnnxExportError(UserError):
    """An export directory that is incomplete or asked for a precision it does not hold."""


class OnnxEmbedder:
    def __init__(
        self,
        export_dir: str | Path,
        precision: str = "fp32",
        providers: list[str] | None = None,
        threads: int | None = None,
    ):
        import onnxruntime as ort

        from cnclip_scale.model.tokenizer import Tokenizer

        self.dir = Path(export_dir)
        if not (self.dir / EXPORT_JSON).is_file():
            raise OnnxExportError(f"{self.dir}: no {EXPORT_JSON} (write one with tools/export_onnx.py)")
        self.meta = json.loads((self.dir / EXPORT_JSON).read_text(encoding="utf-8"))
        if precision not in self.meta["graphs"]:
            raise OnnxExportError(f"{self.dir}: no {precision} graphs (has {', '.join(self.meta['graphs'])})")
        graphs, text_pre = self.meta["graphs"][precision], self.meta["preprocessing"]["text"]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = providers or ["CPUExecutionProvider"]
        self.text_session = ort.InferenceSession(str(self.dir / graphs["text"]["file"]), options, providers=providers)
        self.image_session = ort.InferenceSession(str(self.dir / graphs["image"]["file"]), options, providers=providers)
        self.tokenizer = Tokenizer(self.dir / text_pre["vocab_file"], context_length=text_pre["context_length"])
        self.image_size = self.meta["preprocessing"]["image"]["size"]

    def embed_texts(self, texts: list[str], context_length: int | None = None) -> np.ndarray:
        ids, mask = self.tokenizer(list(texts), context_length=context_length)
        inputs = {"input_ids": ids.numpy(), "attention_mask": mask.long().numpy()}
        return self.text_session.run(None, inputs)[0]

    def embed_images(self, images: list) -> np.ndarray:
        """PIL images, preprocessed exactly as the evaluator does (``transforms.image_transform``)."""
        import torch

        from cnclip_scale.model.transforms import image_transform

        transform = image_transform(self.image_size)
        pixels = torch.stack([transform(image) for image in images]).numpy()
        return self.image_session.run(None, {"pixel_values": pixels})[0]
