"""Fixtures for the GPU checks (``make gpu-check``), shared between tests because each launch costs 20-40 s of
start-up; the helpers they use are in tests/helpers/gpu_runs.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.gpu_runs import PRETRAIN, deepspeed_cmd, make_shards_224, reference_args, run


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    # 256 training images: 8 steps an epoch at batch 32, so 30 steps cross epochs and the loss can fall by learning
    # the data; 64 validation images for the recall the trainer and the evaluator compute.
    return make_shards_224(tmp_path_factory.mktemp("gpu-data"), {"train": 256, "valid": 64})


@pytest.fixture(scope="session")
def reference_run(shards, tmp_path_factory) -> tuple[Path, str]:
    """The reference run (``reference_args``): its own checks, the kill -9 comparison, the evaluator's checkpoint."""
    out = tmp_path_factory.mktemp("reference") / "out"
    log = run(deepspeed_cmd(PRETRAIN, reference_args(shards, out)), log=out.parent / "train.log")
    return out, log
