"""Load DeepSpeed checkpoints without executing pickle.

DeepSpeed's checkpoint engine calls ``torch.load(..., weights_only=False)``. Inside ``deepspeed_safe_load()`` every
``torch.load`` runs with ``weights_only=True`` and an allowlist of the few plain classes DeepSpeed writes into its
files (enums and config records, no callables), so a crafted checkpoint cannot run code.
"""

from __future__ import annotations

import argparse
import collections
from contextlib import contextmanager

import torch


def _allowed() -> list:
    allowed: list = [argparse.Namespace, collections.OrderedDict, collections.defaultdict]
    try:
        from deepspeed.runtime.zero.config import ZeroStageEnum

        allowed.append(ZeroStageEnum)
    except ImportError:
        pass
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler

        allowed += [DynamicLossScaler, LossScaler]
    except ImportError:
        pass
    try:
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed.append(fragment_address)
    except ImportError:
        pass
    return allowed


@contextmanager
def deepspeed_safe_load():
    original = torch.load

    def weights_only_load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(_allowed()):
            return original(f, *args, **kwargs)

    torch.load = weights_only_load
    try:
        yield
    finally:
        torch.load = original
