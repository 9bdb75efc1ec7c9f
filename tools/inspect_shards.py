#!/usr/bin/env python
"""Counts, sha256 check, sample preview and contact sheet for shards: `cnclip inspect`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs it without installing the package

from cnclip_scale.cli.inspect import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
