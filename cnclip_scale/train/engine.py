"""DeepSpeed around the model: config generation, initialisation, the logit_scale clamp, checkpoints.

Everything that knows DeepSpeed lives here (and in ``loop.py`` which calls it); the model does not.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils import (safe_get_full_fp32_param, safe_get_local_fp32_param, safe_set_full_fp32_param,
                             safe_set_local_fp32_param)

from ..model.clip import LOGIT_SCALE_MAX
from .config import RunConfig
from .optim import build_optimizer, build_scheduler
from ..safe_load import deepspeed_safe_load

LATEST = "latest"
UNIVERSAL = "universal"  # checkpoints/universal/<tag>: a tag converted for a resume under another world size


class ResumeError(RuntimeError):
    """A checkpoint this job cannot continue from; the message says what to do instead."""


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
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": cfg.deepspeed.initial_scale_power,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
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


def init_distributed() -> None:
    """Process group from the env:// variables (see ``cnclip_scale.dist``): nccl on GPUs, gloo on CPU."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def input_dtype(cfg: RunConfig) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[cfg.deepspeed.precision]


def build_engine(model: torch.nn.Module, cfg: RunConfig, max_steps: int, load_universal: bool = False):
    """``load_universal``: the engine will load a universal checkpoint (see ``to_universal``)."""
    optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.wd, cfg.optim.betas, cfg.optim.eps)
    scheduler = build_scheduler(optimizer, cfg.optim.lr, cfg.optim.warmup, max_steps, cfg.optim.min_lr)
    config = ds_config(cfg, dist.get_world_size())
    if load_universal:
        config.setdefault("checkpoint", {})["load_universal"] = True
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config,
        model_parameters=[p for p in model.parameters() if p.requires_grad])
    return engine


def clamp_logit_scale(engine) -> float:
    """Clamp logit_scale to [0, ln 100] in the copy the optimiser steps.

    Under fp16/bf16 ZeRO the module holds a half copy that is overwritten from the fp32 master after every step, so
    clamping the module parameter in place would be undone; we clamp the master. All ranks must call this.
    """
    param = engine.module.logit_scale
    if not param.requires_grad:
        return float(param.detach().float().reshape(-1)[0])
    master = safe_get_full_fp32_param(param)
    if master is None:  # no optimiser-owned copy (ZeRO-0 fp32): the module parameter is the master
        with torch.no_grad():
            param.clamp_(0, LOGIT_SCALE_MAX)
        return float(param.detach().reshape(-1)[0])
    clamped = master.clamp(0, LOGIT_SCALE_MAX)
    if not torch.equal(clamped, master):
        if hasattr(param, "ds_id"):
            # ZeRO-3: a 1-element parameter is padded across ranks and DeepSpeed's full setter cannot cut it up;
            # the clamp is elementwise, so each rank clamps its own fragment.
            safe_set_local_fp32_param(param, safe_get_local_fp32_param(param).clamp(0, LOGIT_SCALE_MAX))
        else:
            safe_set_full_fp32_param(param, clamped)
    return float(clamped.reshape(-1)[0])


# ---------------------------------------------------------------------------------------------------- checkpoints
def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save(engine, output_dir: str | Path, step: int, client_state: dict, rank_state: dict, keep_last: int) -> Path:
    """One checkpoint, written so that a kill at any moment leaves the previous one usable.

    Order: DeepSpeed states (all ranks) → each rank's data position and RNG → barrier → the ``latest`` pointer
    (rank 0, atomic rename) → pruning of old tags. A checkpoint without the pointer is never resumed from.
    """
    root = checkpoint_dir(output_dir)
    tag = f"step{step:08d}"
    client_state = dict(client_state, universal_checkpoint_info={"universal_checkpoint_version": 0.2},
                        world_size=dist.get_world_size())
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    rank = dist.get_rank()
    _atomic_write(root / tag / f"rank{rank:05d}_state.json", json.dumps(rank_state))
    dist.barrier()
    if rank == 0:
        _atomic_write(root / LATEST, tag)
        tags = sorted(p.name for p in root.glob("step*") if p.is_dir())
        for old in tags[: max(0, len(tags) - keep_last)]:
            shutil.rmtree(root / old, ignore_errors=True)
            shutil.rmtree(root / UNIVERSAL / old, ignore_errors=True)
    dist.barrier()
    return root / tag


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def find_resume(resume: str, output_dir: str | Path) -> tuple[Path, str] | None:
    """``auto``: the latest complete checkpoint of this run (or none); ``none``; or a path to a tag directory or a
    checkpoints directory with a ``latest`` pointer."""
    if resume == "none":
        return None
    root = checkpoint_dir(output_dir) if resume == "auto" else Path(resume)
    if (root / LATEST).exists():
        return root, (root / LATEST).read_text().strip()
    if resume != "auto" and root.is_dir() and root.name.startswith("step"):
        return root.parent, root.name
    if resume != "auto":
        raise ResumeError(f"train.resume={resume}: neither a checkpoint tag dir nor a dir with a '{LATEST}' file")
    return None


