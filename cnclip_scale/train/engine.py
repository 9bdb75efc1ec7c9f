"""DeepSpeed around the model: config generation, initialisation, the logit_scale clamp, checkpoints.

Everything that knows DeepSpeed lives here (and in ``loop.py`` which calls it); the model does not.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.utils import (safe_get_full_fp32_param, safe_get_local_fp32_param, safe_set_full_fp32_param,
                             safe_set_local_fp32_param)

from .. import comm
from ..errors import UserError
from ..model.clip import LOGIT_SCALE_MAX, build_model
from .config import ConfigError, RunConfig
from .optim import build_optimizer, build_scheduler
from ..safe_load import deepspeed_safe_load

LATEST = "latest"
UNIVERSAL = "universal"  # checkpoints/universal/<tag>: a tag converted for a resume under another world size
OWN_TAG = re.compile(r"step\d{8}")  # the tags ``save`` writes; pruning deletes nothing else


class ResumeError(UserError, RuntimeError):
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


def build_engine(model: torch.nn.Module, cfg: RunConfig, max_steps: int, load_universal: bool = False):
    """``load_universal``: the engine will load a universal checkpoint (see ``to_universal``)."""
    optimizer = build_optimizer(model, cfg.optim.lr, cfg.optim.wd, cfg.optim.betas, cfg.optim.eps)
    scheduler = build_scheduler(optimizer, cfg.optim.lr, cfg.optim.warmup, max_steps, cfg.optim.min_lr)
    config = ds_config(cfg, comm.world())
    accelerator = get_accelerator()
    for half, supported in (("fp16", accelerator.is_fp16_supported), ("bf16", accelerator.is_bf16_supported)):
        if config.get(half, {}).get("enabled") and not supported():
            raise ConfigError(f"deepspeed.precision={half}: this {accelerator.device_name()} device has no {half} "
                              "support DeepSpeed accepts; choose another precision (bf16 or fp32)")
    if load_universal:
        config.setdefault("checkpoint", {})["load_universal"] = True
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config,
        model_parameters=[p for p in model.parameters() if p.requires_grad])
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
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=hasattr(params[0], "ds_id")), \
            torch.no_grad():
        for name, param in module.named_parameters():
            own[name].copy_(param.detach())
    return copy


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
                        world_size=comm.world())
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    rank = comm.rank()
    _atomic_write(root / tag / f"rank{rank:05d}_state.json", json.dumps(rank_state))
    comm.barrier()
    if rank == 0:
        _atomic_write(root / LATEST, tag)
        prune(root, keep_last)
    comm.barrier()  # after rank 0's pruning: the others wait here (comm.timeout() allows for slow file systems)
    return root / tag


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` of this trainer's tags (and their universal copies).

    Only what ``save`` writes counts as a tag: a real directory named ``stepNNNNNNNN`` holding a rank state file. A
    user's ``step_notes/`` or a tag-named folder without our files stays, and so does anything behind a symlink."""
    if keep_last < 1:  # config validation refuses it too; 0 would delete the checkpoint just written
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    tags = sorted(p.name for p in root.iterdir() if OWN_TAG.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
                  and any(p.glob("rank*_state.json")))
    for old in tags[: max(0, len(tags) - keep_last)]:
        shutil.rmtree(root / old, ignore_errors=True)
        universal = root / UNIVERSAL / old
        if universal.is_dir() and not universal.is_symlink():
            shutil.rmtree(universal, ignore_errors=True)


def _inside(root: Path, tag: str, pointer: str) -> Path:
    """``root/tag``, refused unless ``tag`` is one plain name of a directory that really lies in ``root``: a
    ``latest`` file naming ``../x`` or ``/x`` would otherwise send a resume (and the clean-up of a universal
    conversion) outside the run's checkpoint folder."""
    if not tag:
        raise ResumeError(f"{pointer} is empty; delete it to start afresh, or write the tag to resume from "
                          f"(e.g. step00000100) into it")
    plain = tag not in (".", "..") and "/" not in tag and "\\" not in tag and not os.path.isabs(tag)
    if not plain or (root / tag).resolve().parent != root.resolve():
        raise ResumeError(f"{pointer} names {tag!r}, which is not a checkpoint tag inside {root}; refusing to read or "
                          "write outside the run's checkpoint folder")
    return root / tag


