"""Convert Chinese-CLIP weights between formats.

    cnclip convert SRC DST --to {official,hf,native} [--model NAME]     (also: python tools/convert_checkpoint.py)
    cnclip convert [SRC] DST --vision V --text T --to native [--model NAME]   (start from pretrained towers)

SRC's format is detected: an official Chinese-CLIP .pt ({"state_dict": ...}, keys with or without "module."),
a Hugging Face ChineseCLIPModel directory, our native .safetensors file, a DeepSpeed checkpoint dir or a training
run dir. --vision: an OpenAI CLIP .pt (TorchScript or state dict), an open_clip .pt/.safetensors or a timm ViT
.safetensors; --text: a Hugging Face BERT/RoBERTa-wwm-ext dir; either replaces SRC's tower, or, without SRC, joins a
fresh --model NAME. Nothing is unpickled beyond tensors.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from cnclip_scale.cli.command import Command
from cnclip_scale.errors import UserError


@dataclass(frozen=True, kw_only=True)
class ConvertConfig:
    src: str | None
    dst: str
    to: str  # one of checkpoints.FORMATS
    model: str | None = None  # registry name; inferred from the weights when None
    vocab: str | None = None  # vocab.txt for an hf output dir; the official vocab when None
    vision: str | None = None  # a pretrained image tower (model.towers)
    text: str | None = None  # a pretrained text tower (model.towers)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from cnclip_scale.checkpoints import FORMATS  # imports torch: the dispatcher builds this parser only when asked

    p.add_argument("src", nargs="?", help="checkpoint file or directory to read (optional with --vision/--text)")
    p.add_argument("dst", help="file (official .pt, native .safetensors) or directory (hf) to write")
    p.add_argument("--to", required=True, choices=FORMATS, help="output format")
    p.add_argument("--model", help="registry name (e.g. ViT-B-16@RoBERTa-wwm-ext-base-chinese); inferred if omitted")
    p.add_argument("--vocab", help="vocab.txt to place in an hf output dir (default: --text's, else the official)")
    p.add_argument("--vision", help="image tower: OpenAI CLIP .pt, open_clip .pt/.safetensors, timm ViT .safetensors")
    p.add_argument("--text", help="text tower: a Hugging Face BERT/RoBERTa dir (config.json + weights + vocab)")


def config_from_args(args: argparse.Namespace) -> ConvertConfig:
    return ConvertConfig(
        src=args.src, dst=args.dst, to=args.to, model=args.model, vocab=args.vocab, vision=args.vision, text=args.text
    )


def convert_checkpoint(cfg: ConvertConfig) -> int:
    from cnclip_scale.checkpoints import convert

    try:
        print(convert(cfg.src, cfg.dst, cfg.to, name=cfg.model, vocab_file=cfg.vocab, vision=cfg.vision, text=cfg.text))
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
