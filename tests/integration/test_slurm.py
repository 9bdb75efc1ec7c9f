"""launch/finetune.sbatch and launch/pretrain.sbatch on a real Slurm (slurm-wlm + munge) started on loopback.

Two emulated nodes whose names do not resolve; jobs are CPU ranks (gloo). The deepspeed hostfile launcher (one host
with two slots, two hosts via --no_ssh --node_rank) is proven in test_train_launchers.py.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnclip_scale.checkpoints import load_model
from cnclip_scale.model import build_model, model_config
from cnclip_scale.model.configs import TINY
from cnclip_scale.model.weights import write_checkpoint
from tests.helpers.slurm import SlurmCluster, install_slurm
from tests.helpers.train_runs import REPO, make_tiny_shards, read_metrics, train_env

pytestmark = pytest.mark.integration

# A finetune config shaped like configs/finetune/*.yaml: every path under ${DATAPATH}, init = official weights.
FINETUNE_YAML = f"""\
model:
  name: {TINY}
  context_length: 32
  init: "${{DATAPATH}}/pretrained_weights/clip_cn_tiny.pt"
data:
  train: ["${{DATAPATH}}/datasets/tiny/shards/train"]
  batch_size: 8
  workers: 1
optim:
  lr: 1.0e-4
  warmup: 1
  max_steps: 3
deepspeed:
  zero_stage: 2
  precision: fp32
train:
  output_dir: "${{DATAPATH}}/experiments/finetune"
  save_every: 3
  log_every: 1
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        reason = install_slurm()
    except subprocess.CalledProcessError as e:  # apt without network, a broken mirror
        reason = f"installing slurm-wlm/munge failed: {e.stderr[-500:] if e.stderr else e}"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests: {reason}")
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), nodes=2, cpus=2).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def datapath(tmp_path_factory):
    root = tmp_path_factory.mktemp("datapath")
    make_tiny_shards(root / "datasets" / "tiny", {"train": 64})
    torch.manual_seed(0)
    model = build_model(model_config(TINY))
    (root / "pretrained_weights").mkdir()
    write_checkpoint(model.state_dict(), model.config, root / "pretrained_weights" / "clip_cn_tiny.pt", "official")
    (root / "finetune-tiny.yaml").write_text(FINETUNE_YAML)
    return root


def submit(slurm, script, log, flags, overrides, wait=True, **env):
    """sbatch from the repository root as users do; returns (returncode, job id)."""
    cmd = [
        "sbatch",
        "--parsable",
        *(["--wait"] if wait else []),
        f"--output={log}",
        "--gpus-per-node=0",
        "--time=10",
        *flags,
        str(REPO / "launch" / script),
        *overrides,
    ]
    env = train_env(SLURM_CONF=slurm.conf, PYTHON=sys.executable, **env)
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert result.stdout.strip(), result.stderr
    return result.returncode, result.stdout.split(";")[0].strip()


def finetune(slurm, datapath, tmp_path, flags, **env):
    out, log = tmp_path / "out", tmp_path / "job.log"
    rc, _ = submit(
        slurm,
        "finetune.sbatch",
        log,
        flags,
        [f"train.output_dir={out}"],
        CONFIG=datapath / "finetune-tiny.yaml",
        DATAPATH=datapath,
        **env,
    )
    text = log.read_text()
    assert rc == 0, text[-4000:]
    assert "Rank 0 | launcher=srun world_size=2" in text and "Rank 1 | launcher=srun world_size=2" in text, text[-4000:]
    assert f"initialised from {datapath}/pretrained_weights/clip_cn_tiny.pt (official format)" in text
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3]
    assert_finetuned_from(load_model(out / "checkpoints"), datapath)
    return text


def assert_finetuned_from(trained, datapath):
    """The DeepSpeed checkpoint loads, and its weights moved a little away from the pretrained ones (not re-inited)."""
    init = load_model(datapath / "pretrained_weights" / "clip_cn_tiny.pt").state_dict()
    got = trained.state_dict()
    assert got.keys() == init.keys()
    moved = [(got[k].float() - init[k].float()).abs().max().item() for k in init if init[k].is_floating_point()]
    assert 0 < max(moved) < 0.05, max(moved)


def test_one_node_two_cpu_ranks(slurm, datapath, tmp_path):
    # One task with both CPUs; CPU_RANKS=2 splits the node into two ranks as on a CPU-only cluster.
    text = finetune(slurm, datapath, tmp_path, ["--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=2"], CPU_RANKS=2)
    assert "1 node(s) x 2 rank(s) on node1, 1 CPU(s) each" in text


