"""The Chinese-CLIP model family: configs, towers, tokenizer, preprocessing and weight formats."""
from .clip import CLIP, build_model
from .configs import CLIPConfig, TextConfig, VisionConfig, all_model_names, model_config
from .tokenizer import Tokenizer
from .weights import WeightsError, load_model, read_checkpoint, write_checkpoint

__all__ = ["CLIP", "CLIPConfig", "TextConfig", "Tokenizer", "VisionConfig", "WeightsError", "all_model_names",
           "build_model", "load_model", "model_config", "read_checkpoint", "write_checkpoint"]
