"""A real Slurm cluster on loopback for tests: Debian's slurm-wlm + munge, daemons started by hand.

    reason = install_slurm()                      # None when usable (installs with apt as root if missing)
    cluster = SlurmCluster(workdir, nodes=2, cpus=2).start()
    cluster.run(["sbatch", "--wait", ...])        # clients find this cluster through SLURM_CONF in cluster.env()
    cluster.stop()                                # cancels jobs, then stops every daemon it started, by pid

N emulated nodes (node1..nodeN) share this machine: one slurmd per node (Debian builds multiple-slurmd), each on
its own port, all with NodeAddr=127.0.0.1 while the node names themselves do not resolve, as on clusters whose
node names are not in DNS. munged gets a private key and socket, so a system munged (if any) is left alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers.ports import free_port_block

DAEMONS = ("munged", "slurmctld", "slurmd")
PACKAGES = ("slurm-wlm", "munge")


def _sbin(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def install_slurm() -> str | None:
    """Make the daemons available; returns why this machine cannot run Slurm, or None when it can."""
    if all(_sbin(d) for d in DAEMONS) and shutil.which("sbatch"):
        return None
    if os.geteuid() != 0:
        return "slurm-wlm/munge are not installed and installing them needs root"
    if not shutil.which("apt-get"):
        return "slurm-wlm/munge are not installed and there is no apt-get to install them"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        check=True,
        env=env,
        capture_output=True,
    )
    return None


class SlurmCluster:
    def __init__(self, workdir: str | Path, nodes: int = 2, cpus: int = 2):
        self.dir = Path(workdir)
        self.nodes = [f"node{i}" for i in range(1, nodes + 1)]
        self.cpus = cpus
        self.conf = self.dir / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        # munged insists every directory above its socket is world-executable; pytest's tmp dirs are 0700.
        self.munge_dir = Path(tempfile.mkdtemp(prefix="cnclip-munge-"))

    def env(self, **extra) -> dict:
        env = dict(os.environ, SLURM_CONF=str(self.conf))
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def run(self, cmd: list[str], env: dict | None = None, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run(cmd, env=env or self.env(), capture_output=True, text=True, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} -> {result.returncode}: {result.stdout}{result.stderr}")
        return result

    def _write_conf(self) -> None:
        ctld_port = free_port_block(1, low=20000, high=26000)  # below the ephemeral ports rendezvous picks
        node_port = free_port_block(len(self.nodes), low=26000, high=32000)  # apart from slurmctld's
        last = len(self.nodes)
        d = self.dir
        lines = [
            "ClusterName=cnclip-test",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={ctld_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_dir / 'munge.sock'}",
            "ProctrackType=proctrack/linuxproc",  # no cgroups in containers; tracks job processes by parentage
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SlurmdParameters=config_overrides",  # trust CPUs= below, not the cores this machine really has
            "ReturnToService=2",
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",  # bind loopback only
            "MailProg=/bin/true",
            "MpiDefault=none",
            "KillWait=5",  # scancel: SIGTERM, then SIGKILL after 5 s (default 30)
            # `sbatch --wait` polls every 2 s only while that is under MinJobAge/2 (else 8 s, then 32 s): finished
            # jobs are forgotten after 4 s, so tests read results from logs and files (there is no sacct here).
            "MinJobAge=4",
            f"StateSaveLocation={d / 'ctld'}",
            f"SlurmdSpoolDir={d / 'spool-%n'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={d / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'slurmd-%n.log'}",
            f"NodeName=node[1-{last}] NodeHostname=localhost NodeAddr=127.0.0.1 "
            f"Port=[{node_port}-{node_port + last - 1}] CPUs={self.cpus} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        (d / "ctld").mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, cmd: list[str], log: str) -> None:
        out = open(self.dir / log, "ab")
        self.procs.append(
            subprocess.Popen(cmd, env=self.env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        )
        out.close()

    def start(self, timeout: float = 60) -> SlurmCluster:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.munge_dir.chmod(0o755)
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        m = self.munge_dir
        self._spawn(
            [
                _sbin("munged"),
                "-F",
                f"--key-file={key}",
                f"--socket={m / 'munge.sock'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--seed-file={m / 'munged.seed'}",
                f"--log-file={m / 'munged.log'}",
            ],
            "munged.out",
        )
        self.wait_for(lambda: (m / "munge.sock").exists(), 20, "munged socket")
        self._write_conf()
        self._spawn([_sbin("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
        for node in self.nodes:
            self._spawn([_sbin("slurmd"), "-D", "-f", str(self.conf), "-N", node], f"slurmd-{node}.out")
        self.wait_for(self.all_idle, timeout, "idle nodes")
        return self

    def all_idle(self) -> bool:
        r = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False, timeout=30)
        states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
        return r.returncode == 0 and all(states.get(n) == "idle" for n in self.nodes)

    def wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead} exited while waiting for {what}; logs in {self.dir}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"no {what} within {timeout}s; logs in {self.dir}\n{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        parts = [f"== {p.name}\n{p.read_text(errors='replace')[-tail:]}" for p in sorted(self.dir.glob("*.log"))]
        return "\n".join(parts)

    def job(self, job_id: str) -> dict:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, ...); {} once Slurm forgot it (MinJobAge)."""
        r = self.run(["scontrol", "show", "job", "-o", str(job_id)], check=False, timeout=30)
        return dict(f.split("=", 1) for f in r.stdout.split() if "=" in f) if r.returncode == 0 else {}

    def stop(self, grace: float = 10) -> None:
        """Cancel all jobs (their processes are not children of slurmd once running), then the daemons, by pid."""
        try:
            if any(p.poll() is None for p in self.procs[1:]):
                self.run(["scancel", "--full", "--user", "root"], check=False, timeout=30)
                deadline = time.time() + 30
                while time.time() < deadline and self.run(["squeue", "-h"], check=False, timeout=30).stdout.strip():
                    time.sleep(0.5)
        finally:
            for p in reversed(self.procs):  # slurmd, slurmctld, then munged which they authenticate with
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(grace)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
            shutil.rmtree(self.munge_dir, ignore_errors=True)
