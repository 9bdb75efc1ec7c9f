"""Helpers for tests that run the real trainer: tiny shards from real photos, launch commands, reading results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.seed_data import write_seed_dataset

REPO = Path(__file__).resolve().parents[2]


def make_tiny_shards(
    root: str | Path, sizes: dict[str, int] | None = None, samples_per_shard: int = 23, image_size: int | None = None
) -> Path:
    """Seed-layout data (real bundled photos, Chinese captions) converted by tools/to_shards.py; returns the dst.
    ``image_size``: the photos' side in pixels (default: the small size the CPU suite's tiny towers use)."""
    root = Path(root)
    sizes = sizes or {"train": 64, "valid": 24}
    write_seed_dataset(str(root / "seed"), sizes, **({"size": image_size} if image_size else {}))
    subprocess.run(
        [
            sys.executable,
            str(REPO / "tools/to_shards.py"),
            "--src",
            str(root / "seed"),
            "--dst",
            str(root / "shards"),
            "--splits",
            ",".join(sizes),
            "--samples-per-shard",
            str(samples_per_shard),
            "--no-progress",
        ],
        check=True,
        capture_output=True,
    )
    return root / "shards"


def train_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def read_metrics(output_dir: str | Path, kind: str = "train") -> list[dict]:
    path = Path(output_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


def read_keys(output_dir: str | Path, rank: int) -> dict[int, list[str]]:
    path = Path(output_dir) / f"keys_rank{rank}.jsonl"
    return {r["step"]: r["keys"] for r in map(json.loads, path.read_text().splitlines())}


def run_train_plan(root: Path, plan: list[dict], timeout: int = 840) -> None:
    """Every scenario of ``plan`` ({"name", "overrides"}, ...) in one 2-rank torchrun launch of
    tests/integration/train_driver.py, so a test module pays the start-up once; its output goes to root/driver.log."""
    from cnclip_scale.launch_env import free_port

    (root / "plan.json").write_text(json.dumps(plan))
    driver = REPO / "tests" / "integration" / "train_driver.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    result = subprocess.run(
        [*cmd, str(driver), str(root / "plan.json")], env=train_env(), capture_output=True, text=True, timeout=timeout
    )
    (root / "driver.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, result.stderr[-4000:]
