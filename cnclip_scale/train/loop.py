"""The training loop: read top to bottom, it is the whole run.

pre-flight checks (config, model, data, init weights, the checkpoint to resume from; before any rank starts) → ranks
→ model (+ init weights, freezing) → DeepSpeed engine → resume → steps (``step.train_step``: forward, local InfoNCE,
backward, step, clamp logit_scale; then log, validate, checkpoint) → final checkpoint and fp32 export.

Host synchronisations happen on log, validation and checkpoint steps only (see ``step.py``).
"""

from __future__ import annotations

import json
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import comm
from ..checkpoints import read_checkpoint
from ..data.pipeline import EpochTooSmall, TrainLoader, build_train_loader
from ..launch_env import detect
from ..model.clip import build_model
from ..model.configs import CLIPConfig
from ..model.tokenizer import Tokenizer
from ..model.towers import apply_towers, check_towers, read_towers, text_vocab_file
from ..model.transforms import ImageTransform
from ..model.weights import load_native_into, write_native
from . import engine as eng
from .checkpoint import Checkpointer, ResumeError, find_resume, saved_world_size
from .config import ConfigError, RunConfig, check_config, check_model, save_config
from .logs import MetricsSink, setup_logging, train_line, valid_line
from .optim import freeze, freeze_except_last
from .rng import seed_everything
from .state import TrainState
from .step import NonFiniteLoss, mean_over_ranks, step_inputs, train_step
from .validation import Validator

__all__ = ["NonFiniteLoss", "Preflight", "preflight", "train", "train_step"]


@dataclass(kw_only=True)
class Preflight:
    """What the checks found, for the run to use rather than read again."""

    model_config: CLIPConfig
    init: tuple | None  # ``read_checkpoint(cfg.model.init)``
    towers: tuple = (None, None)  # ``towers.read_towers(cfg.model.init_vision, cfg.model.init_text)``, checked
    resume: tuple[Path, str] | None  # the checkpoint to resume from (see ``checkpoint.find_resume``)
    tokenizer: Tokenizer
    train_loader: TrainLoader
    validator: Validator | None
    resume_weights: tuple | None = None  # ``read_checkpoint(resume tag)`` under ``train.reset_optimizer``


def preflight(cfg: RunConfig) -> Preflight:
    """Everything that can be checked before the ranks start, on every rank alike: the config (also when built in
    code), the model name and sizes, the data sources (they exist, can be read with the credentials given, and give
    every rank a batch), the init checkpoint, and the checkpoint a resume would read. A bad value is then one line
    from rank 0 and exit 2 on every rank, instead of one rank failing inside the process group while the others
    wait. The loaders are built here (planning needs no process group), and the init weights are read here (each
    rank reads them anyway), so a truncated or foreign file is a WeightsError before any group exists."""
    check_config(cfg)
    model_config = check_model(cfg.model)
    if not cfg.data.train:
        raise ConfigError("data.train: no training data; give shard sources, e.g. data.train=[shards/train]")
    _check_sources("data.train", cfg.data.train, cfg.data.train_weights, cfg.data.storage_options)
    if cfg.data.valid:
        _check_sources("data.valid", cfg.data.valid, None, cfg.data.storage_options)
    resume = find_resume(cfg.train.resume, cfg.train.output_dir)
    init = read_checkpoint(cfg.model.init) if cfg.model.init else None
    # train.reset_optimizer: only the weights (fp32, from every rank's partition) come from the checkpoint's DeepSpeed
    # states; the optimizer and schedule start afresh.
    resume_weights = read_checkpoint(resume[0] / resume[1]) if resume and cfg.train.reset_optimizer else None
    towers = _read_towers(cfg, model_config)

    who = detect()  # the process group starts after these checks; the launcher's environment says who we will be
    rank, world = (comm.rank(), comm.world()) if comm.active() else (who.rank, who.world_size)
    if resume and cfg.optim.layer_decay != 1.0 and not cfg.train.reset_optimizer:
        saved = saved_world_size(*resume)
        if saved not in (None, world):
            # DeepSpeed 0.19's universal loader fails (IndexError in load_hp_checkpoint_state) on a parameter group
            # that leaves a rank no parameter, which layer-wise groups (a few small tensors each) do.
            raise ResumeError(
                f"checkpoint {resume[0] / resume[1]} was written by {saved} ranks: DeepSpeed cannot re-partition "
                f"its optimizer state for {world} ranks with optim.layer_decay's many small groups; resume on "
                f"{saved} ranks, or add train.reset_optimizer=true (weights and data position kept)"
            )
    init_dir = cfg.model.init if cfg.model.init and Path(cfg.model.init).is_dir() else None
    tokenizer = Tokenizer.for_model_dir(text_vocab_dir(cfg.model.init_text) or init_dir, cfg.model.context_length)
    size = model_config.vision.image_size
    try:
        train_loader = build_train_loader(
            cfg.data.reading("train"),
            tokenizer=tokenizer,
            transform=ImageTransform(resolution=size, augment=cfg.data.augment),
            rank=rank,
            world_size=world,
            seed=cfg.train.seed,
            storage_options=cfg.data.storage_options,
        )
    except EpochTooSmall as e:
        raise ConfigError(f"data.train: {e}; lower data.batch_size or add data") from None
    try:
        validator = (
            Validator(cfg, tokenizer=tokenizer, transform=ImageTransform(resolution=size), rank=rank, world_size=world)
            if cfg.data.valid
            else None
        )
    except EpochTooSmall as e:
        raise ConfigError(f"data.valid: {e}") from None
    return Preflight(
        model_config=model_config,
        init=init,
        towers=towers,
        resume=resume,
        tokenizer=tokenizer,
        train_loader=train_loader,
        validator=validator,
        resume_weights=resume_weights,
    )