def test_two_nodes_one_rank_each(slurm, datapath, tmp_path):
    with pytest.raises(OSError):
        socket.gethostbyname("node1")  # so the master address must come from the node's NodeAddr
    text = finetune(slurm, datapath, tmp_path, ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1"])
    assert "2 node(s) x 1 rank(s) on node[1-2]," in text and "master 127.0.0.1:" in text


def test_job_fails_with_the_ranks_exit_code(slurm, datapath, tmp_path):
    """sbatch --wait reports failures: a config using ${DATAPATH} without it, and a bad override on every rank."""
    flags, config = ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1"], datapath / "finetune-tiny.yaml"
    rc, _ = submit(slurm, "finetune.sbatch", tmp_path / "a.log", flags, [], CONFIG=config, DATAPATH="")
    assert rc == 2 and "export DATAPATH=" in (tmp_path / "a.log").read_text()
    rc, _ = submit(
        slurm, "finetune.sbatch", tmp_path / "b.log", flags, ["optim.no_such_key=1"], CONFIG=config, DATAPATH=datapath
    )
    # The first rank to exit with 2 ends the step (--kill-on-bad-exit); a slower one may be terminated first (143).
    assert rc in (2, 143) and "pretrain: config error" in (tmp_path / "b.log").read_text()


def _latest_step(out: Path) -> int:
    latest = out / "checkpoints" / "latest"
    return int(latest.read_text().strip().removeprefix("step")) if latest.exists() else 0


def _wait(slurm, job, log, done, what, timeout=240):
    """Poll until done(job record) while the job is alive; the job's log on failure."""
    deadline = time.time() + timeout
    while not done(record := slurm.job(job)):
        state = record.get("JobState")
        alive = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED")
        assert state in alive, (what, state, log.read_text()[-3000:])
        assert time.time() < deadline, (f"no {what} within {timeout}s", log.read_text()[-3000:])
        time.sleep(0.2)


def _resumed(out: Path, step: int) -> str:
    return f"resumed from {out / 'checkpoints' / f'step{step:08d}'} at step {step}"


def test_requeued_then_cancelled_pretrain_job_resumes(slurm, datapath, tmp_path):
    """--requeue: a requeued job continues by itself; a cancelled one continues when submitted again."""
    steps, out, log = 16, tmp_path / "out", tmp_path / "first.log"
    overrides = [
        f"data.train=[{datapath}/datasets/tiny/shards/train]",
        f"train.output_dir={out}",
        "data.batch_size=8",
        f"optim.max_steps={steps}",
        "train.save_every=2",
        "train.log_every=1",
    ]
    flags = ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1"]
    env = {"CONFIG": REPO / "configs/tiny-cpu.yaml"}  # pretraining from scratch: no model.init
    _, job = submit(slurm, "pretrain.sbatch", log, flags, overrides, wait=False, **env)
    _wait(slurm, job, log, lambda r: _latest_step(out) >= 2, "first checkpoint")

    # What a preemption or node failure does. Slurm holds a requeued job for ~2 min; release it now.
    slurm.run(["scontrol", "requeue", job])
    _wait(slurm, job, log, lambda r: r.get("JobState") == "PENDING", "requeue")
    requeued_at = _latest_step(out)
    # Release it only once its nodes are idle and the requeue's second has passed: slurmd revokes the old
    # allocation's credential with one-second resolution, and a restart within that second is killed
    # ("Killing non-startable batch JobId=N: Job credential revoked"), which a real preemption never hits.
    requeue_second = int(time.time())
    slurm.wait_for(slurm.all_idle, 60, "idle nodes after the requeue")
    while int(time.time()) <= requeue_second + 1:
        time.sleep(0.1)
    slurm.run(["scontrol", "update", f"JobId={job}", "StartTime=now"])
    _wait(slurm, job, log, lambda r: _latest_step(out) > requeued_at, "checkpoint after the requeue")
    assert slurm.job(job)["Restarts"] == "1"
    assert "restart 1:" in log.read_text() and _resumed(out, requeued_at) in log.read_text()

    slurm.run(["scancel", job])
    _wait(slurm, job, log, lambda r: r.get("JobState") in ("CANCELLED", None), "cancellation")
    cancelled_at = _latest_step(out)
    assert requeued_at < cancelled_at < steps, "the job finished before it could be cancelled"

    rc, _ = submit(slurm, "pretrain.sbatch", tmp_path / "second.log", flags, overrides, **env)
    text = (tmp_path / "second.log").read_text()
    assert rc == 0, text[-4000:]
    assert _resumed(out, cancelled_at) in text
    assert {m["step"] for m in read_metrics(out)} == set(range(1, steps + 1))
    assert _latest_step(out) == steps and (out / "model.safetensors").exists()


def test_evaluate_sbatch_on_two_nodes(slurm, datapath, tmp_path):
    """launch/evaluate.sbatch shares the training scripts' rendezvous (launch/rendezvous.sh): 2 nodes × 1 rank."""
    out, log = tmp_path / "eval", tmp_path / "eval.log"
    args = [
        "--checkpoint",
        str(datapath / "pretrained_weights" / "clip_cn_tiny.pt"),
        "--data",
        str(datapath / "datasets" / "tiny" / "shards" / "train"),
        "--split",
        "train",
        "--output",
        str(out),
        "--workers",
        "1",
        "--context-length",
        "32",
        "--no-report",
    ]
    rc, _ = submit(slurm, "evaluate.sbatch", log, ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1"], args)
    assert rc == 0, log.read_text()[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["world_size"], summary["launcher"], summary["images"]) == (2, "srun", 64)
