#!/usr/bin/env python
"""Seed TSV/JSONL or Chinese-CLIP LMDB -> WebDataset shards: `cnclip to-shards`. See docs/to_shards.md."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs it without installing the package

from cnclip_scale.cli.to_shards import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
