#!/usr/bin/env python3
"""Counts, sha256 check, sample preview and contact sheet for shards written by to_shards.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run without installing

from cnclip_scale.shards.inspect import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
