"""Train Chinese CLIP with DeepSpeed ZeRO.

    deepspeed --hostfile H launch/pretrain.py --config configs/finetune/muge.yaml [key=value ...]
    torchrun --nproc_per_node 8 launch/pretrain.py --config ... [key=value ...]
    srun python launch/pretrain.py --config ...          (see launch/finetune.sbatch)
    cnclip train --config configs/tiny-cpu.yaml           (one process; also python launch/pretrain.py)

Overrides are dotted config keys, e.g. optim.lr=3e-5 deepspeed.zero_stage=3 train.output_dir=runs/x.
Exit codes: 2 for a setting, path or file to fix (one line from rank 0), 3 for a loss that stopped being finite.
"""

from __future__ import annotations

import argparse
import sys

from cnclip_scale.cli.command import Command
from cnclip_scale.train.config import ConfigError, RunConfig, load_config

EXIT_NON_FINITE_LOSS = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config (see configs/)")
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    p.add_argument("overrides", nargs="*", help="key=value overrides of config fields")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as err:  # every rank loads the config; the policy lets rank 0 say it
        raise ConfigError(f"config error: {err}") from None


def run_training(cfg: RunConfig) -> int:
    from cnclip_scale import comm
    from cnclip_scale.train.loop import NonFiniteLoss, train  # torch and DeepSpeed once the config is known good

    try:
        train(cfg)
    except NonFiniteLoss as err:  # a diverged run, not an input to fix: its own exit code
        print(f"pretrain: {err}", file=sys.stderr)
        return EXIT_NON_FINITE_LOSS
    finally:
        comm.stop()  # avoids 'terminate called without an active exception' at exit
    return 0


COMMAND = Command(
    name="train",
    error_prefix="pretrain",
    description=__doc__,
    add_arguments=add_arguments,
    run=lambda args: run_training(config_from_args(args)),
)


def main(argv: list[str] | None = None) -> int:
    return COMMAND.main(argv)
