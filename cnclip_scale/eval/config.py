"""What ``run_evaluation`` is asked to do: the evaluator's settings as one typed value (``cnclip evaluate`` builds it
from its options; code calls ``run_evaluation(EvalConfig(...))`` directly)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Precision = Literal["auto", "fp32", "fp16", "bf16"]


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    checkpoint: str  # .safetensors, official .pt, HF dir, DeepSpeed checkpoint dir or training run dir
    data: str  # shard manifest/folder/URL (``a::b`` mixes), or a seed-layout folder
    output: str  # output directory
    split: str = "test"  # seed-layout split name; also names the output files
    top_k: int = 10  # predictions kept per query (recall is always @1/5/10)
    batch_size: int = 64  # images per batch per rank
    workers: int = 2  # data loader workers per rank
    context_length: int = 52
    precision: Precision = "auto"  # auto: bf16 (fp16 without bf16 support) on GPU, fp32 on CPU
    zeroshot_classes: str | None = None  # class names, one per line
    templates: str | None = None  # prompt templates, one per line, '{}' marks the class name
    save_features: bool = False  # also write the seed's feature JSONL files
    gallery_sharded: bool = False  # keep image features on their rank; exact merged top-k
    thumbs_limit: int = 20000  # thumbnails kept per rank for the report
    write_report: bool = True  # report.html
    storage_options: dict | None = None  # fsspec options for s3://... data (endpoint_url, key, secret, ...)
