"""The engine helpers the training step calls, without an engine: the finiteness watch, the fp32 temperature, and
the DeepSpeed config (generated, and merged with a user's JSON)."""

import json
import math

import torch

from cnclip_scale.train.config import load_config
from cnclip_scale.train.engine import FiniteWatch, ds_config, fp32_temperature


def test_finite_watch_names_the_first_bad_step_and_only_when_asked():
    watch = FiniteWatch(torch.device("cpu"))
    watch.update(torch.tensor(2.5), 1)
    assert watch.first_bad_step() is None
    watch.update(torch.tensor(float("nan")), 2)
    watch.update(torch.tensor(1.0), 3)
    watch.update(torch.tensor(float("inf")), 4)
    assert watch.first_bad_step() == 2
    assert watch.first_bad.dtype == torch.long and watch.first_bad.dim() == 0  # kept as a device tensor


def test_fp32_temperature_has_the_fp32_value_and_the_models_gradient():
    master = torch.tensor(math.log(1 / 0.07))  # the optimizer's fp32 copy
    param = torch.nn.Parameter(master.to(torch.bfloat16).reshape(1))  # the module's bf16 copy
    scale = param.clamp(0, math.log(100)).exp().squeeze(0)
    assert abs(scale.item() - master.exp().item()) > 1e-3  # bf16 is coarse here (about 0.06 of 14.3)
    temperature = fp32_temperature(scale, master)
    assert temperature.dtype == torch.float32 and temperature.item() == master.exp().item()
    (temperature * 2).backward()
    assert param.grad is not None and param.grad.item() == (2 * scale).item()


def test_ds_config_follows_the_run_config():
    cfg = load_config(
        None,
        [
            "data.batch_size=6",
            "deepspeed.precision=fp16",
            "deepspeed.zero_stage=3",
            "optim.grad_clip=0.5",
            "deepspeed.initial_scale_power=12",
        ],
    )
    config = ds_config(cfg, world_size=4)
    assert config["train_micro_batch_size_per_gpu"] == 6 and config["train_batch_size"] == 24
    assert config["gradient_accumulation_steps"] == 1 and config["gradient_clipping"] == 0.5
    assert config["zero_optimization"] == {"stage": 3}
    assert config["fp16"]["enabled"] and config["fp16"]["loss_scale"] == 0
    assert config["fp16"]["initial_scale_power"] == 12
    assert not config["bf16"]["enabled"]


def test_a_users_deepspeed_json_wins_field_by_field_except_the_batch_sizes(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(
        json.dumps(
            {
                "train_batch_size": 999,
                "train_micro_batch_size_per_gpu": 999,
                "gradient_accumulation_steps": 4,
                "zero_optimization": {"offload_optimizer": {"device": "cpu"}},  # merged into ours, stage kept
                "bf16": {"enabled": True},
                "gradient_clipping": 2.0,
            }
        )
    )
    cfg = load_config(None, ["data.batch_size=8", "deepspeed.precision=fp32", f"deepspeed.config={user}"])
    config = ds_config(cfg, world_size=2)
    # the batch sizes stay data.batch_size's: the loader and the engine must agree on them
    assert (
        config["train_micro_batch_size_per_gpu"],
        config["train_batch_size"],
        config["gradient_accumulation_steps"],
    ) == (8, 16, 1)
    assert config["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu"}}
    assert config["bf16"] == {"enabled": True} and config["gradient_clipping"] == 2.0
    assert config["fp16"]["enabled"] is False  # a block the user left alone keeps our values
