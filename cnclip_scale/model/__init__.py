"""The Chinese-CLIP model family: configs, towers, tokenizer, preprocessing and weight formats
(checkpoints of every kind, DeepSpeed's included, are read by ``cnclip_scale.checkpoints``).

Names are imported lazily, so a DataLoader worker that needs only ``model.tokenizer`` or ``model.transforms``
does not pay for importing timm and transformers.
"""

import importlib

_EXPORTS = {
    "CLIP": "clip",
    "build_model": "clip",
    "CLIPConfig": "configs",
    "TextConfig": "configs",
    "VisionConfig": "configs",
    "all_model_names": "configs",
    "model_config": "configs",
    "Tokenizer": "tokenizer",
    "WeightsError": "formats",
    "write_checkpoint": "weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
