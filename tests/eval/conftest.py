"""Fixtures for the evaluator tests: a tiny random-init checkpoint and a seed-layout split of real photos."""

import pytest
import torch

from cnclip_scale.model import build_model, model_config
from cnclip_scale.model.configs import TINY
from cnclip_scale.model.weights import write_checkpoint
from tests.helpers.seed_data import write_seed_split


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = build_model(model_config(TINY))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    write_checkpoint(model.state_dict(), model.config, path, "native")
    return str(path)


@pytest.fixture(scope="session")
def seed_split(tmp_path_factory):
    """A 30-image test split (texts naming one or two images); returns (folder, truth)."""
    root = tmp_path_factory.mktemp("seed")
    truth = write_seed_split(str(root), "test", 30, size=48)
    return str(root), truth
