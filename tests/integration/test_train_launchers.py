"""launch/pretrain.py under each launcher users have (2 CPU ranks, gloo), and kill -9 + resume."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cnclip_scale.launch_env import free_port
from tests.helpers.train_runs import REPO, make_tiny_shards, read_keys, read_metrics, train_env

pytestmark = pytest.mark.integration
DEEPSPEED = str(Path(os.sys.executable).parent / "deepspeed")
PRETRAIN = str(REPO / "launch/pretrain.py")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("launch"), {"train": 64})


def overrides(shards, out, steps=3, *extra):
    return [
        "--config",
        str(REPO / "configs/tiny-cpu.yaml"),
        f"data.train=[{shards}/train]",
        f"train.output_dir={out}",
        "data.batch_size=8",
        f"optim.max_steps={steps}",
        "train.log_every=1",
        *extra,
    ]


def run(cmd, **kwargs):
    result = subprocess.run(cmd, env=train_env(), capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout + result.stderr


def assert_two_ranks_trained(log: str, out: Path, steps: int = 3):
    assert "Rank 0 | launcher=" in log and "Rank 1 | launcher=" in log and "world_size=2" in log
    assert [m["step"] for m in read_metrics(out)] == list(range(1, steps + 1))
    assert (out / "model.safetensors").exists()


@pytest.fixture(scope="module")
def hostfile_run(shards, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostfile")
    hostfile = tmp / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    log = run(
        [
            DEEPSPEED,
            "--hostfile",
            str(hostfile),
            "--no_ssh_check",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            PRETRAIN,
            *overrides(shards, tmp / "out", 3, "train.record_keys=true"),
        ]
    )
    return log, tmp / "out"


def test_deepspeed_hostfile_localhost_two_slots(hostfile_run):
    log, out = hostfile_run
    assert_two_ranks_trained(log, out)


def test_resume_on_another_world_size_continues_the_epoch(shards, hostfile_run, tmp_path):
    """2 ranks wrote step 3 (48 of the epoch's 64 samples); one process resumes through a universal checkpoint,
    takes exactly the 16 samples no rank had taken, then starts the next epoch."""
    _, first = hostfile_run
    out = tmp_path / "out"
    shutil.copytree(first, out)
    log = run([os.sys.executable, PRETRAIN, *overrides(shards, out, 6, "train.record_keys=true")])
    tag = out / "checkpoints" / "step00000003"
    assert f"checkpoint {tag} was written by 2 ranks; converting it to a universal checkpoint for 1" in log
    assert f"resumed from {tag} at step 3" in log
    assert (out / "checkpoints" / "universal" / "step00000003" / "complete").exists()
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert [m["global_batch_size"] for m in metrics] == [16, 16, 16, 8, 8, 8]
    assert [m["epoch_samples"] for m in metrics] == [16, 32, 48, 56, 64, 8]
    assert all(m["loss"] == m["loss"] for m in metrics)  # finite
    before = [k for rank in (0, 1) for step, keys in read_keys(first, rank).items() for k in keys]
    after = read_keys(out, 0)
    assert len(before) == len(set(before)) == 48
    rest = after[4] + after[5]
    assert len(rest) == len(set(rest)) == 16 and not set(rest) & set(before)
    assert len(after[6]) == 8 and set(after[6]) <= set(before) | set(rest)


def test_deepspeed_two_emulated_nodes(shards, tmp_path):
    """Two 'nodes' from one hostfile, each started with --no_ssh --node_rank as a real multi-node job does."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node1 slots=1\nnode2 slots=1\n")
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [
                DEEPSPEED,
                "--hostfile",
                str(hostfile),
                "--no_ssh",
                "--node_rank",
                str(node),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                port,
                PRETRAIN,
                *overrides(shards, tmp_path / "out"),
            ],
            env=train_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)[-4000:]
    assert "Rank 1 | launcher=" in logs[1]
    assert_two_ranks_trained(logs[0] + logs[1], tmp_path / "out")


