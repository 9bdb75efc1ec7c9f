#!/usr/bin/env python
"""GPU training throughput, memory and MFU: our trainer vs a Chinese-CLIP-style DDP loop, one GPU, same run.

    python benchmarks/bench_gpu.py [--model NAME] [--batch 128] [--quick] [--json PATH]
    python benchmarks/bench_gpu.py --device cpu --model ViT-Tiny-16@RoBERTa-Tiny-chinese ...   (CPU twin: code paths)

Without CUDA (and no --device cpu) it prints one line saying so and exits 0, so `make bench` runs anywhere.

  ours      DeepSpeed ZeRO-2 in bf16 (the engine launch/pretrain.py builds, ``engine.build_engine``), the local-loss
            InfoNCE (``loss.clip_loss``), the logit_scale clamp on the fp32 master — with and without gradient
            checkpointing.
  baseline  what Chinese-CLIP's trainer does: torch DistributedDataParallel, ``torch.autocast(bfloat16)`` over fp32
            weights, torch.optim.AdamW, features all-gathered without gradient and the full N×N logits on every rank
            — with and without gradient checkpointing (Chinese-CLIP has the flag too).

Both train the same model (random init) on the same synthetic device-resident batch (images, captions padded to 52
tokens with realistic lengths), one rank (world size 1, NCCL), so data loading is out of the step and the comparison
is the step itself. Samples/s counts the timed steps after warm-up, between two ``torch.cuda.synchronize``; peak
memory is ``torch.cuda.max_memory_allocated`` over the timed steps (weights, optimiser state and activations).
Measured at the seed's per-GPU batch (128) and at the largest batch that fits: doubling from 128 until
``torch.cuda.OutOfMemoryError``, then bisecting; after an OOM the contender is torn down and rebuilt, since an
engine interrupted mid-backward holds half-reduced gradient buckets.

MFU = samples/s × training FLOPs per sample (``cnclip_scale.model.flops``: 3× forward, model FLOPs) / the GPU's dense
bf16 peak; HFU adds the recompute of gradient checkpointing. The formula is checked on one step against
``torch.utils.flop_counter.FlopCounterMode`` (which counts the fused attention kernels too); both are printed.
The loader line: our shard loader's samples per CPU-second on 224-px JPEG shards with 1 worker, against what one
GPU consumes in training: the CPU cores one GPU needs to be fed.

Anchors: Chinese-CLIP reports 469 samples/s per A100 for ViT-B-16 with FlashAttention (fp16, batch 450 per GPU);
the target on H100/H200 is ≥ 35% MFU in bf16.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))  # bench_loader's measuring helper, bench_train's baseline loss

from bench_train import baseline_loss  # noqa: E402 - Chinese-CLIP's loss, one copy for the CPU and GPU benches

BASE = "ViT-B-16@RoBERTa-wwm-ext-base-chinese"
SEED_BATCH = 128  # per GPU, the seed's MUGE and Flickr30K-CN finetunes
CONTEXT = 52
# Dense bf16 peak FLOP/s by device-name fragment, first match wins (vendor data sheets, without sparsity). Variants
# whose clocks or power differ (NVL boards) are left out on purpose: 'unknown' is better than a wrong MFU.
PEAK_BF16 = [
    ("H100 NVL", None),
    ("H200 NVL", None),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
]
ANCHOR_CN_CLIP = 469.0  # samples/s per A100, ViT-B-16, FlashAttention, fp16, batch 450 (Chinese-CLIP's README)
TARGET_MFU = 0.35


def peak_bf16_flops(device_name: str) -> float | None:
    for fragment, peak in PEAK_BF16:
        if fragment in device_name:
            return peak
    return None


# ---------------------------------------------------------------------------------------------------- one rank
def init_single_rank(device) -> None:
    """A process group of one (NCCL on a GPU, gloo on CPU), as the trainer starts it (a plain process is rank 0 of 1
    on a free loopback port); our engine and DDP both need one. DS_ACCELERATOR decides the device (see main)."""
    from cnclip_scale import comm

    _, got, _ = comm.start(use_deepspeed=False)
    assert got.type == device.type, (got, device)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(error: BaseException) -> bool:
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    # cuBLAS/cuDNN workspaces and NCCL buffers fail with their own messages when the allocator is exhausted.
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text.lower() or "ALLOC_FAILED" in text)


def free_memory(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class Inputs:
    images: object
    ids: object
    mask: object
    image_ids: object
    text_ids: object

    @property
    def batch(self) -> int:
        return self.ids.shape[0]


def synthetic_batch(config, batch: int, device, image_dtype, seed: int = 0) -> Inputs:
    """Device-resident inputs of the trainer's shapes: normalised images, captions padded to 52 tokens (lengths
    uniform in 8..52, so the text tower's attention takes a padding mask as in real batches), unique pair ids."""
    import torch

    # Drawn on the device: a CPU randn of the largest batches' images (GBs) would cost more than the trial itself.
    g = torch.Generator(device=device).manual_seed(seed)
    size = config.vision.image_size
    images = torch.randn(batch, 3, size, size, generator=g, device=device, dtype=image_dtype)  # no fp32 transient
    ids = torch.randint(1000, config.text.vocab_size, (batch, CONTEXT), generator=g, device=device)
    lengths = torch.randint(8, CONTEXT + 1, (batch, 1), generator=g, device=device)
    mask = torch.arange(CONTEXT, device=device)[None, :] < lengths
    ids = ids.masked_fill(~mask, config.text.pad_token_id)
    pair_ids = torch.arange(batch, device=device)
    return Inputs(images, ids, mask, pair_ids, pair_ids.clone())


