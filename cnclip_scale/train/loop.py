"""The training loop: read top to bottom, it is the whole run.

set up ranks → model (+ init weights, freezing) → data → DeepSpeed engine → resume → steps (forward, local InfoNCE,
backward, step, clamp logit_scale, log, validate, checkpoint) → final checkpoint and fp32 export.

A step makes no host synchronisation of its own (DeepSpeed's optimizer step makes those it needs, e.g. the fp16
overflow check): losses, accuracies, the finiteness flag and logit_scale stay on the device, and come to the host
only on log and checkpoint steps (each ``.item()``/``.tolist()`` below says so).
"""
from __future__ import annotations

import json
import random
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import comm
from ..model.clip import build_model
from ..model.configs import model_config
from ..model.tokenizer import Tokenizer
from ..model.transforms import normalize_batch
from ..model.weights import load_native_into, read_checkpoint, write_native
from . import engine as eng
from .config import ConfigError, RunConfig, save_config
from .logs import MetricsSink, setup_logging, train_line, valid_line
from .loss import clip_loss
from .optim import freeze


class NonFiniteLoss(RuntimeError):
    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": _jsonable(random.getstate()), "numpy": _jsonable(np.random.get_state()),
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tupled(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    return x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x


def _build_model(cfg: RunConfig, log, init: tuple | None):
    """``init``: ``read_checkpoint(cfg.model.init)``, read by ``preflight``."""
    overrides = {"image_size": cfg.model.image_size} if cfg.model.image_size else {}
    model = build_model(model_config(cfg.model.name, **overrides), grad_checkpointing=cfg.model.grad_checkpointing)
    if init is not None:
        sd, _, fmt = init
        load_native_into(model, sd)
        log.info(f"initialised from {cfg.model.init} ({fmt} format)")
    freeze(model, vision=cfg.train.freeze_vision, text=cfg.train.freeze_text)
    return model


def _loader(cfg: RunConfig, sources: list[str], tokenizer: Tokenizer, image_size: int, *, train: bool):
    from ..data.pipeline import build_train_loader  # data imports stay out of the model/optimiser unit tests

    return build_train_loader(
        sources, tokenizer=tokenizer, image_size=image_size,
        batch_size=cfg.data.batch_size if train else cfg.data.valid_batch_size, workers=cfg.data.workers,
        rank=comm.rank(), world_size=comm.world(), seed=cfg.train.seed,
        resampled=cfg.data.resampled and train, shuffle_buffer=cfg.data.shuffle_buffer if train else 0,
        context_length=cfg.model.context_length, train_augment=cfg.data.augment and train,
        epoch_samples=cfg.data.epoch_samples if train else None, weights=cfg.data.train_weights if train else None,
        # Training gathers features across ranks, so every rank's batch must be full; validation scores per rank.
        drop_last=train, shard_shuffle=train)


def _step_inputs(batch: dict, device, dtype, false_negatives: bool):
    """The batch on the device (non-blocking from the loader's pinned memory); ids arrive hashed by the workers."""
    images = normalize_batch(batch["images"].to(device, non_blocking=True), dtype)
    ids = batch["input_ids"].to(device, non_blocking=True)
    mask = batch["attention_mask"].to(device, non_blocking=True)
    pair_ids = (batch["image_id_hashes"].to(device, non_blocking=True),
                batch["text_id_hashes"].to(device, non_blocking=True)) if false_negatives else (None, None)
    return images, ids, mask, pair_ids


def train_step(engine, images, ids, mask, pair_ids, logit_scale: torch.Tensor, *, watch=None, step: int = 0,
               check: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimizer step: forward, the local InfoNCE at the fp32 temperature, backward, step, the logit_scale clamp.

    ``watch`` (an ``engine.FiniteWatch``, None under fp16 whose loss scaler skips overflowing steps) notes a non-finite
    loss on the device; ``check`` reads it before the backward (a host sync: the loop asks on log and checkpoint
    steps), so a checkpoint never holds weights a non-finite loss has touched. Returns the loss and accuracies (on the
    device) and the clamped fp32 logit_scale for the next step."""
    img, txt, scale = engine(images, ids, mask)
    out = clip_loss(img.float(), txt.float(), eng.fp32_temperature(scale, logit_scale), *pair_ids)
    if watch is not None:
        watch.update(out["loss"], step)
        bad = watch.first_bad_step() if check else None
        if bad is not None:
            raise NonFiniteLoss(f"non-finite loss at step {bad}", bad)
    engine.backward(out["loss"])
    engine.step()
    return out, eng.clamp_logit_scale(engine)


def _mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Averaged on the device in one collective; ``.tolist()`` is the host sync, made on log steps only."""
    keys = sorted(values)
    means = comm.mean(torch.stack([values[k].detach().float().reshape(()) for k in keys]))
    return dict(zip(keys, means.tolist()))


@torch.no_grad()
def validate(engine, loader, device, dtype, cfg: RunConfig) -> dict[str, float]:
    engine.eval()
    totals = torch.zeros(3, device=device)  # loss, i2t_acc, t2i_acc summed on the device
    batches = 0
    loader.set_epoch(loader.epoch + 1)  # a fresh pass: the loader yields nothing for an epoch it has finished
    for batch in loader:  # every rank gets the same number of non-empty batches (ZeRO-3 forwards are collective)
        images, ids, mask, (image_ids, text_ids) = _step_inputs(batch, device, dtype, cfg.train.false_negatives)
        img, txt, scale = engine(images, ids, mask)
        out = clip_loss(img.float(), txt.float(), scale.float(), image_ids, text_ids, distributed=False)
        totals += torch.stack([out["loss"], out["i2t_acc"], out["t2i_acc"]]).float()
        batches += 1
    engine.train()
    means = totals / max(1, batches)
    return _mean_over_ranks(dict(zip(("valid_loss", "valid_i2t_acc", "valid_t2i_acc"), means)))


def _check_sources(key: str, specs: list[str], weights) -> None:
    from ..data.sources import resolve_sources
    from ..shards.writer import describe_storage_error

    try:
        resolve_sources(specs, weights)
    except ValueError as e:  # SourceError: a missing manifest, folder or shard
        raise ConfigError(f"{key}: {e}") from None
    except Exception as e:  # noqa: BLE001 - storage failures (wrong S3 secret, no endpoint) are the user's to fix
        raise ConfigError(f"{key}: {describe_storage_error(e, ', '.join(specs), 'read')}") from None


@dataclass
class Preflight:
    resume: tuple[Path, str] | None   # the checkpoint to resume from (see ``engine.find_resume``)
    init: tuple | None                # ``read_checkpoint(cfg.model.init)``


def preflight(cfg: RunConfig) -> Preflight:
    """What can be checked before the ranks start, on every rank alike: the data sources (they exist, and can be
    read with the credentials given), the init checkpoint's format, and the checkpoint a resume would read. A bad
    value is then one line from rank 0 and exit 2 on every rank, instead of one rank failing inside the process group
    while the others wait. The init weights are read here (each rank reads them anyway), so a truncated or foreign
    file is a WeightsError before any group exists."""
    if not cfg.data.train:
        raise ConfigError("data.train: no training data; give shard sources, e.g. data.train=[shards/train]")
    _check_sources("data.train", cfg.data.train, cfg.data.train_weights)
    if cfg.data.valid:
        _check_sources("data.valid", cfg.data.valid, None)
    resume = eng.find_resume(cfg.train.resume, cfg.train.output_dir)
    return Preflight(resume, read_checkpoint(cfg.model.init) if cfg.model.init else None)


def train(cfg: RunConfig) -> dict:
    # DeepSpeed's ZeRO calls torch's all_gather_into_tensor, which torch now flags on every call.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    checked = preflight(cfg)
    resume = checked.resume
    info, _, _ = comm.start(use_deepspeed=True)
    rank, world = comm.rank(), comm.world()
    out_dir = Path(cfg.train.output_dir)
    log = setup_logging(out_dir, rank)
    log.info(f"launcher={info.launcher} world_size={world} precision={cfg.deepspeed.precision} "
             f"zero_stage={cfg.deepspeed.zero_stage} model={cfg.model.name} host={socket.gethostname()}",
             extra={"all_ranks": True})
    seed_everything(cfg.train.seed)  # identical init on every rank (DeepSpeed also broadcasts rank 0's weights)
    model = _build_model(cfg, log, checked.init)
    checked.init = None  # the model holds the weights now; the state dict's memory can go
    init_dir = cfg.model.init if cfg.model.init and Path(cfg.model.init).is_dir() else None
    tokenizer = Tokenizer.for_model_dir(init_dir, cfg.model.context_length)
    try:  # e.g. too few samples for one full global batch: one line naming the setting, not a traceback
        train_loader = _loader(cfg, cfg.data.train, tokenizer, model.image_size, train=True)
    except ValueError as e:
        raise ConfigError(f"data.train: {e}; lower data.batch_size or add data") from None
    valid_loader = _loader(cfg, cfg.data.valid, tokenizer, model.image_size, train=False) if cfg.data.valid else None
    steps_per_epoch = train_loader.batches_per_epoch
    # max_steps is None or at least 1 (config validation): 0 no longer reads as 'unset'
    max_steps = cfg.optim.max_steps if cfg.optim.max_steps is not None else cfg.optim.max_epochs * steps_per_epoch
    universal = resume is not None and eng.needs_universal(*resume)
    if universal:  # another world size: DeepSpeed re-partitions a universal copy of the checkpoint
        log.info(f"checkpoint {resume[0] / resume[1]} was written by {eng.saved_world_size(*resume)} ranks; converting "
                 f"it to a universal checkpoint for {world}")
        eng.to_universal(*resume)
    engine = eng.build_engine(model, cfg, max_steps, load_universal=universal)
    device, dtype, precision = engine.device, eng.input_dtype(engine), eng.precision(engine)
    eng.use_tensor_cores(engine)
    if rank == 0:
        save_config(cfg, out_dir / "config.yaml")

    step, epoch, epoch_batches, epoch_samples = 0, 0, 0, 0
    global_batch = cfg.data.batch_size * world
    if resume is not None:
        client, rank_state = eng.load(engine, *resume)
        step, epoch, epoch_batches = client["step"], client["epoch"], client["epoch_batches"]
        # Counted in samples: a resume under another world size changes the global batch mid-epoch.
        epoch_samples = client.get("epoch_samples", epoch_batches * global_batch)
        train_loader.load_state_dict(rank_state["data"])
        if universal:  # RNG streams are per rank, so a new world size gets new ones, distinct from the first run's
            seed_everything(cfg.train.seed + 1000 * rank + step)
        else:
            set_rng_state(rank_state["rng"])
        log.info(f"resumed from {resume[0] / resume[1]} at step {step} (epoch {epoch + 1}, batch {epoch_batches})",
                 extra={"all_ranks": True})
    else:
        seed_everything(cfg.train.seed + 1000 * rank)  # per-rank dropout streams
        train_loader.set_epoch(epoch)

    sink = MetricsSink(out_dir, rank == 0)
    keys_log = open(out_dir / f"keys_rank{rank}.jsonl", "a") if cfg.train.record_keys else None
    # fp16 overflow is the loss scaler's job (the step is skipped and counted); elsewhere a non-finite loss is fatal.
    watch = eng.FiniteWatch(device) if precision != "fp16" else None

    def checkpoint():
        client = {"step": step, "epoch": epoch, "epoch_batches": epoch_batches, "epoch_samples": epoch_samples,
                  "model_config": model.config.to_dict(),
                  "run_config": cfg.to_dict()}
        # gather=True: each rank's file also holds every rank's data position, which a resume under another world
        # size needs to continue the epoch without repeats.
        rank_state = {"data": train_loader.state_dict(gather=True), "rng": rng_state()}
        path = eng.save(engine, out_dir, step, client, rank_state, cfg.train.keep_last)
        log.info(f"saved checkpoint {path}")

    def is_log_step(n: int) -> bool:
        return n % cfg.train.log_every == 0 or n == max_steps

    def is_save_step(n: int) -> bool:
        return bool(cfg.train.save_every) and n % cfg.train.save_every == 0

    last_saved = step
    logit_scale = eng.clamp_logit_scale(engine)  # fp32, on the device; the temperature is computed from it
    tick = time.time()
    logged = (tick, step)  # (time, step) of the last log line
    while step < max_steps:
        for batch in train_loader:
            data_time = time.time() - tick
            if keys_log is not None:  # which samples each step saw: the proof that resume skips and repeats none
                keys_log.write(json.dumps({"step": step + 1, "keys": batch["keys"]}) + "\n")
                keys_log.flush()
            images, ids, mask, pair_ids = _step_inputs(batch, device, dtype, cfg.train.false_negatives)
            try:
                out, logit_scale = train_step(engine, images, ids, mask, pair_ids, logit_scale, watch=watch,
                                              step=step + 1, check=is_log_step(step + 1) or is_save_step(step + 1))
            except NonFiniteLoss as e:
                raise NonFiniteLoss(f"non-finite loss at step {e.step} ({precision}); stopping. The last good "
                                    f"checkpoint is in {eng.checkpoint_dir(out_dir)} (step {last_saved}).",
                                    e.step) from None
            step += 1
            epoch_batches += 1
            epoch_samples += global_batch
            if is_log_step(step):
                metrics = _mean_over_ranks(out)  # host sync (log steps only)
                # Averaged since the last log: on a GPU, steps between logs only queue work, which this sync waits for.
                now = time.time()
                batch_time = (now - logged[0]) / (step - logged[1])
                logged = (now, step)
                metrics.update(
                    step=step, max_steps=max_steps, epoch=epoch, epoch_samples=epoch_samples,
                    samples_per_epoch=steps_per_epoch * global_batch, data_time=data_time, batch_time=batch_time,
                    # .item(): a host sync, on log steps only (as the metrics' .tolist() above)
                    lr=engine.get_lr()[0], logit_scale=logit_scale.item(), global_batch_size=global_batch,
                    samples_per_s=global_batch / max(batch_time, 1e-9), skipped_steps=engine.skipped_steps,
                    loss_scale=engine.optimizer.cur_scale if precision == "fp16" else 1.0,
                    **{f"data_{k}": v for k, v in train_loader.stats().items()})
                log.info(train_line(metrics))
                sink.write("train", metrics)
            if valid_loader is not None and cfg.train.valid_every and step % cfg.train.valid_every == 0:
                # validation syncs anyway (its metrics are read); logit_scale.item() adds nothing to that
                _run_validation(engine, valid_loader, device, dtype, cfg, step, epoch, logit_scale.item(), log, sink,
                                tokenizer)
                logged = (time.time(), step)  # the next log's step time leaves validation out
            if is_save_step(step):
                checkpoint()
                last_saved = step
                logged = (time.time(), step)  # and checkpointing
            tick = time.time()
            if step >= max_steps:
                break
        else:
            epoch += 1
            epoch_batches = epoch_samples = 0
            train_loader.set_epoch(epoch)

    if valid_loader is not None and not (cfg.train.valid_every and step % cfg.train.valid_every == 0):
        _run_validation(engine, valid_loader, device, dtype, cfg, step, epoch, logit_scale.item(), log, sink, tokenizer)
    if last_saved != step:
        checkpoint()
    export = out_dir / "model.safetensors"
    if rank == 0:
        export_fp32(out_dir, model.config, export)
        log.info(f"fp32 weights written to {export}")
    comm.barrier()  # the others wait for rank 0's export (comm.timeout() allows minutes for big models)
    sink.close()
    if keys_log is not None:
        keys_log.close()
    summary = {"step": step, "epoch": epoch, "skipped_steps": engine.skipped_steps, "export": str(export)}
    if rank == 0:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _run_validation(engine, loader, device, dtype, cfg, step, epoch, logit_scale, log, sink, tokenizer) -> None:
    metrics = validate(engine, loader, device, dtype, cfg)
    if cfg.train.valid_recall:
        metrics.update(valid_recall(engine, cfg, tokenizer, device, dtype))
    metrics.update(step=step, epoch=epoch, logit_scale=logit_scale, valid_batch_size=cfg.data.valid_batch_size)
    log.info(valid_line(metrics))
    sink.write("valid", metrics)


def valid_recall(engine, cfg: RunConfig, tokenizer, device, dtype) -> dict[str, float]:
    """Retrieval recall on the validation split through the evaluator (the same code as launch/evaluate.py), on a
    plain copy of the model (see ``engine.plain_model_copy``: ZeRO-3's hooks must not see the evaluation's forwards),
    its images decoded by the run's loader workers rather than in the training process."""
    from ..eval import evaluate_retrieval

    model = eng.plain_model_copy(engine)
    result = evaluate_retrieval(model, cfg.data.valid, tokenizer, device=device, dtype=dtype,
                                batch_size=cfg.data.valid_batch_size, workers=cfg.data.workers)
    del model
    return {f"{direction}_{key}": result[direction][key] for direction in ("t2i", "i2t")
            for key in ("r1", "r5", "r10", "mean_recall")}


def export_fp32(out_dir: Path, config, path: Path) -> None:
    """The latest checkpoint's fp32 master weights (assembled from every rank's ZeRO partition) as a native file."""
    sd, _, _ = read_checkpoint(eng.checkpoint_dir(out_dir))
    write_native(sd, config, path)
