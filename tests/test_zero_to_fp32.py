"""DeepSpeed's ``zero_to_fp32.py --safe_serialization`` output (plain state-dict safetensors, maybe sharded, keys with
or without ``module.``, no cnclip metadata) reads everywhere a checkpoint does: sizes from --model, a run's
config.yaml nearby, or the tensor shapes."""

import pytest
from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict
from safetensors.torch import load_file, save_file

from cnclip_scale.checkpoints import WeightsError, convert, load_model, read_checkpoint
from cnclip_scale.model import model_config
from cnclip_scale.model.configs import SMALL, TINY
from tests.test_checkpoints import assert_weights_of, tiny_model, zero2_run  # noqa: F401 - zero2_run: a fixture


@pytest.fixture(scope="module")
def fp32_dirs(zero2_run, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("fp32")
    root = zero2_run / "checkpoints"
    convert_zero_checkpoint_to_fp32_state_dict(str(root), str(out / "single"), safe_serialization=True)
    convert_zero_checkpoint_to_fp32_state_dict(
        str(root), str(out / "sharded"), safe_serialization=True, max_shard_size="200KB"
    )
    return out


def test_plain_safetensors_reads_with_sizes_from_the_shapes(fp32_dirs):
    single = fp32_dirs / "single"
    assert sorted(p.name for p in single.iterdir()) == ["model.safetensors"]
    for path in (single / "model.safetensors", single):
        sd, config, fmt = read_checkpoint(path)
        assert fmt == "state-dict" and config == model_config(TINY)
        assert_weights_of(sd, tiny_model())
    assert_weights_of(load_model(single).state_dict(), tiny_model())


def test_sharded_output_reads_through_its_index(fp32_dirs):
    sharded = fp32_dirs / "sharded"
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 1
    for path in (sharded, sharded / "model.safetensors.index.json"):
        sd, config, fmt = read_checkpoint(path)
        assert fmt == "state-dict" and config.name == TINY
        assert_weights_of(sd, tiny_model())


def test_module_prefix_and_model_name(fp32_dirs, tmp_path):
    sd = load_file(fp32_dirs / "single" / "model.safetensors")
    save_file({"module." + k: v for k, v in sd.items()}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert_weights_of(load_model(tmp_path / "model.safetensors", name=TINY).state_dict(), tiny_model())
    print(convert(tmp_path / "model.safetensors", tmp_path / "out.pt", "official", name=TINY))
    assert_weights_of(load_model(tmp_path / "out.pt").state_dict(), tiny_model())
    with pytest.raises(WeightsError, match="checkpoint does not fit the model"):
        load_model(tmp_path / "model.safetensors", name=SMALL)


def test_a_run_config_nearby_names_the_sizes(fp32_dirs, tmp_path):
    """zero_to_fp32 run inside a run dir (run/fp32/model.safetensors): the run's config.yaml wins over inference."""
    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp32" / "model.safetensors").write_bytes((fp32_dirs / "single" / "model.safetensors").read_bytes())
    (tmp_path / "config.yaml").write_text(f"model:\n  name: {TINY}\n  image_size: null\n")
    _, config, _ = read_checkpoint(tmp_path / "fp32" / "model.safetensors")
    assert config == model_config(TINY)
    (tmp_path / "config.yaml").write_text(f"model:\n  name: {SMALL}\n")
    with pytest.raises(WeightsError, match="checkpoint does not fit the model"):
        load_model(tmp_path / "fp32" / "model.safetensors")