# ---------------------------------------------------------------------------------------------------- contenders
class Contender:
    """A model + optimiser that trains one step on ``Inputs``; ``close`` releases everything it holds."""

    name = ""
    image_dtype = None

    def step(self, inputs: Inputs):
        raise NotImplementedError

    def close(self) -> None:
        pass


def _build_model(model_name: str, device, grad_checkpointing: bool):
    import torch

    from cnclip_scale.model import build_model, model_config

    torch.manual_seed(0)
    # Initialised on the device: a 188M-parameter CPU init is seconds, and the search rebuilds after each OOM.
    with torch.device(device):
        return build_model(model_config(model_name), grad_checkpointing=grad_checkpointing)


class Ours(Contender):
    def __init__(self, model_name: str, device, batch: int, grad_checkpointing: bool):
        import torch

        from cnclip_scale.train import engine as eng
        from cnclip_scale.train.config import load_config
        from cnclip_scale.train.step import train_step

        self.name = "ours_ckpt" if grad_checkpointing else "ours"
        cfg = load_config(
            None,
            [
                f"model.name={model_name}",
                "deepspeed.precision=bf16",
                "deepspeed.zero_stage=2",
                f"data.batch_size={batch}",
                "optim.max_steps=1000000",
                "optim.warmup=0",
                f"model.grad_checkpointing={str(grad_checkpointing).lower()}",
            ],
        )
        self.model = _build_model(model_name, device, grad_checkpointing)
        self.engine = eng.build_engine(self.model, cfg, max_steps=1000000)
        # what the trainer feeds a bf16 engine (normalize_batch in the engine's dtype)
        self.image_dtype = torch.bfloat16
        # The trainer's own step (step.train_step: fp32 temperature, finiteness watch, logit_scale clamp), its
        # finiteness read every 10th step as at the default train.log_every.
        self._step, self._n = train_step, 0
        self._logit_scale = eng.clamp_logit_scale(self.engine)
        self._watch = eng.FiniteWatch(self.engine.device)

    def step(self, inputs: Inputs):
        self._n += 1
        out, self._logit_scale = self._step(
            self.engine,
            inputs.images,
            inputs.ids,
            inputs.mask,
            (inputs.image_ids, inputs.text_ids),
            self._logit_scale,
            watch=self._watch,
            step=self._n,
            check=self._n % 10 == 0,
        )
        return out["loss"]

    def close(self) -> None:
        destroy = getattr(self.engine, "destroy", None)  # removes its gradient hooks, which hold the buffers
        try:
            if destroy is not None:
                destroy()
        except Exception as error:  # noqa: BLE001 - after an OOM the engine may not tear down cleanly; dropping it frees it
            print(f"    (engine teardown after {type(error).__name__}: {error})")
        self.engine = self.model = None


