#!/usr/bin/env python
"""Training curves PNG from the trainer's metrics.jsonl: `cnclip plot`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs it without installing the package

from cnclip_scale.cli.plot import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
