#!/usr/bin/env python
"""Feature files -> a searchable index (exact, HNSW or IVF-PQ by size and memory budget): `cnclip build-index`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs it without installing the package

from cnclip_scale.cli.build_index import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
