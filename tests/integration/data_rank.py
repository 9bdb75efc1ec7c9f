"""One rank of a real multi-process data run (launched by the test_data_* tests, torchrun-style env).

Usage: python data_rank.py JOBS.json — runs each job of the list in turn in this process group (one
start-up for several loaders). A job trains nothing but takes batches like a trainer does: an
all_reduce per batch (a rank with fewer batches would hang the others here), a gathered loader state
saved after `stop_after` batches, the keys of every batch written to `out`.
"""

import json
import sys

import torch
import torch.distributed as dist

from cnclip_scale.data.pipeline import Reading, build_train_loader
from cnclip_scale.model.tokenizer import Tokenizer
from cnclip_scale.model.transforms import ImageTransform


def run_job(cfg: dict, tokenizer: Tokenizer) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    reading = Reading(
        sources=cfg["source"],
        batch_size=cfg["batch_size"],
        workers=cfg["workers"],
        resampled=cfg["mode"] == "resampled",
        shuffle_buffer=cfg["shuffle_buffer"],
        epoch_samples=cfg.get("epoch_samples"),
    )
    loader = build_train_loader(
        reading,
        tokenizer=tokenizer,
        transform=ImageTransform(resolution=32),
        rank=rank,
        world_size=world,
        seed=cfg["seed"],
        storage_options=cfg.get("storage_options"),
    )
    if cfg.get("state_in"):
        loader.load_state_dict(json.load(open(cfg["state_in"])))
    taken, state = [], None
    for epoch in range(loader.epoch, cfg["epochs"]):
        loader.set_epoch(epoch)
        for batch in loader:
            step = torch.ones(1)
            dist.all_reduce(step)  # what a DDP/DeepSpeed step does every batch
            taken.append([epoch, batch["keys"]])
            if len(taken) == cfg.get("stop_after"):
                state = loader.state_dict(gather=True)
                break
        if state is not None:
            break
    dist.barrier()
    with open(f"{cfg['out']}.rank{rank}.json", "w") as f:
        json.dump({"batches": taken, "batches_per_epoch": loader.batches_per_epoch, "stats": loader.stats()}, f)
    if state is not None and rank == 0:
        with open(cfg["state_out"], "w") as f:
            json.dump(state, f)


def main(jobs_path: str) -> None:
    dist.init_process_group("gloo")
    tokenizer = Tokenizer()
    for job in json.load(open(jobs_path)):
        run_job(job, tokenizer)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
