"""The rename tables: both directions, against the keys the reference implementations write themselves."""

import subprocess
import sys

import pytest
import torch

from cnclip_scale.model.formats import FOREIGN_FORMATS, WeightsError, from_native, to_native
from tests.model.test_weights import REPO, assert_same_tensors, hf_tiny, reference_tiny


@pytest.mark.parametrize("fmt", sorted(FOREIGN_FORMATS))
def test_native_to_foreign_and_back_is_identity(fmt, tiny_model):
    native = tiny_model.state_dict()
    assert_same_tensors(to_native(from_native(native, fmt), fmt), native)


@pytest.mark.parametrize("fmt, reference", [("official", reference_tiny), ("hf", hf_tiny)])
def test_from_native_writes_exactly_the_reference_keys_and_shapes(fmt, reference, tiny_model):
    theirs = reference().state_dict()
    ours = from_native(tiny_model.state_dict(), fmt)
    assert sorted(ours) == sorted(theirs)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert sorted(to_native(theirs, fmt)) == sorted(tiny_model.state_dict())


def test_hf_qkv_are_split_in_order(tiny_model):
    qkv = tiny_model.state_dict()["visual.blocks.0.attn.qkv.weight"]
    hf = from_native(tiny_model.state_dict(), "hf")
    q, k, v = (hf[f"vision_model.encoder.layers.0.self_attn.{p}_proj.weight"] for p in "qkv")
    assert torch.equal(torch.cat([q, k, v]), qkv) and not torch.equal(q, k)


def test_hf_missing_qkv_part_is_named(tiny_model):
    hf = from_native(tiny_model.state_dict(), "hf")
    del hf["vision_model.encoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(
        WeightsError,
        match=r"visual\.blocks\.1\.attn\.qkv\.bias needs .*layers\.1\.self_attn\.k_proj"
        r"\.bias.*found only the q/v part",
    ):
        to_native(hf, "hf")


def test_official_module_prefix_and_unused_keys_are_dropped_on_read(tiny_model):
    official = {"module." + k: v for k, v in from_native(tiny_model.state_dict(), "official").items()}
    official["module.bert.pooler.dense.weight"] = torch.zeros(2, 2)
    official["module.bert.embeddings.position_ids"] = torch.arange(4)
    assert_same_tensors(to_native(official, "official"), tiny_model.state_dict())


def test_unknown_format_is_a_weights_error(tiny_model):
    with pytest.raises(WeightsError, match="unknown weight layout 'onnx'"):
        from_native(tiny_model.state_dict(), "onnx")


def test_no_model_module_imports_deepspeed():
    """The model package stays usable (and light) without DeepSpeed: only cnclip_scale.checkpoints may import it."""
    code = (
        "import pkgutil, importlib, sys, cnclip_scale.model as m\n"
        "names = [f'cnclip_scale.model.{i.name}' for i in pkgutil.iter_modules(m.__path__)]\n"
        "[importlib.import_module(n) for n in names]\n"
        "assert 'cnclip_scale.model.weights' in sys.modules and 'cnclip_scale.model.formats' in sys.modules\n"
        "print(sorted(n for n in sys.modules if n.split('.')[0] == 'deepspeed'))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
