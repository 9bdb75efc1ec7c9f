"""Launch `data_rank.py` as `world` real processes with a gloo rendezvous on loopback."""

import json
import os
import subprocess
import sys

from cnclip_scale.launch_env import free_port

RANK_SCRIPT = os.path.join(os.path.dirname(__file__), "data_rank.py")


def run_ranks(workdir, jobs: dict[str, dict], world: int = 2, timeout: float = 240, env: dict | None = None) -> dict:
    """Run the named jobs in turn in one launch; return {name: [each rank's output]} (output: batches as
    [epoch, keys], batches_per_epoch, stats; a job with `stop_after` also leaves `{workdir}/{name}.state.json`)."""
    configs = [
        {"out": os.path.join(workdir, name), "state_out": os.path.join(workdir, f"{name}.state.json"), **job}
        for name, job in jobs.items()
    ]
    jobs_file = os.path.join(workdir, f"jobs-{'-'.join(jobs)}.json")
    with open(jobs_file, "w") as f:
        json.dump(configs, f)
    base = {
        **os.environ,
        **(env or {}),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, RANK_SCRIPT, jobs_file],
            env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:  # a hang or failure must not leave ranks behind
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {r} exited {p.returncode}:\n{log[-3000:]}"
    return {
        c["out"].rsplit(os.sep, 1)[-1]: [json.load(open(f"{c['out']}.rank{r}.json")) for r in range(world)]
        for c in configs
    }
