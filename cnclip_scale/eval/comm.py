"""The few collectives the evaluator needs, written so that a process without a process group (or with a
group of one) takes the same code path. Tensors travel on the backend's device (CUDA for nccl) and come
back on the caller's device."""
from __future__ import annotations

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def _comm_device(t: torch.Tensor) -> torch.device:
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` (same trailing shape, any number of rows) in rank order, on every rank.
    all_gather needs equal shapes: gather the row counts first, pad to the largest, strip afterwards."""
    if world() == 1:
        return t
    dev = _comm_device(t)
    sizes = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(world())]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], dtype=torch.long, device=dev))
    sizes = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.to(dev)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(t.device)


def gather_objects(obj) -> list:
    """Every rank's picklable ``obj``, in rank order, on every rank (ids, texts, small dicts)."""
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
