"""Runs the real trainer (``loop.train``) in-process, once per scenario, while counting the device of every tensor that
reaches a torch.distributed collective, and optionally listing the CUDA synchronisations the steps make.

    deepspeed --num_gpus N tests/gpu/collectives_driver.py PLAN.json

PLAN: a list of {"name", "overrides": [...], "sync_debug": bool}. For each scenario every rank writes
OUTPUT_DIR/collectives_rank{R}.json: {"ok", "summary" | "error", "collectives": {name: {"calls", "cuda", "cpu", ...}},
"cpu_stacks": [...], "syncs": [{"count", "stack"}, ...]}.

Why count when NCCL already refuses CPU tensors: a process group created with both backends (``cpu:gloo,cuda:nccl``,
or a default one) would carry a CPU tensor through gloo silently — a device-to-host copy and a host round trip on the
hot path that nothing would flag. ``all_gather_object`` / ``broadcast_object_list`` are not wrapped: they pickle into a
tensor they place on the backend's device themselves.

The wrappers replace the functions on the ``torch.distributed`` module before anything imports them, so every caller
that looks them up there is seen: our trainer and evaluator, ``torch.distributed.nn`` (the loss's autograd all-gather)
and DeepSpeed's comm backend (which keeps references to all_gather_into_tensor / reduce_scatter_tensor taken when its
backend is created — inside ``loop.train``, after the wrapping).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import sys
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402 - after the sys.path line
import torch.distributed as dist  # noqa: E402

COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "reduce_scatter",
    "reduce",
    "broadcast",
    "gather",
    "scatter",
    "all_to_all",
    "all_to_all_single",
    "all_reduce_coalesced",
    "send",
    "recv",
    "isend",
    "irecv",
    "_all_gather_base",
    "_reduce_scatter_base",
)
COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
CPU_STACKS: list[str] = []


def _tensors(value):
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _counted(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        COUNTS[name]["calls"] += 1
        for tensor in _tensors([*args, *kwargs.values()]):
            COUNTS[name][tensor.device.type] += 1
            if tensor.device.type == "cpu" and len(CPU_STACKS) < 10:  # where, for the failure message
                CPU_STACKS.append(f"{name}:\n" + "".join(traceback.format_stack(limit=12)[:-1]))
        return fn(*args, **kwargs)

    return wrapper


def wrap_collectives() -> list[str]:
    wrapped = []
    for name in COLLECTIVES:
        fn = getattr(dist, name, None)
        if fn is not None:
            setattr(dist, name, _counted(name, fn))
            wrapped.append(name)
    return wrapped


# ---------------------------------------------------------------------------------------------------- sync listing
SYNC_MESSAGE = "called a synchronizing CUDA operation"
_OURS = ("cnclip_scale", "deepspeed", "transformers", "timm", "torch")


def _stack_key() -> str:
    """The innermost Python frames of the library code that made the synchronising call (this driver, the
    warnings machinery and the test harness dropped)."""
    frames = [
        f
        for f in traceback.extract_stack()[:-2]
        if any(f"/{part}/" in f.filename for part in _OURS) and "/warnings.py" not in f.filename
    ]
    shown = frames[-5:]
    return " <- ".join(f"{_short(f.filename)}:{f.lineno} {f.name}" for f in reversed(shown)) or "(no library frame)"


def _short(filename: str) -> str:
    for part in _OURS:
        marker = f"/{part}/"
        if marker in filename:
            return part + "/" + filename.split(marker, 1)[1]
    return filename


class SyncListing:
    """``torch.cuda.set_sync_debug_mode("warn")`` turns every synchronising CUDA call into a Python warning issued
    from the calling frame; each is counted by its call stack. Those made inside the backward (the autograd engine's
    threads) are replayed by torch when the backward returns, so they are counted at the backward call."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()

    def __enter__(self):
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.filterwarnings("always", message=SYNC_MESSAGE)  # every occurrence, not the first per location
        self._show = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if SYNC_MESSAGE in str(message):
                self.counts[_stack_key()] += 1
            else:
                self._show(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = self._show
        self._catch.__exit__(*exc)
        return False

    def listing(self) -> list[dict]:
        return [{"count": n, "stack": key} for key, n in self.counts.most_common()]


# ---------------------------------------------------------------------------------------------------- scenarios
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("plan")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher's
    args = parser.parse_args()
    wrapped = wrap_collectives()  # before the trainer, the evaluator or DeepSpeed are imported

    from cnclip_scale.train import loop
    from cnclip_scale.train.config import load_config

    for scenario in json.loads(Path(args.plan).read_text()):
        cfg = load_config(None, scenario["overrides"])
        COUNTS.clear()
        CPU_STACKS.clear()
        listing = SyncListing() if scenario.get("sync_debug") else None
        try:
            if listing is not None:
                with listing:
                    summary = loop.train(cfg)
            else:
                summary = loop.train(cfg)
            result = {"ok": True, "summary": summary}
        except Exception as e:  # noqa: BLE001 - reported to the test, which shows it
            result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        result.update(
            name=scenario["name"],
            wrapped=wrapped,
            collectives={k: dict(v) for k, v in COUNTS.items()},
            cpu_stacks=list(CPU_STACKS),
            syncs=listing.listing() if listing is not None else None,
        )
        rank = dist.get_rank() if dist.is_initialized() else 0
        out = Path(cfg.train.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"collectives_rank{rank}.json").write_text(json.dumps(result, indent=1))
        if not result["ok"]:
            break  # the process group may be unusable; the test reports the error
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