class Baseline(Contender):
    def __init__(self, model_name: str, device, batch: int, grad_checkpointing: bool):
        import torch

        from cnclip_scale.model.clip import LOGIT_SCALE_MAX

        self.name = "ddp_ckpt" if grad_checkpointing else "ddp"
        self.device = device
        self.model = _build_model(model_name, device, grad_checkpointing)
        self.net = torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[device.index] if device.type == "cuda" else None
        )
        # Chinese-CLIP's finetune hyper-parameters; the values do not change the cost of a step.
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.001
        )
        self.image_dtype = torch.float32  # autocast casts inside the model
        self._max = LOGIT_SCALE_MAX
        self._torch = torch

    def step(self, inputs: Inputs):
        torch = self._torch
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            img, txt, scale = self.net(inputs.images, inputs.ids, inputs.mask)
            loss = baseline_loss(img, txt, scale)  # Chinese-CLIP's, as bench_train measures it on CPU
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, self._max)  # Chinese-CLIP clamps the module parameter in place
        return loss

    def close(self) -> None:
        self.net = self.model = self.optimizer = None


CONTENDERS: dict[str, tuple[type, bool]] = {
    "ours": (Ours, False),
    "ours_ckpt": (Ours, True),
    "ddp": (Baseline, False),
    "ddp_ckpt": (Baseline, True),
}
LABELS = {
    "ours": "ours: ZeRO-2 bf16, local loss",
    "ours_ckpt": "ours: ZeRO-2 bf16, local loss, grad ckpt",
    "ddp": "baseline: DDP + autocast, N×N",
    "ddp_ckpt": "baseline: DDP + autocast, N×N, grad ckpt",
}


def build(mode: str, model_name: str, device, batch: int) -> Contender:
    cls, ckpt = CONTENDERS[mode]
    return cls(model_name, device, batch, ckpt)


# ---------------------------------------------------------------------------------------------------- measuring
def measure(contender: Contender, config, batch: int, device, warmup: int, steps: int) -> dict:
    """Samples/s over ``steps`` timed steps after ``warmup`` (allocator, DeepSpeed buckets, Adam state, cuBLAS
    heuristics), and the peak allocated memory over the timed steps."""
    import torch

    inputs = synthetic_batch(config, batch, device, contender.image_dtype)
    for _ in range(warmup):
        contender.step(inputs)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    for _ in range(steps):
        loss = contender.step(inputs)
    sync(device)
    elapsed = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "batch": batch,
        "samples_per_s": batch * steps / elapsed,
        "step_s": elapsed / steps,
        "peak_mb": peak,
        "loss": float(loss.detach().float()),
        "steps": steps,
    }


def search_largest(
    trial: Callable[[int], dict | None],
    start: int,
    cap: int,
    resolution: float = 1 / 16,
    granularity: int = 8,
    deadline: float | None = None,
) -> dict:
    """The largest batch ≤ ``cap`` for which ``trial(batch)`` succeeds (returns a record) rather than running out
    of memory (returns None). Doubles from ``start`` to the first failure, then bisects until the gap is at most
    ``resolution`` of the fitting batch (and ``granularity``); below ``start`` if ``start`` fails. Stops early at
    ``deadline`` (time.monotonic()), saying so. Returns {"largest", "record", "first_oom", "tried", "capped",
    "stopped_early"}."""
    tried: list[tuple[int, bool]] = []
    best, record, failed, stopped = None, None, None, False

    def attempt(batch: int) -> bool:
        nonlocal best, record, failed
        result = trial(batch)
        tried.append((batch, result is not None))
        if result is None:
            failed = batch if failed is None else min(failed, batch)
            return False
        if best is None or batch > best:
            best, record = batch, result
        return True

    def out_of_time() -> bool:
        nonlocal stopped
        stopped = stopped or (deadline is not None and time.monotonic() > deadline)
        return stopped

    batch = min(start, cap)
    while not out_of_time() and attempt(batch) and batch < cap:  # doubling
        batch = min(batch * 2, cap)
    if best is None:  # not even the start: search downward
        batch = start // 2
        while batch >= 1 and not out_of_time() and not attempt(batch):
            batch //= 2
    while best is not None and failed is not None:  # bisection
        if failed - best <= max(granularity, best * resolution) or out_of_time():
            break
        middle = (best + failed) // 2
        if middle - middle % granularity > best:  # a multiple of the granularity where there is one in the gap
            middle -= middle % granularity
        attempt(middle)
    return {
        "largest": best,
        "record": record,
        "first_oom": failed,
        "tried": tried,
        "capped": best == cap,
        "stopped_early": stopped,
    }