def saved_world_size(root: Path, tag: str) -> int | None:
    """How many ranks wrote checkpoint ``root/tag`` (each leaves its own data-position file)."""
    return len(list((root / tag).glob("rank*_state.json"))) or None


def needs_universal(root: Path, tag: str) -> bool:
    saved = saved_world_size(root, tag)
    return saved is not None and saved != dist.get_world_size()


def to_universal(root: Path, tag: str) -> None:
    """Convert ``root/tag`` with DeepSpeed's ``ds_to_universal`` into ``root/universal/tag`` (rank 0, once; a
    finished conversion is marked, so an interrupted one is redone). All ranks call this."""
    out = root / UNIVERSAL / tag
    error = None
    if dist.get_rank() == 0 and not (out / "complete").exists():
        from deepspeed.checkpoint import ds_to_universal

        shutil.rmtree(out, ignore_errors=True)
        args = argparse.Namespace(input_folder=str(root / tag), output_folder=str(out), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=False)
        try:
            with deepspeed_safe_load():  # the converter, too, calls torch.load(weights_only=False)
                ds_to_universal.main(args)
            (out / "complete").write_text(tag)
        except Exception as e:  # noqa: BLE001 - reported to every rank below
            error = f"{type(e).__name__}: {e}"
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    if errors[0]:
        raise ResumeError(
            f"checkpoint {root / tag} was written by {saved_world_size(root, tag)} ranks; converting it to a universal "
            f"checkpoint for {dist.get_world_size()} ranks failed ({errors[0]}). Either run with the original number of "
            f"ranks, or start a new run from its weights: model.init={root / tag} train.resume=none.")


def load(engine, root: Path, tag: str) -> tuple[dict, dict]:
    """Restore engine states (model, optimiser, scheduler, loss scaler) and this rank's data position and RNG.

    Under another world size (the engine built with ``load_universal``, after ``to_universal``) the ZeRO states are
    re-partitioned by DeepSpeed; the data position is rank 0's gathered copy (every old rank's position), from which
    the loader plans the rest of the epoch over the new ranks; its RNG state is rank 0's, for the caller to ignore.
    """
    universal = engine.load_universal_checkpoint()
    weight_decay = [group["weight_decay"] for group in engine.optimizer.param_groups]
    with deepspeed_safe_load():
        _, client_state = engine.load_checkpoint(str(root / UNIVERSAL if universal else root), tag=tag)
    if universal:
        # Two slips of DeepSpeed's ZeRO-3 universal loader (0.19): every group gets the first group's hyperparameters,
        # which would put weight decay on biases and norms, so the model's decay is set back; and every group's Adam
        # state gets the *same* step tensor, which torch's AdamW increments in place once per group, so each group
        # would count its steps (bias correction) from a different number; each gets its own copy.
        for group, decay in zip(engine.optimizer.param_groups, weight_decay):
            group["weight_decay"] = decay
        for state in engine.optimizer.optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()
    if client_state is None:
        raise RuntimeError(f"checkpoint {root / tag}: DeepSpeed could not load it (see the messages above)")
    rank_file = root / tag / f"rank{0 if universal else dist.get_rank():05d}_state.json"
    rank_state = json.loads(rank_file.read_text()) if rank_file.exists() else {}
    return client_state, rank_state


def check_finite(loss: torch.Tensor) -> bool:
    """True on every rank iff the loss is finite on every rank."""
    flag = torch.tensor([0.0 if math.isfinite(loss.item()) else 1.0])
    dist.all_reduce(flag)
    return flag.item() == 0
