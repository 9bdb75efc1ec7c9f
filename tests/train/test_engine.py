"""The engine helpers the training step calls, without an engine: the finiteness watch and the fp32 temperature."""
import math

import torch

from cnclip_scale.train.engine import FiniteWatch, fp32_temperature


def test_finite_watch_names_the_first_bad_step_and_only_when_asked():
    watch = FiniteWatch(torch.device("cpu"))
    watch.update(torch.tensor(2.5), 1)
    assert watch.first_bad_step() is None
    watch.update(torch.tensor(float("nan")), 2)
    watch.update(torch.tensor(1.0), 3)
    watch.update(torch.tensor(float("inf")), 4)
    assert watch.first_bad_step() == 2
    assert watch.first_bad.dtype == torch.long and watch.first_bad.dim() == 0  # kept as a device tensor


def test_fp32_temperature_has_the_fp32_value_and_the_models_gradient():
    master = torch.tensor(math.log(1 / 0.07))                          # the optimizer's fp32 copy
    param = torch.nn.Parameter(master.to(torch.bfloat16).reshape(1))    # the module's bf16 copy
    scale = param.clamp(0, math.log(100)).exp().squeeze(0)
    assert abs(scale.item() - master.exp().item()) > 1e-3               # bf16 is coarse here (about 0.06 of 14.3)
    temperature = fp32_temperature(scale, master)
    assert temperature.dtype == torch.float32 and temperature.item() == master.exp().item()
    (temperature * 2).backward()
    assert param.grad is not None and param.grad.item() == (2 * scale).item()
