"""Free loopback ports for the servers tests start (SeaweedFS, Slurm, rendezvous)."""

from __future__ import annotations

import random
import socket


def port_free(port: int) -> bool:
    """Whether `port` can be bound on 127.0.0.1 right now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(
    count: int, also_offset: int = 0, low: int = 20000, high: int = 29000, rng: random.Random | None = None
) -> int:
    """A base port P with P..P+count-1 free (and P+also_offset.. too when `also_offset` is set:
    SeaweedFS opens every port + 10000 for gRPC)."""
    rng = rng or random.Random()
    for _ in range(200):
        base = rng.randrange(low, high, 10)
        ports = [base + k for k in range(count)]
        if all(port_free(p) and (not also_offset or port_free(p + also_offset)) for p in ports):
            return base
    raise RuntimeError(f"no block of {count} free ports on 127.0.0.1")
