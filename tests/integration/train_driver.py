"""Runs several training scenarios inside ONE pair of ranks (launched once by torchrun), to keep the suite fast.

    torchrun --nproc_per_node 2 tests/integration/train_driver.py PLAN.json

PLAN: a list of {"name", "overrides": [...], "resume_from": {"dir": OUT_DIR_OF_EARLIER_SCENARIO, "step": N},
"nan_at_step": N}. Each scenario's rank 0 writes OUTPUT_DIR/result.json ({"ok": true, summary} or the error).
"""

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch.distributed as dist  # noqa: E402

from cnclip_scale.train import loop  # noqa: E402
from cnclip_scale.train import step as step_module  # noqa: E402
from cnclip_scale.train.config import load_config  # noqa: E402


def copy_checkpoint(src_dir: Path, dst_dir: Path, step: int) -> None:
    """A run directory that holds src's checkpoint of ``step`` as its latest: what a run killed after that save has."""
    tag = f"step{step:08d}"
    (dst_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(src_dir / "checkpoints" / tag, dst_dir / "checkpoints" / tag)
    (dst_dir / "checkpoints" / "latest").write_text(tag)


def nan_after(step: int):
    """Wrap the loss so that its value becomes NaN from call ``step`` on (a fault no real input can plant on CPU)."""
    original, calls = step_module.clip_loss, {"n": 0}

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= step:
            out["loss"] = out["loss"] * float("nan")
        return out

    return poisoned


def allow_software_fp16() -> None:
    """DeepSpeed refuses fp16 on a CPU without native fp16 kernels (AVX512-FP16/AMX-FP16: some of our machines lack
    them). torch still computes fp16 there, in software, and that is all the loss-scaling scenarios need."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu" and not accelerator.is_fp16_supported():
        accelerator.is_fp16_supported = lambda: True


def main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    allow_software_fp16()
    original_loss = step_module.clip_loss
    for scenario in plan:
        cfg = load_config(REPO / "configs/tiny-cpu.yaml", scenario["overrides"])
        out = Path(cfg.train.output_dir)
        if "resume_from" in scenario:  # never the first scenario: the process group exists by then
            if dist.get_rank() == 0:
                copy_checkpoint(Path(scenario["resume_from"]["dir"]), out, scenario["resume_from"]["step"])
            dist.barrier()
        step_module.clip_loss = nan_after(scenario["nan_at_step"]) if "nan_at_step" in scenario else original_loss
        try:
            result = {"ok": True, **loop.train(cfg)}
        except loop.NonFiniteLoss as e:
            result = {"ok": False, "error": str(e)}
        if dist.get_rank() == 0:
            out.mkdir(parents=True, exist_ok=True)
            (out / "result.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