def _check_sources(key: str, specs: list[str], weights, storage_options: dict | None = None) -> None:
    from ..data.sources import resolve_sources
    from ..shards.writer import describe_storage_error

    try:
        resolve_sources(specs, weights, storage_options)
    except ValueError as e:  # SourceError: a missing manifest, folder or shard
        raise ConfigError(f"{key}: {e}") from None
    except Exception as e:  # noqa: BLE001 - storage failures (wrong S3 secret, no endpoint) are the user's to fix
        raise ConfigError(f"{key}: {describe_storage_error(e, ', '.join(specs), 'read')}") from None


def _read_towers(cfg: RunConfig, model_config: CLIPConfig) -> tuple:
    """model.init_vision / init_text read and checked against the model's sizes (a meta model: no memory)."""
    if not (cfg.model.init_vision or cfg.model.init_text):
        return None, None
    towers = read_towers(cfg.model.init_vision, cfg.model.init_text)
    with torch.device("meta"):
        check_towers(build_model(model_config), *towers)
    return towers


def text_vocab_dir(init_text: str | None) -> Path | None:
    vocab = text_vocab_file(init_text)
    return vocab.parent if vocab is not None else None


def _build_model(cfg: RunConfig, checked: Preflight, log):
    model = build_model(
        checked.model_config, grad_checkpointing=cfg.model.grad_checkpointing, mask_ratio=cfg.model.mask_ratio
    )
    if checked.init is not None:
        sd, _, fmt = checked.init
        load_native_into(model, sd)
        log.info(f"initialised from {cfg.model.init} ({fmt} format)")
        checked.init = None  # the model holds the weights now; the state dict's memory can go
    if checked.towers != (None, None):
        for line in apply_towers(model, *checked.towers):
            log.info(f"initialised the {line}")
        checked.towers = (None, None)
    if checked.resume_weights is not None:  # last: these are the weights the run continues from
        load_native_into(model, checked.resume_weights[0])
        root, tag = checked.resume
        log.info(f"train.reset_optimizer: weights from {root / tag}; optimizer and lr schedule start afresh")
        checked.resume_weights = None
    freeze(model, vision=cfg.train.freeze_vision, text=cfg.train.freeze_text)
    freeze_except_last(model, vision=cfg.train.freeze_vision_except_last, text=cfg.train.freeze_text_except_last)
    return model


