"""DeepSpeed around the model: config generation, initialisation, precision, the logit_scale clamp.

Everything that knows DeepSpeed lives here, in ``checkpoint.py`` (its save/load/universal conversion) and in
``loop.py`` which calls them; the model does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.utils import (
    safe_get_full_fp32_param,
    safe_get_local_fp32_param,
    safe_set_full_fp32_param,
    safe_set_local_fp32_param,
)

from .. import comm
from ..model.clip import LOGIT_SCALE_MAX, build_model
from .config import ConfigError, RunConfig
from .optim import build_optimizer, build_scheduler


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def ds_config(cfg: RunConfig, world_size: int) -> dict:
    """The generated DeepSpeed config; fields of ``deepspeed.config`` (a JSON file) win over these."""
    precision = cfg.deepspeed.precision
    generated = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.data.batch_size * world_size,
        # Explicit: DeepSpeed's default changed from 0 to 1.0 in 0.19.3.
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        # Dynamic loss scaling (loss_scale 0) over fp32 master weights: what Chinese-CLIP's pure-fp16 mode lacks.
        "fp16": {
            "enabled": precision == "fp16",
            "loss_scale": 0,
            "initial_scale_power": cfg.deepspeed.initial_scale_power,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "bf16": {"enabled": precision == "bf16"},
        "zero_allow_untested_optimizer": True,  # our client torch AdamW
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.deepspeed.config:
        user = json.loads(Path(cfg.deepspeed.config).read_text())
        for fixed in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps"):
            user.pop(fixed, None)  # batch sizes come from data.batch_size, so the loader and engine agree
        generated = _deep_merge(generated, user)
    return generated


def precision(engine) -> str:
    """What the engine runs in. Asked of the engine, not our config: a user's ``deepspeed.config`` JSON may change the
    fp16/bf16 blocks."""
    return "bf16" if engine.bfloat16_enabled() else "fp16" if engine.fp16_enabled() else "fp32"


def input_dtype(engine) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision(engine)]


def use_tensor_cores(engine) -> None:
    """fp32 training on Ampere or newer: let matmuls use TF32 (torch leaves it off; ~8x the fp32 matmul rate)."""
    if engine.device.type == "cuda" and precision(engine) == "fp32":
        torch.set_float32_matmul_precision("high")


def build_engine(
    model: torch.nn.Module, cfg: RunConfig, max_steps: int, load_universal: bool = False, schedule_from: int = 0
):
    """``load_universal``: the engine will load a universal checkpoint (see ``checkpoint.to_universal``).
    ``schedule_from``: the step a fresh schedule starts at (``train.reset_optimizer``: warmup and cosine again, over
    the steps left)."""
    optim = cfg.optim
    optimizer = build_optimizer(
        model,
        optim.lr,
        optim.wd,
        optim.betas,
        optim.eps,
        lr_vision=optim.lr_vision,
        lr_text=optim.lr_text,
        layer_decay=optim.layer_decay,
    )
    scheduler = build_scheduler(optimizer, optim.lr, optim.warmup, max_steps - schedule_from, optim.min_lr)
    config = ds_config(cfg, comm.world())
    accelerator = get_accelerator()
    for half, supported in (("fp16", accelerator.is_fp16_supported), ("bf16", accelerator.is_bf16_supported)):
        if config.get(half, {}).get("enabled") and not supported():
            raise ConfigError(
                f"deepspeed.precision={half}: this {accelerator.device_name()} device has no {half} "
                "support DeepSpeed accepts; choose another precision (bf16 or fp32)"
            )
    if load_universal:
        config.setdefault("checkpoint", {})["load_universal"] = True
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=config,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
    )
    return engine


def clamp_logit_scale(engine) -> torch.Tensor:
    """Clamp logit_scale to [0, ln 100] in the copy the optimiser steps; returns its fp32 value (0-dim, on the engine's
    device; read it on the host only when logging).

    Under fp16/bf16 ZeRO the module holds a half copy that is overwritten from the fp32 master after every step, so
    clamping the module parameter in place would be undone; we clamp the master. The clamp is written back every step
    rather than when it changed: asking whether it changed would be a host sync. All ranks must call this.
    """
    param = engine.module.logit_scale
    if not param.requires_grad:
        return param.detach().float().reshape(())
    master = safe_get_full_fp32_param(param)
    if master is None:  # no optimiser-owned copy (ZeRO-0 fp32): the module parameter is the master
        with torch.no_grad():
            param.clamp_(0, LOGIT_SCALE_MAX)
        return param.detach().float().reshape(())
    clamped = master.clamp(0, LOGIT_SCALE_MAX)
    if hasattr(param, "ds_id"):
        # ZeRO-3: a 1-element parameter is padded across ranks and DeepSpeed's full setter cannot cut it up;
        # the clamp is elementwise, so each rank clamps its own fragment.
        safe_set_local_fp32_param(param, safe_get_local_fp32_param(param).clamp(0, LOGIT_SCALE_MAX))
    else:
        safe_set_full_fp32_param(param, clamped)
    return clamped.to(engine.device).float().reshape(())


def fp32_temperature(scale: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The temperature with the value of exp(fp32 ``logit_scale``) and the gradient of the model's ``scale``.

    Under bf16 the module's copy of logit_scale moves in steps of 2^-6 (about 1.6% of the temperature near ln 100), so
    the model's own exp() is that coarse; the master copy is fp32. The gradient still flows into the module's
    parameter, which is what the engine steps."""
    scale = scale.float()
    return scale + (logit_scale.exp().to(scale.device) - scale).detach()


def plain_model_copy(engine) -> torch.nn.Module:
    """The engine's model as a plain fp32 module on its device, without DeepSpeed's hooks, in eval mode.

    Under ZeRO-3 the engine's module only holds partitions, and even inside ``GatheredParameters`` its per-submodule
    hooks re-partition after each forward and all-gather again on the next: ranks that run a different number of
    evaluation batches would then issue mismatched collectives. The copy runs any number of forwards alone."""
    module = engine.module
    with torch.random.fork_rng(devices=[]):  # its random init must not move the trainer's RNG stream
        copy = build_model(module.config)
    copy = copy.to(engine.device).eval()
    own = dict(copy.named_parameters())
    params = list(module.parameters())
    # modifier_rank=None: gathered read-only on every rank (ZeRO-3); a no-op on the other stages.
    with (
        deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=hasattr(params[0], "ds_id")),
        torch.no_grad(),
    ):
        for name, param in module.named_parameters():
            own[name].copy_(param.detach())
    return copy


class FiniteWatch:
    """Remembers, on the device, the first step whose loss was not finite on this rank; ``first_bad_step`` reads it for
    all ranks (one collective and one host sync: the loop asks on log and checkpoint steps only)."""

    NEVER = 2**62

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), self.NEVER, dtype=torch.long, device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        fresh = ~torch.isfinite(loss.detach()) & (self.first_bad == self.NEVER)
        self.first_bad = torch.where(fresh, step, self.first_bad)

    def first_bad_step(self) -> int | None:
        step = int(comm.all_reduce(self.first_bad, "min").item())  # the host sync, on purpose
        return None if step == self.NEVER else step
