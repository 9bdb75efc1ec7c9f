#!/usr/bin/env python3
"""Seed TSV/JSONL or Chinese-CLIP LMDB -> WebDataset shards on disk or S3. See docs/to_shards.md."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run without installing

from cnclip_scale.shards.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
