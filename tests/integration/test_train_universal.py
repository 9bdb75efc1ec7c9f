"""Resuming under another world size: DeepSpeed's universal checkpoint re-partitions the ZeRO states exactly.

1 rank saves → 2 ranks resume → 2 ranks save → 1 rank resumes. After the resume, the step the saving run took next,
on the same global batch, must give the same fp32 weights and Adam moments as it gave there (ZeRO-2 and ZeRO-3).
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cnclip_scale.launch_env import free_port
from tests.helpers.train_runs import train_env

pytestmark = pytest.mark.integration
DRIVER = str(Path(__file__).parent / "universal_driver.py")


def launch(ranks: int, root: Path, load_from: Path | None = None) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(ranks),
        "--master_port",
        str(free_port()),
        DRIVER,
        str(root),
    ] + (["--load-from", str(load_from)] if load_from else [])
    result = subprocess.run(cmd, env=train_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("universal")
    launch(1, root / "one")
    launch(2, root / "two", load_from=root / "one")
    launch(1, root / "back", load_from=root / "two")
    return root


def assert_same_state(resumed: dict, continued: dict) -> None:
    assert resumed.keys() == continued.keys()
    for key in resumed:
        torch.testing.assert_close(resumed[key], continued[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("direction", ["1->2", "2->1"])
def test_universal_resume_continues_the_same_optimisation(runs, stage, direction):
    source, resumer = {"1->2": ("one", "two"), "2->1": ("two", "back")}[direction]
    resumed = load_file(str(runs / resumer / f"stage{stage}" / "resumed.safetensors"))
    continued = load_file(str(runs / source / f"stage{stage}" / "continued.safetensors"))
    assert any(k.startswith("exp_avg_sq/") for k in resumed)
    assert_same_state(resumed, continued)
