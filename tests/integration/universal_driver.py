"""Save a ZeRO checkpoint under one world size, resume it under another through a universal checkpoint.

    torchrun --nproc_per_node N universal_driver.py ROOT [--load-from SRC_ROOT]

For ZeRO stages 2 and 3 (fp32, dropout off so steps are deterministic): with ``--load-from``, convert SRC's checkpoint,
load it, take the one step SRC took after saving (same global batch, split over this job's ranks) and write the full
fp32 weights and Adam moments as ``ROOT/stageS/resumed.safetensors``; then (always) train 3 steps, save a checkpoint,
take one more step and write ``ROOT/stageS/continued.safetensors``. The test compares resumed with SRC's continued.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from cnclip_scale import comm  # noqa: E402
from cnclip_scale.model import build_model, model_config  # noqa: E402
from cnclip_scale.model.configs import TINY  # noqa: E402
from cnclip_scale.train import checkpoint as ckpt  # noqa: E402
from cnclip_scale.train import engine as eng  # noqa: E402
from cnclip_scale.train.config import load_config  # noqa: E402
from cnclip_scale.train.loss import clip_loss  # noqa: E402

GLOBAL_BATCH = 8


def global_batch(step: int, image_size: int, vocab: int):
    g = torch.Generator().manual_seed(step)
    images = torch.randn(GLOBAL_BATCH, 3, image_size, image_size, generator=g)
    ids = torch.randint(1000, vocab, (GLOBAL_BATCH, 12), generator=g)
    return images, ids, torch.ones_like(ids, dtype=torch.bool)


def train_step(engine, step: int) -> None:
    cfg = engine.module.config
    rank, world = dist.get_rank(), dist.get_world_size()
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    images, ids, mask = (t[rows] for t in global_batch(step, cfg.vision.image_size, cfg.text.vocab_size))
    img, txt, scale = engine(images, ids, mask)
    engine.backward(clip_loss(img, txt, scale)["loss"])
    engine.step()


def full_state(engine) -> dict[str, torch.Tensor]:
    """Every parameter's fp32 master and Adam moments, whole (collective: all ranks call it)."""
    if hasattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state"):
        # DeepSpeed 0.19's ZeRO-1/2 links every group's Adam state to the parameters right after stepping the first
        # group, when the later groups have none yet, and never again; relink so that all of them can be read.
        engine.optimizer._hp_optimizer_states_linked = False
        engine.optimizer._lazy_init_hp_params_optimizer_state()
    out = {}
    for name, param in engine.module.named_parameters():
        out[f"fp32/{name}"] = safe_get_full_fp32_param(param).detach().clone()
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"{key}/{name}"] = safe_get_full_optimizer_state(param, key).detach().clone()
    out["lr"] = torch.tensor(engine.get_lr())
    return out


def build(stage: int, universal: bool):
    torch.manual_seed(0)
    model = build_model(model_config(TINY))
    model.eval()  # no dropout: the step after a resume must equal the step the first run took
    cfg = load_config(
        None,
        [
            f"deepspeed.zero_stage={stage}",
            "deepspeed.precision=fp32",
            f"data.batch_size={GLOBAL_BATCH // dist.get_world_size()}",
            "optim.max_steps=100",
            "optim.warmup=2",
            "optim.lr=1e-2",
            "optim.wd=0.1",
            "optim.lr_vision=3e-3",  # per-group lrs (ZeRO-3's universal loader gives every group the first one's)
        ],
    )
    return eng.build_engine(model, cfg, max_steps=100, load_universal=universal)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--load-from")
    args = p.parse_args()
    comm.start(use_deepspeed=True)
    rank = dist.get_rank()
    for stage in (2, 3):
        out = Path(args.root) / f"stage{stage}"
        out.mkdir(parents=True, exist_ok=True)
        if args.load_from:
            root = Path(args.load_from) / f"stage{stage}" / "checkpoints"
            assert ckpt.needs_universal(root, "step00000003")
            ckpt.to_universal(root, "step00000003")
            engine = build(stage, universal=True)
            client, _ = ckpt.load(engine, root, "step00000003")
            assert client["step"] == 3
            train_step(engine, 4)
            state = full_state(engine)
            if rank == 0:
                save_file(state, str(out / "resumed.safetensors"))
        engine = build(stage, universal=False)
        for step in (1, 2, 3):
            train_step(engine, step)
        ckpt.save(engine, out, 3, {"step": 3}, {"data": {}}, keep_last=1)
        train_step(engine, 4)
        state = full_state(engine)
        if rank == 0:
            save_file(state, str(out / "continued.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
