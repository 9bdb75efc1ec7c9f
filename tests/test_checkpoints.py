"""Checkpoints beyond the model's own files: DeepSpeed ZeRO dirs and training run dirs (the trainer's output_dir)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cnclip_scale.checkpoints import WeightsError, detect_format, load_model, read_checkpoint
from cnclip_scale.errors import UserError
from cnclip_scale.model import build_model, model_config
from cnclip_scale.model.configs import TINY
from cnclip_scale.model.weights import write_checkpoint
from tests.helpers.ports import free_port_block
from tests.helpers.train_runs import train_env

REPO = Path(__file__).resolve().parents[1]

# One CPU rank saves a ZeRO-2 checkpoint where and as the trainer does: OUT/checkpoints/step00000001, then the
# 'latest' pointer, with the model config in the client state. Seed 0 makes the weights those of tiny_model().
SAVE_ZERO2 = textwrap.dedent("""
    import sys
    from pathlib import Path
    import deepspeed, torch
    from cnclip_scale.model import build_model, model_config
    from cnclip_scale.model.configs import TINY
    torch.manual_seed(0)
    model = build_model(model_config(TINY))
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config={
        "train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True})
    root = Path(sys.argv[1]) / "checkpoints"
    engine.save_checkpoint(str(root), tag="step00000001", client_state={"model_config": model.config.to_dict()},
                           save_latest=False)
    (root / "latest").write_text("step00000001")
""")


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(model_config(TINY))


def assert_weights_of(sd: dict, model: torch.nn.Module):
    own = model.state_dict()
    assert sorted(sd) == sorted(own)
    assert all(torch.equal(sd[k], own[k]) for k in own), [k for k in own if not torch.equal(sd[k], own[k])][:3]


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    env = train_env(
        RANK=0,
        LOCAL_RANK=0,
        WORLD_SIZE=1,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=free_port_block(1),
        PYTHONPATH=str(REPO),
    )
    subprocess.run(
        [sys.executable, "-c", SAVE_ZERO2, str(out)], env=env, cwd=out, check=True, capture_output=True, timeout=600
    )
    return out


def test_deepspeed_dir_reads_the_fp32_weights_and_config(zero2_run):
    for path in (zero2_run / "checkpoints", zero2_run / "checkpoints" / "step00000001"):  # the root or one tag
        sd, config, fmt = read_checkpoint(path)
        assert fmt == "deepspeed" and config == model_config(TINY)
        assert_weights_of(sd, tiny_model())


def test_run_dir_reads_its_latest_checkpoint_without_an_export(zero2_run):
    assert detect_format(zero2_run) == "deepspeed"
    sd, _, fmt = read_checkpoint(zero2_run)
    assert fmt == "deepspeed"
    assert_weights_of(sd, tiny_model())


def test_run_dir_prefers_its_export(zero2_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(zero2_run / "checkpoints")
    exported = tiny_model(seed=1)  # other weights than the checkpoint's, so the test sees which was read
    write_checkpoint(exported.state_dict(), exported.config, run / "model.safetensors", "native")
    sd, _, fmt = read_checkpoint(run)
    assert fmt == "native"
    assert_weights_of(sd, exported)
    assert_weights_of(load_model(run).state_dict(), exported)


def test_incomplete_deepspeed_tag_is_named(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step00000002").mkdir(parents=True)
    (root / "latest").write_text("step00000002")
    with pytest.raises(WeightsError, match=rf"{root / 'step00000002'}: no DeepSpeed model states file"):
        read_checkpoint(root)


def test_unknown_dir_is_one_user_error_naming_every_kind(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(UserError, match=rf"{tmp_path}: neither a Hugging Face .* DeepSpeed .* nor a training run dir"):
        read_checkpoint(tmp_path)
