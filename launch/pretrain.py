#!/usr/bin/env python
"""`cnclip train` as a file, for launchers that run one: deepspeed, torchrun, srun (cnclip_scale/cli/train.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs it without installing the package

from cnclip_scale.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