def trial_runner(
    mode: str, model_name: str, config, device, warmup: int, steps: int, log: Callable[[str], None]
) -> tuple[Callable[[int], dict | None], Callable[[], None]]:
    """A ``trial(batch)`` for ``search_largest`` that keeps one contender while batches fit and rebuilds it after an
    OOM, and a ``close()``."""
    holder: dict[str, Contender | None] = {"c": None}

    def close() -> None:
        if holder["c"] is not None:
            holder["c"].close()
            holder["c"] = None
        free_memory(device)

    def trial(batch: int) -> dict | None:
        try:
            if holder["c"] is None:
                holder["c"] = build(mode, model_name, device, batch)
            result = measure(holder["c"], config, batch, device, warmup, steps)
            free_memory(device)  # the cached blocks of this batch would fragment the next, larger one
            log(
                f"    {mode:<10} batch {batch:>6}: fits, {result['samples_per_s']:8.1f} samples/s"
                + (f", peak {result['peak_mb']:,.0f} MB" if result["peak_mb"] is not None else "")
            )
            return result
        except Exception as error:  # only OOM is an answer; anything else is re-raised
            if not is_oom(error):
                raise
        close()  # outside the except block: the traceback's frames (and their activations) are gone by now
        log(f"    {mode:<10} batch {batch:>6}: out of memory")
        return None

    return trial, close


def count_step_flops(model_name: str, device, batch: int, grad_checkpointing: bool) -> dict:
    """One training step of the plain model (bf16 autocast, our loss, backward) under FlopCounterMode, against the
    formula. On CPU the SDPA math kernel is forced: FlopCounterMode has no formula for PyTorch's CPU flash kernel,
    while on CUDA the fused kernels (flash, memory-efficient, cuDNN) all have one."""
    import contextlib

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from cnclip_scale.model import model_config
    from cnclip_scale.model.flops import training_flops
    from cnclip_scale.train.loss import clip_loss

    config = model_config(model_name)
    model = _build_model(model_name, device, grad_checkpointing).train()
    inputs = synthetic_batch(config, batch, device, torch.float32)
    kernels = sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()
    with kernels, FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            img, txt, scale = model(inputs.images, inputs.ids, inputs.mask)
        out = clip_loss(img.float(), txt.float(), scale.float(), inputs.image_ids, inputs.text_ids)
        out["loss"].backward()
    sync(device)
    counted = counter.get_total_flops() / batch
    formula = training_flops(config, CONTEXT, grad_checkpointing)
    del model, inputs, img, txt, scale, out
    free_memory(device)
    return {
        "grad_checkpointing": grad_checkpointing,
        "formula": formula,
        "counted": counted,
        "ratio": counted / formula,
    }