def train(cfg: RunConfig) -> dict:
    # DeepSpeed's ZeRO calls torch's all_gather_into_tensor, which torch now flags on every call.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    checked = preflight(cfg)
    info, _, _ = comm.start(use_deepspeed=True)
    rank, world = comm.rank(), comm.world()
    out_dir = Path(cfg.train.output_dir)
    log = setup_logging(out_dir, rank)
    log.info(
        f"launcher={info.launcher} world_size={world} precision={cfg.deepspeed.precision} "
        f"zero_stage={cfg.deepspeed.zero_stage} model={cfg.model.name} host={socket.gethostname()}",
        extra={"all_ranks": True},
    )
    seed_everything(cfg.train.seed)  # identical init on every rank (DeepSpeed also broadcasts rank 0's weights)
    model = _build_model(cfg, checked, log)
    train_loader, validator = checked.train_loader, checked.validator
    steps_per_epoch = train_loader.batches_per_epoch
    # max_steps is None or at least 1 (config validation): 0 no longer reads as 'unset'
    max_steps = cfg.optim.max_steps if cfg.optim.max_steps is not None else cfg.optim.max_epochs * steps_per_epoch
    checkpointer = Checkpointer(
        out_dir,
        keep_last=cfg.train.keep_last,
        resume=checked.resume,
        reset_optimizer=cfg.train.reset_optimizer,
        reset_data=cfg.train.reset_data,
    )
    checkpointer.prepare(log)
    engine = eng.build_engine(
        model, cfg, max_steps, load_universal=checkpointer.universal, schedule_from=checkpointer.schedule_from()
    )
    device, dtype, precision = engine.device, eng.input_dtype(engine), eng.precision(engine)
    eng.use_tensor_cores(engine)
    if rank == 0:
        save_config(cfg, out_dir / "config.yaml")

    global_batch = cfg.data.batch_size * world
    state = TrainState()
    checkpointer.track(
        engine=engine,
        loader=train_loader,
        state=state,
        meta={"model_config": model.config.to_dict(), "run_config": cfg.to_dict()},
    )
    if checkpointer.restore(seed=cfg.train.seed, global_batch=global_batch):
        root, tag = checked.resume
        log.info(
            f"resumed from {root / tag} at step {state.step} (epoch {state.epoch + 1}, batch {state.epoch_batches})",
            extra={"all_ranks": True},
        )

    def save() -> None:
        log.info(f"saved checkpoint {checkpointer.save()}")

    validated_at = None  # the step of the last validation

    def validate(logit_scale: float) -> None:
        nonlocal validated_at
        validated_at = state.step
        metrics = validator(engine, state.step)
        metrics.update(epoch=state.epoch, logit_scale=logit_scale)
        log.info(valid_line(metrics))
        sink.write("valid", metrics)

    def is_log_step(n: int) -> bool:
        return n % cfg.train.log_every == 0 or n == max_steps

    def is_save_step(n: int) -> bool:
        return bool(cfg.train.save_every) and n % cfg.train.save_every == 0

    def is_valid_step(n: int) -> bool:
        return validator is not None and bool(cfg.train.valid_every) and n % cfg.train.valid_every == 0

    def every(epochs: int, done: int) -> bool:  # train.*_every_epochs: after every N-th completed epoch
        return bool(epochs) and done % epochs == 0

    sink = MetricsSink(out_dir, rank == 0)
    keys_log = open(out_dir / f"keys_rank{rank}.jsonl", "a") if cfg.train.record_keys else None
    # fp16 overflow is the loss scaler's job (the step is skipped and counted); elsewhere a non-finite loss is fatal.
    watch = eng.FiniteWatch(device) if precision != "fp16" else None
    logit_scale = eng.clamp_logit_scale(engine)  # fp32, on the device; the temperature is computed from it
    tick = time.time()
    logged = (tick, state.step)  # (time, step) of the last log line
    while state.step < max_steps:
        pass_start = state.step
        for batch in train_loader:
            data_time = time.time() - tick
            if keys_log is not None:  # which samples each step saw: the proof that resume skips and repeats none
                keys_log.write(json.dumps({"step": state.step + 1, "keys": batch["keys"]}) + "\n")
                keys_log.flush()
            images, ids, mask, pair_ids = step_inputs(batch, device, dtype, cfg.train.false_negatives)
            next_step = state.step + 1
            try:
                out, logit_scale = train_step(
                    engine,
                    images,
                    ids,
                    mask,
                    pair_ids,
                    logit_scale,
                    watch=watch,
                    step=next_step,
                    check=is_log_step(next_step) or is_save_step(next_step),
                )
            except NonFiniteLoss as e:
                raise NonFiniteLoss(
                    f"non-finite loss at step {e.step} ({precision}); stopping. The last good "
                    f"checkpoint is in {checkpointer.root} (step {state.last_saved}).",
                    e.step,
                ) from None
            state.advance(global_batch)
            if is_log_step(state.step):
                metrics = mean_over_ranks(out)  # host sync (log steps only)
                # Averaged since the last log: on a GPU, steps between logs only queue work, which this sync waits for.
                now = time.time()
                batch_time = (now - logged[0]) / (state.step - logged[1])
                logged = (now, state.step)
                metrics.update(
                    step=state.step,
                    max_steps=max_steps,
                    epoch=state.epoch,
                    epoch_samples=state.epoch_samples,
                    samples_per_epoch=steps_per_epoch * global_batch,
                    data_time=data_time,
                    batch_time=batch_time,
                    # .item(): a host sync, on log steps only (as the metrics' .tolist() above)
                    lr=engine.get_lr()[0],
                    logit_scale=logit_scale.item(),
                    global_batch_size=global_batch,
                    samples_per_s=global_batch / max(batch_time, 1e-9),
                    skipped_steps=engine.skipped_steps,
                    loss_scale=engine.optimizer.cur_scale if precision == "fp16" else 1.0,
                    **{f"data_{k}": v for k, v in train_loader.stats().items()},
                )
                log.info(train_line(metrics))
                sink.write("train", metrics)
            if is_valid_step(state.step):
                validate(logit_scale.item())  # validation syncs anyway (its metrics are read): .item() adds nothing
                logged = (time.time(), state.step)  # the next log's step time leaves validation out
            if is_save_step(state.step):
                save()
                logged = (time.time(), state.step)  # and checkpointing
            tick = time.time()
            if state.step >= max_steps:
                break
        else:
            # The epoch ended. A resumed run that took no step in it (its checkpoint was saved at the epoch's end)
            # leaves the end-of-epoch work to the run that saved: it was done there, before that save.
            done = state.epoch + 1
            if state.step > pass_start and validator is not None and every(cfg.train.valid_every_epochs, done):
                if validated_at != state.step:
                    validate(logit_scale.item())
                    logged = (time.time(), state.step)
            if state.step > pass_start and every(cfg.train.save_every_epochs, done) and state.last_saved != state.step:
                save()
                logged = (time.time(), state.step)
            state.next_epoch()
            train_loader.set_epoch(state.epoch)

    if validator is not None and validated_at != state.step:
        validate(logit_scale.item())
    if state.last_saved != state.step:
        save()
    export = out_dir / "model.safetensors"
    if rank == 0:
        export_fp32(checkpointer.root, model.config, export)
        log.info(f"fp32 weights written to {export}")
    comm.barrier()  # the others wait for rank 0's export (comm.timeout() allows minutes for big models)
    sink.close()
    if keys_log is not None:
        keys_log.close()
    summary = {"step": state.step, "epoch": state.epoch, "skipped_steps": engine.skipped_steps, "export": str(export)}
    if rank == 0:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def export_fp32(checkpoints: Path, config, path: Path) -> None:
    """The latest checkpoint's fp32 master weights (assembled from every rank's ZeRO partition) as a native file."""
    sd, _, _ = read_checkpoint(checkpoints)
    write_native(sd, config, path)
