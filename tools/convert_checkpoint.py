#!/usr/bin/env python
"""Convert Chinese-CLIP weights between formats: `cnclip convert`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs it without installing the package

from cnclip_scale.cli.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
