#!/usr/bin/env python
"""`cnclip evaluate` as a file, for launchers that run one: torchrun, deepspeed, srun (cnclip_scale/cli/evaluate.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs it without installing the package

from cnclip_scale.cli.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
