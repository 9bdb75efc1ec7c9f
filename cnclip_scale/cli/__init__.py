"""`cnclip`: every command of the package behind one entry point.

    cnclip to-shards   seed TSV/JSONL or LMDB -> WebDataset shards      (tools/to_shards.py, cnclip-to-shards)
    cnclip inspect     counts, checks and a preview of written shards   (tools/inspect_shards.py)
    cnclip train       DeepSpeed ZeRO training                          (launch/pretrain.py, cnclip-train)
    cnclip evaluate    recall, zero-shot, seed outputs, report          (launch/evaluate.py, cnclip-evaluate)
    cnclip convert     official .pt / HF dir / native weights           (tools/convert_checkpoint.py, cnclip-convert)
    cnclip plot        training curves from metrics.jsonl               (tools/plot_metrics.py)
    cnclip build-index an exact/HNSW/IVF-PQ index of evaluated features (tools/build_index.py)
    cnclip export-onnx the two towers as ONNX graphs, checked with onnxruntime (tools/export_onnx.py)

Each command is a module here with ``main(argv)``; the scripts in parentheses run the same code with the same options.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cnclip_scale.cli.command import Command

DESCRIPTION = (
    "Chinese CLIP from seed data to a trained, evaluated model. `cnclip COMMAND --help` shows a command's "
    "options; each command also runs as its script (tools/*.py, launch/*.py) with the same options."
)
# subcommand -> its module here, which defines COMMAND. Imported only when needed: `launch/pretrain.py` on 64 ranks
# imports this package and should not load every other command's dependencies (torch, faiss) to run one.
MODULES = {
    "to-shards": "to_shards",
    "inspect": "inspect",
    "train": "train",
    "evaluate": "evaluate",
    "convert": "convert",
    "plot": "plot",
    "build-index": "build_index",
    "export-onnx": "export_onnx",
}


def command(name: str) -> Command:
    return importlib.import_module(f"{__name__}.{MODULES[name]}").COMMAND


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The ``cnclip`` parser. argparse runs one subcommand, so only the ``selected`` one is loaded and given its
    options; the others are names for argparse's "invalid choice" message, and summaries in ``cnclip --help``."""
    parser = argparse.ArgumentParser(prog="cnclip", description=DESCRIPTION)
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for name in MODULES:
        if name == selected:
            cmd = command(name)
            cmd.add_arguments(subparsers.add_parser(name, **cmd.parser_options()))
        else:
            subparsers.add_parser(name, help=command(name).summary if selected is None else None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the top level has no options but --help, so the first other word is the command (or a typo argparse names)
    selected = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(selected).parse_args(argv)
    return command(args.command).execute(args)
