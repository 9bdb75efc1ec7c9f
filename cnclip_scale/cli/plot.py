"""Training curves from the trainer's metrics.jsonl → one PNG: loss, learning rate, in-batch accuracy, recall.

    cnclip plot runs/x/metrics.jsonl -o runs/x/curves.png      (also: python tools/plot_metrics.py ...)

A resumed run's repeated steps count once (the last record); a torn last line is skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from cnclip_scale.cli.command import Command
from cnclip_scale.errors import UserError

EXIT_NOTHING_TO_PLOT = 1


@dataclass(frozen=True, kw_only=True)
class PlotConfig:
    metrics: str  # metrics.jsonl
    output: str  # PNG path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("metrics", help="metrics.jsonl written by launch/pretrain.py")
    p.add_argument("-o", "--output", help="PNG path (default: next to the metrics file, curves.png)")


def config_from_args(args: argparse.Namespace) -> PlotConfig:
    default_output = os.path.join(os.path.dirname(args.metrics), "curves.png")
    return PlotConfig(metrics=args.metrics, output=args.output or default_output)


def plot_curves(cfg: PlotConfig) -> int:
    from cnclip_scale.train.plots import NothingToPlot, plot, read  # matplotlib only for this command

    try:
        metrics = read(cfg.metrics)
    except OSError as err:  # no such file, a folder, no permission
        raise UserError(f"{cfg.metrics}: cannot read it ({err.strerror or err})") from None
    try:
        titles = plot(metrics, cfg.output)
    except NothingToPlot as err:  # nothing logged yet, rather than a wrong input: exit 1, as it always was
        print(f"plot_metrics: {cfg.metrics}: {err}", file=sys.stderr)
        return EXIT_NOTHING_TO_PLOT
    print(f"wrote {cfg.output} ({', '.join(titles)})")
    return 0


COMMAND = Command(
    name="plot",
    error_prefix="plot_metrics: error",
    description=__doc__,
    add_arguments=add_arguments,
    run=lambda args: plot_curves(config_from_args(args)),
)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)