def test_single_process_without_launcher(shards, tmp_path):
    log = run([os.sys.executable, PRETRAIN, *overrides(shards, tmp_path / "out", 2)])
    assert "launcher=single world_size=1" in log
    assert [m["step"] for m in read_metrics(tmp_path / "out")] == [1, 2]


def test_too_little_data_for_one_global_batch_is_one_line(shards, tmp_path):
    result = subprocess.run(
        [os.sys.executable, PRETRAIN, *overrides(shards, tmp_path / "out", 2), "data.batch_size=128"],
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2
    assert "pretrain: data.train: 64 samples give no batch to each of 1 ranks (batch size 128" in result.stderr
    assert "Traceback" not in result.stderr


def _wait_for_checkpoint(out: Path, proc, at_least: int, timeout: float = 300) -> None:
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if latest.exists() and int(latest.read_text().strip().removeprefix("step")) >= at_least:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before checkpoint {at_least}")
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint {at_least} within {timeout}s")


def test_kill_9_then_resume_continues_the_same_run(shards, tmp_path):
    steps = 12
    args = ["train.save_every=4", "train.record_keys=true", "optim.lr=2e-3"]
    reference = tmp_path / "reference"
    run(
        [
            DEEPSPEED,
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            PRETRAIN,
            *overrides(shards, reference, steps, *args),
        ]
    )

    out = tmp_path / "killed"
    cmd = [
        DEEPSPEED,
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        PRETRAIN,
        *overrides(shards, out, steps, *args),
    ]
    proc = subprocess.Popen(
        cmd, env=train_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_for_checkpoint(out, proc, at_least=4)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, mid-run
        proc.wait()
    killed_at = int((out / "checkpoints" / "latest").read_text().removeprefix("step"))
    assert killed_at < steps, "the run finished before it could be killed"
    cmd[cmd.index("--master_port") + 1] = str(free_port())
    log = run(cmd)
    assert f"resumed from {out / 'checkpoints' / f'step{killed_at:08d}'} at step {killed_at}" in log

    expected = {m["step"]: m["loss"] for m in read_metrics(reference)}
    got = read_metrics(out)  # steps logged before the kill and again after the resume: all must match
    assert {m["step"] for m in got} == set(range(1, steps + 1))
    for m in got:
        assert m["loss"] == pytest.approx(expected[m["step"]], abs=1e-6), m["step"]
    for rank in (0, 1):
        reference_keys = read_keys(reference, rank)
        for line in (out / f"keys_rank{rank}.jsonl").read_text().splitlines():
            record = json.loads(line)
            assert record["keys"] == reference_keys[record["step"]], (rank, record["step"])


def test_two_rank_evaluation_of_a_deepspeed_checkpoint_equals_the_export(shards, hostfile_run, tmp_path):
    """A DeepSpeed checkpoint dir is assembled into fp32 by rank 0 alone and broadcast; the recall equals that of
    the run's fp32 export evaluated in one process (the same weights)."""
    _, run_dir = hostfile_run
    evaluate = str(REPO / "launch/evaluate.py")
    common = [
        "--data",
        f"{shards}/train",
        "--split",
        "train",
        "--workers",
        "1",
        "--context-length",
        "32",
        "--no-report",
    ]
    run(
        [
            os.sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            evaluate,
            "--checkpoint",
            str(run_dir / "checkpoints"),
            "--output",
            str(tmp_path / "two"),
            *common,
        ]
    )
    run(
        [
            os.sys.executable,
            evaluate,
            "--checkpoint",
            str(run_dir / "model.safetensors"),
            "--output",
            str(tmp_path / "one"),
            *common,
        ]
    )
    two, one = (json.loads((tmp_path / name / "summary.json").read_text()) for name in ("two", "one"))
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert (two["t2i"], two["i2t"]) == (one["t2i"], one["i2t"])
    for name in ("train_predictions.jsonl", "train_tr_predictions.jsonl"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
