"""Checkpoints: everything a resume needs, saved and loaded in one place.

The loop hands its stateful objects to a ``Checkpointer`` (the DeepSpeed engine, the ``TrainState`` counters, the
train loader's position, the random streams) and calls ``save()`` / ``restore()``; which checkpoint to resume from
(``find_resume``, checked before any rank starts) and whether it must first be converted for another world size
(``to_universal``) are decided here too.

On disk (unchanged since the first checkpoints, so old runs resume)::

    checkpoints/latest                          the tag to resume from, written last (atomic rename)
    checkpoints/step00000100/                   DeepSpeed's files; client_state = TrainState + model/run config
    checkpoints/step00000100/rank00000_state.json   {"data": loader position (all ranks'), "rng": random streams}
    checkpoints/universal/step00000100/         a tag converted by ds_to_universal for another world size
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import torch

from .. import comm
from ..errors import UserError
from ..safe_load import deepspeed_safe_load
from .rng import rng_state, seed_everything, set_rng_state
from .state import TrainState

LATEST = "latest"
UNIVERSAL = "universal"  # checkpoints/universal/<tag>: a tag converted for a resume under another world size
OWN_TAG = re.compile(r"step\d{8}")  # the tags ``save`` writes; pruning deletes nothing else


class ResumeError(UserError, RuntimeError):
    """A checkpoint this job cannot continue from; the message says what to do instead."""


class Checkpointer:
    """Saves and restores the run's stateful objects; ``track`` them once they exist.

    Built before the engine (``universal`` decides how the engine is built); ``resume`` comes from ``find_resume``,
    called in the pre-flight checks so that a bad checkpoint is one line before any rank starts."""

    def __init__(
        self,
        output_dir: str | Path,
        *,
        keep_last: int,
        resume: tuple[Path, str] | None,
        reset_optimizer: bool = False,
        reset_data: bool = False,
    ):
        """``reset_optimizer`` (the seed's ``--reset-optimizer``): a resume keeps the weights (the fp32 master copy,
        which the caller loads into the model before the engine is built: ``weights_source``), the counters and the
        data position, but the optimizer, loss scaler and lr schedule start afresh; DeepSpeed's own states are not
        read, so the parameter groups may differ from the saving run's (another freezing or lr split). ``reset_data``
        (``--reset-data-offset``): the epoch being read starts over."""
        self.root = checkpoint_dir(output_dir)
        self.keep_last = keep_last
        self.resume = resume
        self.reset_optimizer = reset_optimizer and resume is not None
        self.reset_data = reset_data
        self.other_world = resume is not None and needs_universal(*resume)
        # Another world size: DeepSpeed re-partitions a universal copy of the checkpoint (not needed when only the
        # weights are read: they come assembled from every rank's partition).
        self.universal = self.other_world and not self.reset_optimizer
        self._client: dict | None = None
        self.engine = self.loader = self.state = None
        self.meta: dict = {}

    def prepare(self, log) -> None:
        """Convert the checkpoint to resume from, if another world size wrote it (all ranks call this)."""
        if self.universal:
            root, tag = self.resume
            log.info(
                f"checkpoint {root / tag} was written by {saved_world_size(root, tag)} ranks; converting it to "
                f"a universal checkpoint for {comm.world()}"
            )
            to_universal(root, tag)

    def track(self, *, engine, loader, state: TrainState, meta: dict) -> None:
        """``meta``: stored beside the counters for readers of the checkpoint (model and run config)."""
        self.engine, self.loader, self.state, self.meta = engine, loader, state, meta

    @property
    def weights_source(self) -> Path | None:
        """The checkpoint whose weights the caller loads before building the engine (``reset_optimizer``)."""
        return self.resume[0] / self.resume[1] if self.reset_optimizer else None

    def schedule_from(self) -> int:
        """The step a fresh lr schedule starts at: the resumed step under ``reset_optimizer``, else 0."""
        return int(self._client_state()["step"]) if self.reset_optimizer else 0

    def _client_state(self) -> dict:
        if self._client is None:
            self._client = read_client_state(*self.resume)
        return self._client

    def restore(self, *, seed: int, global_batch: int) -> bool:
        """Put the tracked objects where the run continues: the checkpoint's state, or a fresh start. Returns whether
        it resumed. ``seed``: the run's; each rank's random streams are seeded from it on a fresh start."""
        rank = comm.rank()
        if self.resume is None:
            seed_everything(seed + 1000 * rank)  # per-rank dropout streams
            self.loader.set_epoch(self.state.epoch)
            return False
        if self.reset_optimizer:
            client = self._client_state()
            root, tag = self.resume
            rank_file = root / tag / f"rank{0 if self.other_world else rank:05d}_state.json"
            rank_state = json.loads(rank_file.read_text())
        else:
            client, rank_state = load(self.engine, *self.resume)
        restored = TrainState.from_client_state(client, global_batch)
        if self.reset_data:
            restored.epoch_batches = restored.epoch_samples = 0
        for name, value in vars(restored).items():  # in place: the loop holds this object
            setattr(self.state, name, value)
        if self.reset_data:
            self.loader.set_epoch(self.state.epoch)  # a fresh loader: the epoch from its first sample
        else:
            self.loader.load_state_dict(rank_state["data"])
        if self.other_world:  # RNG streams are per rank: a new world size gets new ones, distinct from the first run's
            seed_everything(seed + 1000 * rank + self.state.step)
        else:
            set_rng_state(rank_state["rng"])
        return True

    def save(self) -> Path:
        """A checkpoint of the tracked objects at the current step (all ranks call this)."""
        client = {**self.state.to_client_state(), **self.meta}
        # gather=True: each rank's file also holds every rank's data position, which a resume under another world
        # size needs to continue the epoch without repeats.
        rank_state = {"data": self.loader.state_dict(gather=True), "rng": rng_state()}
        path = save(self.engine, self.root.parent, self.state.step, client, rank_state, self.keep_last)
        self.state.last_saved = self.state.step
        return path


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save(engine, output_dir: str | Path, step: int, client_state: dict, rank_state: dict, keep_last: int) -> Path:
    """One checkpoint, written so that a kill at any moment leaves the previous one usable.

    Order: DeepSpeed states (all ranks) → each rank's data position and RNG → barrier → the ``latest`` pointer
    (rank 0, atomic rename) → pruning of old tags. A checkpoint without the pointer is never resumed from.
    """
    root = checkpoint_dir(output_dir)
    tag = f"step{step:08d}"
    client_state = dict(
        client_state, universal_checkpoint_info={"universal_checkpoint_version": 0.2}, world_size=comm.world()
    )
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
    tags = sorted(
        p.name
        for p in root.iterdir()
        if OWN_TAG.fullmatch(p.name) and p.is_dir() and not p.is_symlink() and any(p.glob("rank*_state.json"))
    )
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
        raise ResumeError(
            f"{pointer} is empty; delete it to start afresh, or write the tag to resume from "
            f"(e.g. step00000100) into it"
        )
    plain = tag not in (".", "..") and "/" not in tag and "\\" not in tag and not os.path.isabs(tag)
    if not plain or (root / tag).resolve().parent != root.resolve():
        raise ResumeError(
            f"{pointer} names {tag!r}, which is not a checkpoint tag inside {root}; refusing to read or "
            "write outside the run's checkpoint folder"
        )
    return root / tag


def _check_tag(root: Path, tag: str, pointer: str) -> None:
    """Everything a resume reads before the ranks start: the tag dir and every rank's state file. Checked here, on
    every rank alike, so a bad checkpoint is one line instead of one rank failing while the others wait."""
    path = _inside(root, tag, pointer)
    if not path.is_dir():
        raise ResumeError(
            f"{pointer} points to {tag!r} but {path} does not exist; delete {root / LATEST} or point it "
            "to an existing tag"
        )
    states = sorted(path.glob("rank*_state.json"))
    if not states:
        raise ResumeError(f"{path}: no rank*_state.json (an incomplete checkpoint, or not written by this trainer)")
    for state in states:
        try:
            ok = isinstance(json.loads(state.read_text()), dict)
        except (OSError, UnicodeDecodeError, ValueError):
            ok = False
        if not ok:
            raise ResumeError(
                f"{state}: not a complete rank state (truncated or damaged); resume from an earlier tag "
                f"by writing its name into {root / LATEST}"
            )


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
        args = argparse.Namespace(
            input_folder=str(root / tag),
            output_folder=str(out),
            num_extract_workers=workers,
            num_merge_workers=workers,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=False,
        )
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
            f"ranks, or start a new run from its weights: model.init={root / tag} train.resume=none."
        )


def read_client_state(root: Path, tag: str) -> dict:
    """The counters and metadata a tag's DeepSpeed model-states file holds (read without executing pickle)."""
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (root / tag / name).is_file():
            with deepspeed_safe_load():
                state = torch.load(root / tag / name, map_location="cpu")
            return {k: v for k, v in state.items() if k not in ("module", "optimizer", "lr_scheduler")}
    raise ResumeError(f"checkpoint {root / tag}: no DeepSpeed model states file (an incomplete checkpoint?)")


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
        client_state, error = (
            None,
            (
                f"checkpoint {root / tag}: refused: a file holds more than tensors and plain "
                f"values (crafted, or not written by DeepSpeed): {str(e).splitlines()[0]}"
            ),
        )
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
        # the same slip gives every group the first group's lr (per-tower or layer-wise lrs): the scheduler's restored
        # state holds each group's own
        if engine.lr_scheduler is not None and hasattr(engine.lr_scheduler, "get_last_lr"):
            for group, lr in zip(engine.optimizer.param_groups, engine.lr_scheduler.get_last_lr()):
                group["lr"] = lr
        for state in engine.optimizer.optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()
    if client_state is None:
        raise ResumeError(f"checkpoint {root / tag}: DeepSpeed could not load it (see the messages above)")
    rank_file = root / tag / f"rank{0 if universal else comm.rank():05d}_state.json"
    rank_state = json.loads(rank_file.read_text()) if rank_file.exists() else {}
    return client_state, rank_state
