#!/usr/bin/env python
"""A checkpoint -> image and text ONNX graphs (fp32, fp16), checked with onnxruntime: `cnclip export-onnx`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout runs it without installing the package

from cnclip_scale.cli.export_onnx import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
