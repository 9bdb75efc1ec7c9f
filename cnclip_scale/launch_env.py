"""Who am I in the job? One answer for every launcher: deepspeed, torchrun, srun, or a plain single process.

The deepspeed launcher and torchrun export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; srun exports
SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID (our sbatch scripts also export MASTER_ADDR/MASTER_PORT). A plain
``python launch/x.py`` gets rank 0 of 1 on a free loopback port, so DeepSpeed need not look for MPI.
Starting the process group itself is ``cnclip_scale.comm.start``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int
    launcher: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def detect(environ: dict | None = None) -> RankInfo:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "deepspeed/env"
        return RankInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), launcher)
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return RankInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)), "srun")
    return RankInfo(0, 1, 0, "single")


def export_env(info: RankInfo) -> None:
    """Make the torch.distributed env:// rendezvous variables agree with ``info`` (srun and a single process lack
    them)."""
    os.environ["RANK"] = str(info.rank)
    os.environ["WORLD_SIZE"] = str(info.world_size)
    os.environ["LOCAL_RANK"] = str(info.local_rank)
    if info.launcher == "single":
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    elif "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise RuntimeError(
            f"launched by {info.launcher} as rank {info.rank}/{info.world_size} but MASTER_ADDR/MASTER_PORT "
            "are not set; export them (launch/*.sbatch derive them from the allocation)"
        )
    try:  # an unresolvable master makes the rendezvous retry for its whole timeout (30 min): fail now instead
        socket.getaddrinfo(os.environ["MASTER_ADDR"], None)
    except socket.gaierror:
        raise RuntimeError(
            f"MASTER_ADDR={os.environ['MASTER_ADDR']} does not resolve; use an address the ranks can "
            "reach (launch/*.sbatch take the first node's NodeAddr)"
        ) from None


def device_index(local_rank: int, visible: int) -> int:
    """Which of the ``visible`` accelerator devices this process drives.

    Normally device ``local_rank``. Under ``srun --gpus-per-task=1`` (or a site's ``--gpu-bind``) each task sees only
    its own GPU, as device 0, while SLURM_LOCALID still counts the node's tasks: cuda:LOCALID would be out of range.
    """
    if visible <= 0:
        raise RuntimeError("no accelerator device is visible to this process (check CUDA_VISIBLE_DEVICES / --gpus)")
    if local_rank < visible:
        return local_rank
    if visible == 1:
        return 0
    raise RuntimeError(
        f"local rank {local_rank} but only {visible} devices are visible to this process: give each "
        "task all of its node's GPUs (srun --gpu-bind=none) or exactly one (--gpus-per-task=1)"
    )
