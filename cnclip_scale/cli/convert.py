"""Convert Chinese-CLIP weights between formats.

    cnclip convert SRC DST --to {official,hf,native} [--model NAME]     (also: python tools/convert_checkpoint.py)

SRC's format is detected: an official Chinese-CLIP .pt ({"state_dict": ...}, keys with or without "module."),
a Hugging Face ChineseCLIPModel directory, our native .safetensors file, a DeepSpeed checkpoint dir or a training
run dir. Nothing is unpickled beyond tensors.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from cnclip_scale.cli.command import Command
from cnclip_scale.errors import UserError


@dataclass(frozen=True, kw_only=True)
class ConvertConfig:
    src: str
    dst: str
    to: str  # one of checkpoints.FORMATS
    model: str | None = None  # registry name; inferred from the weights when None
    vocab: str | None = None  # vocab.txt for an hf output dir; the official vocab when None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from cnclip_scale.checkpoints import FORMATS  # imports torch: the dispatcher builds this parser only when asked

    p.add_argument("src", help="checkpoint file or directory to read")
    p.add_argument("dst", help="file (official .pt, native .safetensors) or directory (hf) to write")
    p.add_argument("--to", required=True, choices=FORMATS, help="output format")
    p.add_argument("--model", help="registry name (e.g. ViT-B-16@RoBERTa-wwm-ext-base-chinese); inferred if omitted")
    p.add_argument("--vocab", help="vocab.txt to place in an hf output dir (default: the official vocab)")


def config_from_args(args: argparse.Namespace) -> ConvertConfig:
    return ConvertConfig(src=args.src, dst=args.dst, to=args.to, model=args.model, vocab=args.vocab)


def convert_checkpoint(cfg: ConvertConfig) -> int:
    from cnclip_scale.checkpoints import convert

    try:
        print(convert(cfg.src, cfg.dst, cfg.to, name=cfg.model, vocab_file=cfg.vocab))
    except FileNotFoundError as err:  # a --vocab or an output folder that is not there
        raise UserError(str(err)) from None
    return 0


COMMAND = Command(
    name="convert",
    error_prefix="convert_checkpoint: error",
    description=__doc__,
    add_arguments=add_arguments,
    run=lambda args: convert_checkpoint(config_from_args(args)),
)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)
