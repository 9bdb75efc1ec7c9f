#!/usr/bin/env python
"""Convert Chinese-CLIP weights between formats.

    python tools/convert_checkpoint.py SRC DST --to {official,hf,native} [--model NAME]

SRC's format is detected: an official Chinese-CLIP .pt ({"state_dict": ...}, keys with or without "module."),
a Hugging Face ChineseCLIPModel directory, or our native .safetensors file. Nothing is unpickled beyond tensors.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnclip_scale.errors import UserError, report
from cnclip_scale.model.weights import FORMATS, convert  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="checkpoint file or directory to read")
    parser.add_argument("dst", help="file (official .pt, native .safetensors) or directory (hf) to write")
    parser.add_argument("--to", required=True, choices=FORMATS, help="output format")
    parser.add_argument("--model", help="registry name (e.g. ViT-B-16@RoBERTa-wwm-ext-base-chinese); inferred if omitted")
    parser.add_argument("--vocab", help="vocab.txt to place in an hf output dir (default: the official vocab)")
    args = parser.parse_args(argv)
    try:
        summary = convert(args.src, args.dst, args.to, name=args.model, vocab_file=args.vocab)
    except (UserError, FileNotFoundError) as e:  # WeightsError among them
        return report("convert_checkpoint: error", e)  # the prefix users and scripts already match
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
