"""Who am I in the job, and which device is mine: every launcher's variables, and GPU binding as Slurm sites do it.

The device part runs ``comm.start`` against an accelerator that reports GPUs (none exist here): what is checked is
the order of events and what DeepSpeed will be told, not CUDA itself (tests/gpu runs it for real).
"""

import os

import pytest
import torch
import torch.distributed as dist

from cnclip_scale import comm
from cnclip_scale.launch_env import detect, device_index


def test_detect_every_launcher():
    info = detect({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "x"})
    assert (info.rank, info.world_size, info.local_rank, info.launcher) == (3, 8, 1, "torchrun")
    info = detect({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (info.rank, info.world_size, info.local_rank, info.launcher) == (3, 8, 1, "deepspeed/env")
    info = detect({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"})
    assert (info.rank, info.world_size, info.local_rank, info.launcher) == (5, 8, 1, "srun")
    info = detect({})
    assert (info.rank, info.world_size, info.local_rank, info.launcher) == (0, 1, 0, "single")


@pytest.mark.parametrize(
    "local_rank, visible, expected",
    [
        (0, 8, 0),
        (7, 8, 7),  # each task sees the node's GPUs
        (3, 1, 0),
        (0, 1, 0),  # --gpus-per-task=1 / a site's --gpu-bind: one visible GPU, always device 0
    ],
)
def test_device_index(local_rank, visible, expected):
    assert device_index(local_rank, visible) == expected


@pytest.mark.parametrize("local_rank, visible, message", [(2, 2, "only 2 devices"), (0, 0, "no accelerator")])
def test_device_index_refuses_what_cannot_be_right(local_rank, visible, message):
    with pytest.raises(RuntimeError, match=message):
        device_index(local_rank, visible)


class GpuNode:
    """DeepSpeed's accelerator interface as a node with ``count`` visible GPUs reports it; records what is asked."""

    def __init__(self, count, events):
        self.count, self.events = count, events

    def device_name(self, index=None):
        return "cuda" if index is None else f"cuda:{index}"

    def device_count(self):
        return self.count

    def set_device(self, index):
        self.events.append(("set_device", index))

    def communication_backend_name(self):
        return "nccl"


@pytest.mark.parametrize("use_deepspeed", [False, True])
def test_start_sets_the_device_before_the_group_and_tells_deepspeed(monkeypatch, use_deepspeed):
    events = []
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.setenv(key, "")  # registers the original state: start() exports these, the test restores them
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_LOCALID", "1")  # second task of its node, bound to one GPU (--gpus-per-task=1)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29555")
    monkeypatch.setattr(comm, "_accelerator", lambda: GpuNode(1, events))
    monkeypatch.setattr(dist, "is_backend_available", lambda name: name in ("nccl", "gloo"))

    def init_process_group(backend, **kwargs):
        events.append(("group", backend, str(kwargs.get("device_id")), kwargs["timeout"].total_seconds()))

    def init_distributed(dist_backend, **kwargs):
        events.append(("group", dist_backend, None, kwargs["timeout"].total_seconds()))

    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    import deepspeed

    monkeypatch.setattr(deepspeed, "init_distributed", init_distributed)
    info, device, created = comm.start(use_deepspeed=use_deepspeed)
    assert created and info.launcher == "srun" and device == torch.device("cuda", 0)
    bound = None if use_deepspeed else "cuda:0"
    assert events == [("set_device", 0), ("group", "nccl", bound, comm.DEFAULT_TIMEOUT_MIN * 60)]
    # DeepSpeed's engine takes LOCAL_RANK as its device index: it must say 0, not SLURM_LOCALID's 1
    assert os.environ["LOCAL_RANK"] == "0" and os.environ["RANK"] == "3" and os.environ["WORLD_SIZE"] == "4"
