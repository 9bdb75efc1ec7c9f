"""Export the image and text towers of a checkpoint as ONNX graphs (fp32 and fp16, dynamic batch and text length),
each checked with onnxruntime against the PyTorch model on real photos and Chinese captions.

    cnclip export-onnx runs/muge/model.safetensors export/muge
    python tools/export_onnx.py official/clip_cn_vit-b-16.pt export/vit-b-16 --precision fp32

Writes image_{fp32,fp16}.onnx, text_{fp32,fp16}.onnx, vocab.txt and onnx_export.json (input/output names, shapes,
preprocessing). Exit code 2 for a checkpoint or option to fix, or a graph that fails its check (one line).
"""

from __future__ import annotations

import argparse

from cnclip_scale.cli.command import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="any checkpoint load_model reads (native, official .pt, HF dir, run dir)")
    p.add_argument("out", help="directory to write the graphs and onnx_export.json into")
    p.add_argument("--precision", choices=("fp32", "fp16", "both"), default="both")
    p.add_argument("--name", help="model registry name, when the checkpoint does not say")
    p.add_argument("--vocab", help="vocab.txt (default: the checkpoint dir's, else Chinese-CLIP's)")


def export_onnx_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnclip_scale.checkpoints import load_model
    from cnclip_scale.export.onnx import export_towers
    from cnclip_scale.model.tokenizer import Tokenizer

    model = load_model(args.checkpoint, args.name)
    checkpoint_dir = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent
    tokenizer = Tokenizer(args.vocab) if args.vocab else Tokenizer.for_model_dir(checkpoint_dir)
    precisions = ("fp32", "fp16") if args.precision == "both" else (args.precision,)
    export_towers(model, args.out, tokenizer=tokenizer, precisions=precisions, source=args.checkpoint)
    print(f"wrote {args.out}")
    return 0


COMMAND = Command(
    name="export-onnx",
    error_prefix="export_onnx",
    description=__doc__,
    add_arguments=add_arguments,
    run=export_onnx_command,
)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)
