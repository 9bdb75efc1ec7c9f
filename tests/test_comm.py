"""cnclip_scale.comm owns every collective, and hands NCCL what NCCL takes.

1. No module of the package but comm.py calls a torch.distributed collective (read from the source's AST).
2. With the backend reported as nccl (no GPU here), every tensor reaches the collective on the CUDA device and comes
   back on the caller's. CUDA tensors cannot exist on this machine, so a tensor "on cuda" is a CPU tensor of the
   subclass ``OnCuda``: ``Tensor.to`` is patched to move into and out of that subclass, and torch's own subclass
   propagation keeps buffers derived from a moved tensor (empty_like, new_zeros, cat) in it, as real CUDA would.
   comm never creates a tensor on the backend device otherwise, so this sees every path.
3. Real gloo ranks: the collectives' results.
"""

import ast
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cnclip_scale import comm
from cnclip_scale.launch_env import free_port

PACKAGE = Path(comm.__file__).parent
COLLECTIVE_PREFIXES = ("all_reduce", "all_gather", "broadcast", "reduce", "all_to_all")
COLLECTIVE_NAMES = {"gather", "scatter", "barrier", "monitored_barrier", "send", "recv", "isend", "irecv"}


def _is_collective(name: str) -> bool:
    return name in COLLECTIVE_NAMES or name.startswith(COLLECTIVE_PREFIXES) or "_object" in name


def collective_calls(source: str) -> list[str]:
    """Calls of torch.distributed collectives in ``source``, however the module or function was imported."""
    tree = ast.parse(source)
    modules, functions = set(), set()  # local names bound to torch.distributed(.nn.functional) / to its functions
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("torch.distributed"):
                    modules.add(alias.asname or alias.name)
                elif alias.name == "torch":
                    modules.add((alias.asname or "torch") + ".distributed")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if node.module.startswith("torch.distributed") and _is_collective(alias.name):
                    functions.add(alias.asname or alias.name)
                elif f"{node.module}.{alias.name}".startswith("torch.distributed"):
                    modules.add(alias.asname or alias.name)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in functions:
            found.append(f"line {node.lineno}: {func.id}")
        elif isinstance(func, ast.Attribute) and _is_collective(func.attr):
            base = ast.unparse(func.value)
            if any(base == m or base.startswith(m + ".") for m in modules):
                found.append(f"line {node.lineno}: {base}.{func.attr}")
    return found


def test_the_checker_sees_every_import_style():
    planted = """
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import distributed
from torch.distributed import all_gather_object as ago
dist.all_reduce(t)
torch.distributed.barrier()
distributed.broadcast_object_list(x)
dist_fn.all_gather(t)
ago(out, obj)
dist.get_rank()
comm.all_reduce(t)
"""
    assert [c.split(": ")[1] for c in collective_calls(planted)] == [
        "dist.all_reduce",
        "torch.distributed.barrier",
        "distributed.broadcast_object_list",
        "dist_fn.all_gather",
        "ago",
    ]


def test_only_comm_calls_collectives():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "comm.py":
            continue
        calls = collective_calls(path.read_text())
        if calls:
            offenders[str(path.relative_to(PACKAGE))] = calls
    assert not offenders, f"torch.distributed collectives outside cnclip_scale/comm.py: {offenders}"
    assert collective_calls((PACKAGE / "comm.py").read_text())  # and the walk does see the ones that are there


# ------------------------------------------------------------------------------------------ mocked NCCL


class OnCuda(torch.Tensor):
    """A CPU tensor standing for one on cuda:0 (see the module docstring)."""


CUDA = torch.device("cuda", 0)
_to = torch.Tensor.to


def _target(args, kwargs):
    for a in (*args, kwargs.get("device")):
        if isinstance(a, (str, torch.device)):
            return torch.device(a)
    return None


def _fake_to(self, *args, **kwargs):
    target = _target(args, kwargs)
    rest = [a for a in args if not isinstance(a, (str, torch.device))]
    kwargs = {k: v for k, v in kwargs.items() if k not in ("device", "non_blocking")}
    plain = self.as_subclass(torch.Tensor)
    moved = _to(plain, *rest, **kwargs) if rest or kwargs else plain
    if target is None:
        return moved.as_subclass(type(self))
    if target.type == "cuda":
        # a copy when the device changes, as real .to() makes one: the collectives write into it
        return (moved.clone() if not isinstance(self, OnCuda) or kwargs.get("copy") else moved).as_subclass(OnCuda)
    return (moved.clone() if isinstance(self, OnCuda) else moved).as_subclass(torch.Tensor)


class FakeNccl:
    """Two ranks' worth of NCCL: rank 0's collectives, the other rank contributing ``peer(t)``; records devices."""

    def __init__(self):
        self.seen = []

    def _check(self, name, *tensors):
        for t in tensors:
            self.seen.append((name, isinstance(t, OnCuda)))

    def all_reduce(self, t, op=None):
        self._check("all_reduce", t)
        t.add_(t)  # the peer holds the same values: a sum doubles them

    def all_gather(self, out, t):
        self._check("all_gather", t, *out)
        for o in out:
            o.copy_(t)

    def broadcast(self, t, src=0):
        self._check("broadcast", t)
        t.fill_(7)