def loader_rate(image_size: int, images: int, workers: int = 1) -> dict:
    """Our training loader on 224-px JPEG shards (real photos, one caption per image), as bench_loader.py measures
    it: samples per CPU-second (worker and main process; what one core delivers) and wall-clock samples/s."""
    from bench_loader import rate  # benchmarks/ is on sys.path

    from cnclip_scale.data.pipeline import Reading, build_train_loader
    from cnclip_scale.model.tokenizer import Tokenizer
    from cnclip_scale.model.transforms import ImageTransform
    from cnclip_scale.shards.convert import Options, convert_split
    from cnclip_scale.shards.writer import Destination
    from tests.helpers.seed_data import write_realistic_split

    folder = tempfile.mkdtemp(prefix="bench_gpu-loader-")
    try:
        write_realistic_split(os.path.join(folder, "seed"), images, side=224, pool=64)
        convert_split(
            os.path.join(folder, "seed"),
            "train",
            Destination(os.path.join(folder, "shards")),
            Options(group="pair", samples_per_shard=256, workers=2, progress=False),
        )
        reading = Reading(sources=os.path.join(folder, "shards", "train"), batch_size=64, workers=workers)
        loader = build_train_loader(
            reading,
            tokenizer=Tokenizer(),
            transform=ImageTransform(resolution=image_size),
            rank=0,
            world_size=1,
            seed=0,
        )
        wall, per_cpu, counted = rate(iter(loader), lambda b: len(b["keys"]))
        return {
            "workers": workers,
            "samples_per_s": wall,
            "samples_per_cpu_s": per_cpu,
            "samples_timed": counted,
            "jpeg_side": 224,
            "image_size": image_size,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- the run
def run(args) -> dict:
    import torch

    from cnclip_scale.model import model_config
    from cnclip_scale.model.flops import flops_per_sample, training_flops

    # One rank: device 0 (DeepSpeed places the engine by LOCAL_RANK); CUDA_VISIBLE_DEVICES picks the GPU.
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    init_single_rank(device)
    config = model_config(args.model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = peak_bf16_flops(name) if device.type == "cuda" else None
    modes = args.modes.split(",")
    quick = args.quick
    warmup, steps = (2, 5) if quick else (3, 20)
    trial_warmup, trial_steps = (1, 1) if quick else (1, 3)
    log = print
    import deepspeed

    result: dict = {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "model": args.model,
        "batch": args.batch,
        "quick": quick,
        "peak_bf16_flops": peak,
        "anchors": {"chinese_clip_a100_samples_per_s": ANCHOR_CN_CLIP, "target_mfu": TARGET_MFU},
    }
    f = flops_per_sample(config, CONTEXT)
    result["flops"] = {
        "forward": f.forward,
        "vision": f.vision,
        "text": f.text,
        "train": training_flops(config, CONTEXT, False),
        "train_ckpt": training_flops(config, CONTEXT, True),
    }
    log(f"device {name} ({device}), torch {torch.__version__}, deepspeed {deepspeed.__version__}; model {args.model}")
    log(
        f"FLOPs per sample (formula): forward {f.forward / 1e9:.2f} G (vision {f.vision / 1e9:.2f}, text "
        f"{f.text / 1e9:.2f}), training {result['flops']['train'] / 1e9:.1f} G, with checkpointing "
        f"{result['flops']['train_ckpt'] / 1e9:.1f} G"
    )

    phases, mark = {}, time.monotonic()  # seconds per phase, to size later runs (--quick on a GPU session)

    def phase(label: str) -> None:
        nonlocal mark
        phases[label] = round(time.monotonic() - mark, 1)
        mark = time.monotonic()

    checks = [count_step_flops(args.model, device, min(args.batch, 32), ckpt) for ckpt in (False, True)]
    phase("flops_check")
    result["flops"]["check"] = checks
    for c in checks:
        log(
            f"FlopCounterMode, one training step{' with grad ckpt' if c['grad_checkpointing'] else ''}: "
            f"{c['counted'] / 1e9:.2f} G/sample counted vs {c['formula'] / 1e9:.2f} G formula, ratio {c['ratio']:.4f}"
        )

    # The headline: every contender at the seed's batch, one after another (each released before the next).
    runs: dict[str, dict] = {}
    for mode in modes:
        free_memory(device)
        # What an earlier contender left allocated (should be ~0): it would count in this one's peak.
        held = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None
        runs[mode] = {"seed_batch": None, "held_before_mb": held}
        contender = None
        try:
            contender = build(mode, args.model, device, args.batch)
            runs[mode]["seed_batch"] = measure(contender, config, args.batch, device, warmup, steps)
        except Exception as error:  # an OOM at the seed batch is a result, not a crash; others re-raised
            if not is_oom(error):
                raise
        finally:
            if contender is not None:
                contender.close()
        r = runs[mode]["seed_batch"]
        log(
            f"  {LABELS[mode]:<44} batch {args.batch}: "
            + (
                f"{r['samples_per_s']:8.1f} samples/s, {r['step_s'] * 1e3:7.1f} ms/step"
                + (f", peak {r['peak_mb']:,.0f} MB" if r["peak_mb"] is not None else "")
                if r
                else "out of memory"
            )
        )

    phase("seed_batch")
    search_modes = (
        []
        if args.search_modes == "none"
        else [m for m in (args.search_modes.split(",") if args.search_modes else modes) if m in modes]
    )
    budget = args.search_budget_s / max(1, len(search_modes))
    for mode in search_modes:
        log(f"  largest batch, {LABELS[mode]} (cap {args.max_batch}, {budget:.0f} s budget):")
        trial, close = trial_runner(mode, args.model, config, device, trial_warmup, trial_steps, log)
        try:
            found = search_largest(
                trial,
                args.batch,
                args.max_batch,
                resolution=1 / 8 if quick else 1 / 16,
                deadline=time.monotonic() + budget,
            )
        finally:
            close()
        runs[mode]["largest"] = found
    phase("search")

    for mode, r in runs.items():
        for record in (r.get("seed_batch"), (r.get("largest") or {}).get("record")):
            if record is None:
                continue
            ckpt = mode.endswith("_ckpt")
            record["model_flops_per_s"] = record["samples_per_s"] * training_flops(config, CONTEXT, False)
            record["hardware_flops_per_s"] = record["samples_per_s"] * training_flops(config, CONTEXT, ckpt)
            record["mfu"] = record["model_flops_per_s"] / peak if peak else None
            record["hfu"] = record["hardware_flops_per_s"] / peak if peak else None
    result["runs"] = runs

    if not args.no_loader:
        result["loader"] = loader_rate(config.vision.image_size, args.loader_images)
        fastest = max(
            (r["seed_batch"]["samples_per_s"] for m, r in runs.items() if m.startswith("ours") and r["seed_batch"]),
            default=None,
        )
        # One worker keeps one core busy while the main process waits on it: its wall-clock rate from the first
        # batch to the last (start-up excluded) is what a core delivers. The per-CPU-second figure (bench_loader's,
        # start-up included) is printed beside it.
        result["cores_per_gpu"] = fastest / result["loader"]["samples_per_s"] if fastest else None
        phase("loader")
    result["phases_s"] = phases
    report(result, args, log)
    return result


def _fmt(x, spec: str, none: str = "—") -> str:
    return none if x is None else format(x, spec)


def report(result: dict, args, log) -> None:
    runs, peak = result["runs"], result["peak_bf16_flops"]
    log("")
    log(
        f"model {result['model']}, 1 GPU ({result['device']}), bf16, synthetic device-resident batches"
        + (" (quick)" if result["quick"] else "")
    )
    log(
        f"{'trainer':<46}{'samples/s':>11}{'MFU':>7}{'HFU':>7}{'peak MB':>10}{'largest batch':>15}{'samples/s':>11}"
        f"{'MFU':>7}{'peak MB':>10}"
    )
    for mode, r in runs.items():
        s = r["seed_batch"] or {}
        largest = r.get("largest") or {}
        big = largest.get("record") or {}
        size = largest.get("largest")
        size_text = (
            "—"
            if not largest
            else ("none" if size is None else f"{'≥' if largest['capped'] or largest['stopped_early'] else ''}{size}")
        )
        log(
            f"{LABELS[mode]:<46}{_fmt(s.get('samples_per_s'), '11.1f'):>11}{_fmt(s.get('mfu'), '7.1%'):>7}"
            f"{_fmt(s.get('hfu'), '7.1%'):>7}{_fmt(s.get('peak_mb'), '10,.0f'):>10}{size_text:>15}"
            f"{_fmt(big.get('samples_per_s'), '11.1f'):>11}{_fmt(big.get('mfu'), '7.1%'):>7}"
            f"{_fmt(big.get('peak_mb'), '10,.0f'):>10}"
        )
    if peak is None:
        log(f"peak bf16 FLOP/s of {result['device']}: unknown (MFU not computed)")
    else:
        log(
            f"peak bf16 FLOP/s of {result['device']}: {peak / 1e12:.0f} T (dense); MFU counts 3× forward per sample, "
            f"HFU adds the checkpointing recompute"
        )
    pairs = [("ours", "ddp"), ("ours_ckpt", "ddp_ckpt")]
    for ours, base in pairs:
        a, b = (runs.get(ours) or {}).get("seed_batch"), (runs.get(base) or {}).get("seed_batch")
        if a and b:
            log(
                f"throughput {ours}/{base} at batch {args.batch}: {a['samples_per_s'] / b['samples_per_s']:.2f}"
                + (f"; peak memory {a['peak_mb'] / b['peak_mb']:.2f}" if a["peak_mb"] and b["peak_mb"] else "")
            )
    best = max(
        (r["seed_batch"]["samples_per_s"] for m, r in runs.items() if m.startswith("ours") and r["seed_batch"]),
        default=None,
    )
    if best is not None:
        log(
            f"anchor: Chinese-CLIP reports {ANCHOR_CN_CLIP:.0f} samples/s per A100 (ViT-B-16, FlashAttention, fp16, "
            f"batch 450); ours here {best:.1f} samples/s ({best / ANCHOR_CN_CLIP:.2f}×, on {result['device']})"
        )
        mfus = [r["seed_batch"].get("mfu") for m, r in runs.items() if m.startswith("ours") and r["seed_batch"]]
        mfus += [
            ((r.get("largest") or {}).get("record") or {}).get("mfu") for m, r in runs.items() if m.startswith("ours")
        ]
        mfus = [m for m in mfus if m is not None]
        if mfus:
            log(
                f"target: ≥ {TARGET_MFU:.0%} MFU in bf16 on H100/H200; best MFU of ours here {max(mfus):.1%} "
                f"({'met' if max(mfus) >= TARGET_MFU else 'not met'})"
            )
    loader = result.get("loader")
    if loader:
        log(
            f"loader: {loader['samples_per_s']:.1f} samples/s from 1 worker = 1 core "
            f"({loader['samples_per_cpu_s']:.1f} per CPU-second with start-up; "
            f"{loader['jpeg_side']}-px JPEGs → {loader['image_size']} px); one GPU trains "
            f"{_fmt(best, '.1f')} samples/s: cores per GPU needed ≈ {_fmt(result.get('cores_per_gpu'), '.1f')}"
        )
    for ours, base in pairs:
        a, b = (runs.get(ours) or {}).get("seed_batch"), (runs.get(base) or {}).get("seed_batch")
        if a and b:
            ratio = a["samples_per_s"] / b["samples_per_s"]
            print(
                "BENCH "
                + json.dumps(
                    {
                        "stage": f"GPU train{' +ckpt' if ours.endswith('ckpt') else ''} ({args.model.split('@')[0]}, "
                        f"{args.batch}/GPU)",
                        "ours": round(a["samples_per_s"], 1),
                        "baseline": round(b["samples_per_s"], 1),
                        "ratio": round(ratio, 3),
                        "target": ">= 1",
                        "unit": "samples/s",
                    }
                )
            )
    for ours, base in pairs:
        a, b = (runs.get(ours) or {}).get("largest"), (runs.get(base) or {}).get("largest")
        if a and b and a["largest"] and b["largest"]:
            print(
                "BENCH "
                + json.dumps(
                    {
                        "stage": f"GPU largest batch{' +ckpt' if ours.endswith('ckpt') else ''}",
                        "ours": a["largest"],
                        "baseline": b["largest"],
                        "ratio": round(a["largest"] / b["largest"], 2),
                        "target": ">= 1",
                        "unit": "samples/GPU",
                    }
                )
            )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cuda", "cpu"],
        help="auto: cuda, else skip; cpu: the CPU twin (code paths). Pick a GPU with CUDA_VISIBLE_DEVICES",
    )
    p.add_argument("--model", default=BASE)
    p.add_argument("--batch", type=int, default=SEED_BATCH, help="per GPU, the headline comparison")
    p.add_argument("--modes", default="ours,ours_ckpt,ddp,ddp_ckpt")
    p.add_argument(
        "--search-modes",
        default=None,
        help="contenders whose largest batch is searched (default: all of --modes; 'none': no search)",
    )
    p.add_argument("--max-batch", type=int, default=None, help="search cap (default 16384; 8192 with --quick)")
    p.add_argument(
        "--search-budget-s",
        type=float,
        default=None,
        help="time for all searches together (default 480; 120 with --quick)",
    )
    p.add_argument(
        "--loader-images", type=int, default=None, help="JPEGs for the loader rate (default 2048; 512 quick)"
    )
    p.add_argument("--no-loader", action="store_true")
    p.add_argument("--quick", action="store_true", help="fewer steps, coarser search: ~4 minutes on an H200")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    args.max_batch = args.max_batch or (8192 if args.quick else 16384)
    args.search_budget_s = args.search_budget_s if args.search_budget_s is not None else (120 if args.quick else 480)
    args.loader_images = args.loader_images or (512 if args.quick else 2048)

    # Before torch: the allocator reads its configuration once. Expandable segments let a large batch use memory
    # that smaller batches left fragmented, so the largest batch found is the model's, not the allocator's history.
    if args.device != "cpu":
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    else:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per rank, as the CPU benchmarks run
    import torch

    if args.device == "auto":
        if not torch.cuda.is_available():
            print("bench_gpu: skipped: no CUDA GPU here (torch.cuda.is_available() is False)")
            return 0
        args.device = "cuda"
    # DeepSpeed picks its accelerator once, at first use, from DS_ACCELERATOR; `make bench` exports cpu for the CPU
    # benchmarks, which on a GPU would put the engine on gloo and the CPU.
    os.environ["DS_ACCELERATOR"] = "cpu" if args.device == "cpu" else "cuda"
    began = time.time()
    try:
        result = run(args)
    finally:
        from cnclip_scale import comm

        comm.stop()
    result["wall_s"] = round(time.time() - began, 1)
    print(f"bench_gpu: {result['wall_s']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
