#!/usr/bin/env python
"""Train Chinese CLIP with DeepSpeed ZeRO.

    deepspeed --hostfile H launch/pretrain.py --config configs/finetune/muge.yaml [key=value ...]
    torchrun --nproc_per_node 8 launch/pretrain.py --config ... [key=value ...]
    srun python launch/pretrain.py --config ...          (see launch/finetune.sbatch)
    python launch/pretrain.py --config configs/tiny-cpu.yaml   (one process)

Overrides are dotted config keys, e.g. optim.lr=3e-5 deepspeed.zero_stage=3 train.output_dir=runs/x.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnclip_scale.errors import UserError, report
from cnclip_scale.train.config import ConfigError, load_config  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config (see configs/)")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config fields")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        return report("pretrain: config error", e)  # every rank loads the config; rank 0 says it
    from cnclip_scale.train.loop import NonFiniteLoss, train  # heavy imports after the config is known good

    try:
        train(cfg)
    except NonFiniteLoss as e:
        print(f"pretrain: {e}", file=sys.stderr)
        return 3
    except UserError as e:  # config, data, weights, resume (and the data pipeline's own errors)
        return report("pretrain", e)
    finally:
        from cnclip_scale import comm

        comm.stop()  # avoids 'terminate called without an active exception' at exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