def _check_tag(root: Path, tag: str, pointer: str) -> None:
    """Everything a resume reads before the ranks start: the tag dir and every rank's state file. Checked here, on
    every rank alike, so a bad checkpoint is one line instead of one rank failing while the others wait."""
    path = _inside(root, tag, pointer)
    if not path.is_dir():
        raise ResumeError(f"{pointer} points to {tag!r} but {path} does not exist; delete {root / LATEST} or point it "
                          "to an existing tag")
    states = sorted(path.glob("rank*_state.json"))
    if not states:
        raise ResumeError(f"{path}: no rank*_state.json (an incomplete checkpoint, or not written by this trainer)")
    for state in states:
        try:
            ok = isinstance(json.loads(state.read_text()), dict)
        except (OSError, UnicodeDecodeError, ValueError):
            ok = False
        if not ok:
            raise ResumeError(f"{state}: not a complete rank state (truncated or damaged); resume from an earlier tag "
                              f"by writing its name into {root / LATEST}")


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
        tag = (root / LATEST).read_text().strip()
        _check_tag(root, tag, str(root / LATEST))
        return root, tag
    if resume != "auto" and root.is_dir() and root.name.startswith("step"):
        _check_tag(root.parent, root.name, f"train.resume={resume}")
        return root.parent, root.name
    if resume != "auto":
        raise ResumeError(f"train.resume={resume}: neither a checkpoint tag dir nor a dir with a '{LATEST}' file")
    return None


def saved_world_size(root: Path, tag: str) -> int | None:
    """How many ranks wrote checkpoint ``root/tag`` (each leaves its own data-position file)."""
    return len(list((root / tag).glob("rank*_state.json"))) or None


def needs_universal(root: Path, tag: str) -> bool:
    saved = saved_world_size(root, tag)
    return saved is not None and saved != comm.world()


def to_universal(root: Path, tag: str) -> None:
    """Convert ``root/tag`` with DeepSpeed's ``ds_to_universal`` into ``root/universal/tag`` (rank 0, once; a
    finished conversion is marked, so an interrupted one is redone). All ranks call this; the others wait in the
    gather below, for as long as ``comm.timeout()`` allows (big models take minutes)."""
    _inside(root, tag, f"tag {tag!r}")  # the clean-up below deletes root/universal/tag: never anything else
    out = root / UNIVERSAL / tag
    error = None
    if comm.rank() == 0 and not (out / "complete").exists():
        from deepspeed.checkpoint import ds_to_universal

        shutil.rmtree(out, ignore_errors=True)
        workers = max(1, min(8, (os.cpu_count() or 2) // 2))  # the conversion is per-parameter, in parallel
        args = argparse.Namespace(input_folder=str(root / tag), output_folder=str(out), num_extract_workers=workers,
                                  num_merge_workers=workers, keep_temp_folder=False, strict=True,
                                  inject_missing_state=False)
        try:
            with deepspeed_safe_load():  # the converter, too, calls torch.load(weights_only=False)
                ds_to_universal.main(args)
            (out / "complete").write_text(tag)
        except Exception as e:  # noqa: BLE001 - reported to every rank below
            error = f"{type(e).__name__}: {e}"
    errors = comm.gather_objects(error)
    if errors[0]:
        raise ResumeError(
            f"checkpoint {root / tag} was written by {saved_world_size(root, tag)} ranks; converting it to a universal "
            f"checkpoint for {comm.world()} ranks failed ({errors[0]}). Either run with the original number of "
            f"ranks, or start a new run from its weights: model.init={root / tag} train.resume=none.")


def load(engine, root: Path, tag: str) -> tuple[dict, dict]:
    """Restore engine states (model, optimiser, scheduler, loss scaler) and this rank's data position and RNG.

    Under another world size (the engine built with ``load_universal``, after ``to_universal``) the ZeRO states are
    re-partitioned by DeepSpeed; the data position is rank 0's gathered copy (every old rank's position), from which
    the loader plans the rest of the epoch over the new ranks; its RNG state is rank 0's, for the caller to ignore.
    """
    universal = engine.load_universal_checkpoint()
    weight_decay = [group["weight_decay"] for group in engine.optimizer.param_groups]
    error = None
    try:
        with deepspeed_safe_load():
            _, client_state = engine.load_checkpoint(str(root / UNIVERSAL if universal else root), tag=tag)
    except pickle.UnpicklingError as e:  # the weights-only loader refused a pickle that is more than tensors
        client_state, error = None, (f"checkpoint {root / tag}: refused: a file holds more than tensors and plain "
                                     f"values (crafted, or not written by DeepSpeed): {str(e).splitlines()[0]}")
    # Every rank learns whether any rank refused its files: one rank failing alone would leave the others waiting in
    # their first collective.
    errors = [e for e in comm.gather_objects(error) if e]
    if errors:
        raise ResumeError(errors[0])
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
        raise ResumeError(f"checkpoint {root / tag}: DeepSpeed could not load it (see the messages above)")
    rank_file = root / tag / f"rank{0 if universal else comm.rank():05d}_state.json"
    rank_state = json.loads(rank_file.read_text()) if rank_file.exists() else {}
    return client_state, rank_state


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
