"""The one owner of ``torch.distributed``: it starts the process group and makes every collective the project calls.

Why one place: NCCL serves CUDA tensors only (``Backend.backend_capability["nccl"] == ["cuda"]``), gloo serves CPU
tensors; a collective handed a tensor on the wrong device fails on the GPU cluster although it passed every CPU test.
So every function here moves its tensors to the backend's device (``backend_device``) and hands results back on the
caller's device. A process without a group (or with a group of one) takes the same calls and communicates nothing.
``tests/test_comm.py`` walks the package's source and fails on a collective called anywhere else.

The trainer starts the group through DeepSpeed (its comm layer must know the group), the evaluator with plain
``torch.distributed`` (DeepSpeed's init would JIT-compile its CPU shm comm for nothing); both go through ``start``.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from .launch_env import RankInfo, detect, device_index, export_env

# Rank 0 alone converts checkpoints (universal, fp32 export) and prunes old ones while the others wait in a
# collective; on big models that outlasts NCCL's default 10 minutes. CNCLIP_DIST_TIMEOUT_MIN overrides.
DEFAULT_TIMEOUT_MIN = 60


def timeout() -> timedelta:
    return timedelta(minutes=float(os.environ.get("CNCLIP_DIST_TIMEOUT_MIN", DEFAULT_TIMEOUT_MIN)))


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


# --------------------------------------------------------------------------------------- the process group


class _NoCpuFallbackWarning(logging.Filter):
    """DeepSpeed warns "Setting accelerator to CPU ... unable to detect it" on every rank of a GPU-less machine, at its
    import: expected wherever we run on CPUs, and alarming to read. Installed before anything imports DeepSpeed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Setting accelerator to CPU")


logging.getLogger("DeepSpeed").addFilter(_NoCpuFallbackWarning())


def _accelerator():
    """DeepSpeed's accelerator: CUDA where torch sees a GPU, else the CPU (``DS_ACCELERATOR`` forces one)."""
    # light: builds no engine and no ops
    from deepspeed.accelerator import get_accelerator

    return get_accelerator()


def backend_name(accelerator) -> str:
    """The accelerator's own backend (nccl for CUDA), else gloo where it is not built into this torch (DeepSpeed's
    CPU accelerator names oneCCL, which needs an extension we do not install)."""
    name = accelerator.communication_backend_name()
    return name if dist.is_backend_available(name) else "gloo"


def local_device(accelerator, info: RankInfo) -> torch.device:
    """This process's device. On an accelerator, made current here, before any group exists: object collectives
    stage on the current device, and a group bound to cuda:LOCAL_RANK while cuda:0 is current fails on every rank
    but the first of a node. LOCAL_RANK is set to the index, which DeepSpeed's engine takes as its device."""
    if accelerator.device_name() == "cpu":
        return torch.device("cpu")
    index = device_index(info.local_rank, accelerator.device_count())
    accelerator.set_device(index)
    os.environ["LOCAL_RANK"] = str(index)
    return torch.device(accelerator.device_name(index))


RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_exported: dict[str, str | None] = {}  # what those were before ``start`` set them, for ``stop``


def start(*, use_deepspeed: bool) -> tuple[RankInfo, torch.device, bool]:
    """Join the job's process group (torchrun / deepspeed / srun / single process; see ``launch_env``).
    Returns (who I am, my device, whether this call created the group: then ``stop`` it)."""
    info = detect()
    accelerator = _accelerator()
    if active():
        return info, local_device(accelerator, info), False
    _exported.update({k: os.environ.get(k) for k in RENDEZVOUS_VARS})
    export_env(info)
    device = local_device(accelerator, info)
    backend = backend_name(accelerator)
    if use_deepspeed:
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, timeout=timeout())
    else:
        # device_id binds NCCL's communicator to our device now rather than at the first collective.
        bind = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, init_method="env://", timeout=timeout(), **bind)
    return info, device, True


def stop() -> None:
    """Leave the group (without it, exits intermittently print 'terminate called without an active exception'), and
    put back the rendezvous variables ``start`` set: a caller that goes on (a test, a notebook, a second run in the
    same process) would otherwise pass RANK/WORLD_SIZE to every process it starts, which would take them as its own."""
    if active():
        dist.destroy_process_group()
    for key, value in _exported.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _exported.clear()


# --------------------------------------------------------------------------------------------- collectives


def backend_device() -> torch.device:
    """Where a tensor must be to take part in a collective of the current group."""
    if not active():
        return torch.device("cpu")
    backend = dist.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if backend in ("gloo", "mpi"):
        return torch.device("cpu")
    return torch.device(_accelerator().current_device_name())


def _home(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Back to the caller's device. Blocking on purpose: a non-blocking device→host copy may be read unfinished."""
    return t.to(like.device)


_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Elementwise ``op`` ("sum", "max", "min") of every rank's ``t``, on every rank; ``t`` itself is not changed."""
    if world() == 1:
        return t.clone()
    out = t.detach().to(backend_device(), copy=True)
    dist.all_reduce(out, op=_OPS[op])
    return _home(out, t)


def mean(t: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of ``t`` (float), on every rank."""
    return all_reduce(t.float()) / world()


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` (same shape on all ranks) concatenated along dim 0 in rank order; no gradient."""
    if world() == 1:
        return t
    x = t.detach().to(backend_device())
    parts = [torch.empty_like(x) for _ in range(world())]
    dist.all_gather(parts, x)
    return _home(torch.cat(parts), t)


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """``all_gather`` through autograd: the backward sums the gradients every rank's loss sends to this rank's
    rows, so a loss over the gathered batch trains each rank's own features."""
    if world() == 1:
        return t
    import warnings

    import torch.distributed.nn.functional as dist_fn

    with warnings.catch_warnings():  # its deprecation note points at a private API; this is the public one
        warnings.simplefilter("ignore", FutureWarning)
        return _home(torch.cat(dist_fn.all_gather(t.to(backend_device()))), t)


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` (same trailing shape, any number of rows) in rank order, on every rank.
    all_gather needs equal shapes: gather the row counts first, pad to the largest, strip afterwards."""
    if world() == 1:
        return t
    x = t.detach().to(backend_device())
    count = x.new_tensor([x.shape[0]], dtype=torch.long)
    counts = [torch.empty_like(count) for _ in range(world())]
    dist.all_gather(counts, count)
    sizes = torch.cat(counts).tolist()  # the evaluator's host sync: the padding below needs the sizes
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return _home(torch.cat([p[:n] for p, n in zip(parts, sizes)]), t)


def gather_objects(obj) -> list:
    """Every rank's picklable ``obj``, in rank order, on every rank (ids, texts, small dicts). torch stages the
    pickles on the current device, which ``start`` has set."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def broadcast_(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite each tensor in place with rank ``src``'s copy (e.g. weights only ``src`` has read)."""
    if world() == 1:
        return
    for t in tensors:
        x = t.detach().to(backend_device())
        dist.broadcast(x, src=src)
        if x is not t:
            with torch.no_grad():
                t.copy_(x)