@pytest.fixture
def nccl(monkeypatch):
    fake = FakeNccl()
    monkeypatch.setattr(torch.Tensor, "to", _fake_to)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dist, "get_rank", lambda *a: 0)
    for name in ("all_reduce", "all_gather", "broadcast"):
        monkeypatch.setattr(dist, name, getattr(fake, name))
    return fake


def _on_caller(t):
    return type(t) is torch.Tensor and t.device.type == "cpu"


def test_nccl_backend_device_is_the_current_cuda_device(nccl):
    assert comm.backend_device() == CUDA


def test_nccl_collectives_take_cuda_tensors_and_return_the_callers(nccl):
    x = torch.arange(6, dtype=torch.float32).reshape(3, 2)

    summed = comm.all_reduce(x)
    assert _on_caller(summed) and torch.equal(summed, 2 * x) and torch.equal(x, torch.arange(6.0).reshape(3, 2))
    mean = comm.mean(x)
    assert _on_caller(mean) and torch.equal(mean, x)
    gathered = comm.all_gather(x)
    assert _on_caller(gathered) and torch.equal(gathered, torch.cat([x, x]))
    rows = comm.gather_rows(x)
    assert _on_caller(rows) and torch.equal(rows, torch.cat([x, x]))
    weights = [torch.zeros(2), torch.zeros(3, 1)]
    comm.broadcast_(weights)
    assert all(_on_caller(w) and (w == 7).all() for w in weights)

    assert nccl.seen and all(on_cuda for _, on_cuda in nccl.seen), [n for n, ok in nccl.seen if not ok]
    assert {name for name, _ in nccl.seen} == {"all_reduce", "all_gather", "broadcast"}


def test_nccl_gather_with_grad_moves_and_keeps_the_graph(nccl, monkeypatch):
    import torch.distributed.nn.functional as dist_fn

    def fake_all_gather(t):
        nccl._check("all_gather_with_grad", t)
        return (t, t * 1)

    monkeypatch.setattr(dist_fn, "all_gather", fake_all_gather)
    x = torch.ones(2, 3, requires_grad=True)
    out = comm.all_gather_with_grad(x)
    assert _on_caller(out) and out.shape == (4, 3)
    out.sum().backward()
    assert torch.equal(x.grad, torch.full((2, 3), 2.0))
    assert nccl.seen == [("all_gather_with_grad", True)]


# ------------------------------------------------------------------------------------------ real gloo ranks


def _ranks(rank, world, port, out):
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    _, device, created = comm.start(use_deepspeed=False)
    try:
        assert created and device.type == "cpu" and dist.get_backend() == "gloo"
        me = torch.full((rank + 1, 2), float(rank))
        result = {
            "sum": comm.all_reduce(torch.tensor([rank + 1.0])).tolist(),
            "max": comm.all_reduce(torch.tensor([rank]), "max").tolist(),
            "min": comm.all_reduce(torch.tensor([rank]), "min").tolist(),
            "mean": comm.mean(torch.tensor([rank * 2])).tolist(),
            "gather": comm.all_gather(torch.tensor([rank])).tolist(),
            "rows": comm.gather_rows(me).tolist(),
            "objects": comm.gather_objects({"r": rank}),
            "bcast": comm.broadcast_object(f"from {rank}"),
        }
        w = torch.full((3,), float(rank))
        comm.broadcast_([w])
        result["weights"] = w.tolist()
        x = torch.full((1, 2), float(rank + 1), requires_grad=True)
        (comm.all_gather_with_grad(x).sum() * (rank + 1)).backward()
        result["grad"] = x.grad.tolist()  # d/dx of (1 + 2) × the sum of every rank's copy
        out[rank] = result
        comm.barrier()
    finally:
        comm.stop()


def test_collectives_on_two_gloo_ranks():
    out = mp.Manager().dict()
    mp.spawn(_ranks, args=(2, free_port(), out), nprocs=2, join=True)
    for rank in (0, 1):
        r = out[rank]
        assert r["sum"] == [3.0] and r["max"] == [1] and r["min"] == [0] and r["mean"] == [1.0]
        assert r["gather"] == [0, 1]
        assert r["rows"] == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]
        assert r["objects"] == [{"r": 0}, {"r": 1}] and r["bcast"] == "from 0"
        assert r["weights"] == [0.0, 0.0, 0.0]
        assert r["grad"] == [[3.0, 3.0]]


def test_stop_puts_back_the_variables_start_exported(monkeypatch):
    """A single process exports RANK/WORLD_SIZE/... to rendezvous; once it leaves the group they must go, or every
    process it starts next (a test's subprocess, a second launcher) would take them for its own rank."""
    for key in (*comm.RENDEZVOUS_VARS, "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.setenv(key, "")  # registers the original state for the end of the test
        monkeypatch.delenv(key)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # one the caller set itself: kept as it was
    info, _, created = comm.start(use_deepspeed=False)
    assert created and info.launcher == "single" and dist.get_world_size() == 1
    assert os.environ["RANK"] == "0" and os.environ["WORLD_SIZE"] == "1" and "MASTER_PORT" in os.environ
    comm.stop()
    assert not comm.active()
    assert {k: os.environ.get(k) for k in comm.RENDEZVOUS_VARS} == {
        "RANK": None,
        "WORLD_SIZE": None,
        "LOCAL_RANK": None,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": None,
    }
