"""Sharded evaluation: embeddings on every rank, exact top-k (gathered or gallery-sharded), recall as
Chinese-CLIP computes it, zero-shot classification, seed-compatible outputs and an HTML report.

Entry points: ``evaluate_retrieval`` (the trainer's in-training validation) and ``run_evaluation``
(``launch/evaluate.py``)."""
from cnclip_scale.eval.run import evaluate_retrieval, run_evaluation  # noqa: F401
