"""Where the run stands: the counters a checkpoint stores and a resume continues from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)
class TrainState:
    step: int = 0  # optimizer steps taken
    epoch: int = 0  # the epoch being read (0-based)
    epoch_batches: int = 0  # batches of it taken on each rank
    # Samples of it taken by all ranks together: a resume under another world size changes the global batch
    # mid-epoch, so the epoch's progress is counted in samples, not batches.
    epoch_samples: int = 0
    last_saved: int = 0  # the step of the newest checkpoint (not stored: it is the step a resume starts from)

    def advance(self, global_batch: int) -> None:
        self.step += 1
        self.epoch_batches += 1
        self.epoch_samples += global_batch

    def next_epoch(self) -> None:
        self.epoch += 1
        self.epoch_batches = self.epoch_samples = 0

    def to_client_state(self) -> dict:
        """The counters as DeepSpeed's ``client_state`` holds them (keys unchanged since the first checkpoints)."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "epoch_batches": self.epoch_batches,
            "epoch_samples": self.epoch_samples,
        }

    @classmethod
    def from_client_state(cls, client: dict, global_batch: int) -> TrainState:
        """``global_batch``: this run's, for checkpoints written before ``epoch_samples`` was stored."""
        step, batches = int(client["step"]), int(client["epoch_batches"])
        return cls(
            step=step,
            epoch=int(client["epoch"]),
            epoch_batches=batches,
            epoch_samples=int(client.get("epoch_samples", batches * global_batch)),
            last_saved=step,
        )
