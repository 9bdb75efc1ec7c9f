#!/usr/bin/env python
"""Write the demo dataset (coloured real handwritten digits, Chinese captions) in the Chinese-CLIP seed layout.

python tools/make_demo_data.py OUT_DIR [--size 32] [--seed 0]
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnclip_scale.demo_data import build  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder for {split}_imgs.tsv, {split}_texts.jsonl, zeroshot_classes.txt")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = build(args.out, size=args.size, seed=args.seed)
    print(json.dumps(counts, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
