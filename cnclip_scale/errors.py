"""The base of every user-facing error, and how a command reports one.

A ``UserError`` is something the user can fix from its message alone (a config value, a path, a file that is not
what it claims to be): the commands print ``<command>: <message>`` once and exit with code 2, no traceback. Every
rank of a job usually hits the same error (the checks run before any process group starts), so only rank 0 prints
and the others exit silently with the same code; a job's log then holds the message once, not once per rank.

This module imports nothing heavy: the commands use it before torch or DeepSpeed are loaded.
"""

from __future__ import annotations

import os
import sys

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An input or setting that cannot work; the message names it and says what would."""


def is_main_rank() -> bool:
    """Rank 0 of the job, or a process outside any job. Asked of the process group when one exists (its rank is the
    truth), else of the launcher's environment (torchrun/deepspeed: RANK; srun: SLURM_PROCID), so ranks that fail
    before the group starts agree on who speaks."""
    dist = sys.modules.get("torch.distributed")  # only if already imported: importing torch here would cost seconds
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    for name in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(name)
        if value is not None and value.strip().isdigit():
            return int(value) == 0
    return True


def report(command: str, error: BaseException | str) -> int:
    """Print ``<command>: <message>`` on rank 0 (one line: a multi-line message is joined) and return exit code 2."""
    if is_main_rank():
        message = " ".join(str(error).split("\n")).strip() or type(error).__name__
        print(f"{command}: {message}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR
