"""Sharded evaluation: embeddings on every rank, exact top-k (gathered or gallery-sharded), recall as
Chinese-CLIP computes it, zero-shot classification, seed-compatible outputs and an HTML report.

Entry points: ``evaluate_retrieval`` (the trainer's in-training validation) and ``run_evaluation``
(``launch/evaluate.py``), imported on first use so that ``retrieval``/``outputs`` load without model code.
"""


def __getattr__(name):
    if name in ("evaluate_retrieval", "run_evaluation"):
        from cnclip_scale.eval import run

        return getattr(run, name)
    raise AttributeError(name)


__all__ = ["evaluate_retrieval", "run_evaluation"]
