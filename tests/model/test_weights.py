"""Weight interop: official Chinese-CLIP .pt, Hugging Face ChineseCLIPModel dirs and our native file.

Parity is checked against two independent implementations: Chinese-CLIP's own reference model (cn_clip 1.6.0) and
transformers' ChineseCLIPModel, both randomly initialised at tiny sizes."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cn_clip.clip.model import CLIP as ReferenceCLIP
from transformers import AutoTokenizer, ChineseCLIPConfig, ChineseCLIPModel

from cnclip_scale.checkpoints import load_model, read_checkpoint
from cnclip_scale.model import WeightsError, build_model, model_config
from cnclip_scale.model.configs import TINY
from cnclip_scale.model.weights import detect_format, hf_config_dict, load_native_into, write_checkpoint

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-5


def reference_tiny() -> ReferenceCLIP:
    cfg = model_config(TINY)
    v, t = cfg.vision, cfg.text
    torch.manual_seed(1)
    return ReferenceCLIP(
        embed_dim=v.embed_dim,
        image_resolution=v.image_size,
        vision_layers=v.layers,
        vision_width=v.width,
        vision_patch_size=v.patch_size,
        vision_head_width=v.head_width,
        vocab_size=t.vocab_size,
        text_attention_probs_dropout_prob=0.1,
        text_hidden_act="gelu",
        text_hidden_dropout_prob=0.1,
        text_hidden_size=t.hidden_size,
        text_initializer_range=0.02,
        text_intermediate_size=t.intermediate_size,
        text_max_position_embeddings=t.max_position_embeddings,
        text_num_attention_heads=t.heads,
        text_num_hidden_layers=t.layers,
        text_type_vocab_size=t.type_vocab_size,
    ).eval()


def save_official(model: torch.nn.Module, path: Path) -> Path:
    """The layout Chinese-CLIP's DDP trainer writes: module.-prefixed keys in {"epoch","step","name","state_dict"}."""
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "step": 735, "name": "muge_finetune", "state_dict": state}, path)
    return path


def hf_tiny() -> ChineseCLIPModel:
    torch.manual_seed(2)
    config = ChineseCLIPConfig(**hf_config_dict(model_config(TINY)))
    return ChineseCLIPModel(config).eval()


def assert_same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k


@pytest.fixture
def batch(tokenizer, captions):
    torch.manual_seed(3)
    ids, mask = tokenizer(captions)
    return torch.randn(len(captions), 3, 64, 64), ids, mask


def test_official_checkpoint_matches_reference_model(tmp_path, batch):
    images, ids, mask = batch
    ref = reference_tiny()
    ours = load_model(save_official(ref, tmp_path / "official.pt")).eval()
    assert ours.config.name == TINY  # sizes read off the tensors and matched to the registry
    with torch.no_grad():
        assert torch.allclose(ours.encode_image(images), F.normalize(ref.encode_image(images), dim=-1), atol=TOL)
        assert torch.allclose(ours.encode_text(ids, mask), F.normalize(ref.encode_text(ids), dim=-1), atol=TOL)
        assert torch.allclose(ours.logit_scale.exp(), ref.logit_scale.exp())


def test_official_export_loads_into_reference_model(tmp_path, tiny_model, batch):
    images, ids, mask = batch
    write_checkpoint(tiny_model.state_dict(), tiny_model.config, tmp_path / "export.pt", "official")
    ckpt = torch.load(tmp_path / "export.pt", weights_only=True)
    assert set(ckpt) == {"epoch", "step", "name", "state_dict"}
    ref = reference_tiny()
    ref.load_state_dict({k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}, strict=True)
    tiny_model.eval()
    with torch.no_grad():
        assert torch.allclose(tiny_model.encode_image(images), F.normalize(ref.encode_image(images), dim=-1), atol=TOL)
        assert torch.allclose(tiny_model.encode_text(ids, mask), F.normalize(ref.encode_text(ids), dim=-1), atol=TOL)


def test_hf_import_matches_transformers(tmp_path, batch):
    images, ids, mask = batch
    hf = hf_tiny()
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs_img = F.normalize(hf.get_image_features(pixel_values=images).pooler_output, dim=-1)
        theirs_txt = F.normalize(hf.get_text_features(input_ids=ids, attention_mask=mask.long()).pooler_output, dim=-1)
        assert torch.allclose(ours.encode_image(images), theirs_img, atol=TOL)
        assert torch.allclose(ours.encode_text(ids, mask), theirs_txt, atol=TOL)


def test_hf_export_loads_in_transformers(tmp_path, tiny_model, batch, tokenizer, captions):
    images, ids, mask = batch
    subprocess.run(
        [
            sys.executable,
            str(REPO / "tools/convert_checkpoint.py"),
            str(_native(tmp_path, tiny_model)),
            str(tmp_path / "hf"),
            "--to",
            "hf",
        ],
        check=True,
    )
    hf = ChineseCLIPModel.from_pretrained(tmp_path / "hf").eval()
    tiny_model.eval()
    with torch.no_grad():
        assert torch.allclose(
            tiny_model.encode_image(images),
            F.normalize(hf.get_image_features(pixel_values=images).pooler_output, dim=-1),
            atol=TOL,
        )
        assert torch.allclose(
            tiny_model.encode_text(ids, mask),
            F.normalize(hf.get_text_features(input_ids=ids, attention_mask=mask.long()).pooler_output, dim=-1),
            atol=TOL,
        )
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text, row in zip(captions, ids):
        assert hf_tok(text)["input_ids"] == row[row.ne(0)].tolist()


def _native(tmp_path, model):
    path = tmp_path / "model.safetensors"
    write_checkpoint(model.state_dict(), model.config, path, "native")
    return path


def test_round_trips_reproduce_every_tensor(tmp_path, tiny_model):
    native = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    # through files: native -> official -> hf -> native (the tables alone: test_formats.py)
    write_checkpoint(native, tiny_model.config, tmp_path / "a.pt", "official")
    sd, config, fmt = read_checkpoint(tmp_path / "a.pt")
    assert fmt == "official"
    write_checkpoint(sd, config, tmp_path / "b", "hf")
    sd, config, fmt = read_checkpoint(tmp_path / "b")
    assert fmt == "hf"
    write_checkpoint(sd, config, tmp_path / "c.safetensors", "native")
    sd, config, fmt = read_checkpoint(tmp_path / "c.safetensors")
    assert fmt == "native" and config == tiny_model.config
    assert_same_tensors(sd, native)


def test_official_file_round_trip_is_exact(tmp_path):
    ref = reference_tiny()
    src = save_official(ref, tmp_path / "official.pt")
    cli = [sys.executable, str(REPO / "tools/convert_checkpoint.py")]
    subprocess.run(cli + [str(src), str(tmp_path / "hf"), "--to", "hf"], check=True, capture_output=True)
    subprocess.run(
        cli + [str(tmp_path / "hf"), str(tmp_path / "n.safetensors"), "--to", "native"], check=True, capture_output=True
    )
    subprocess.run(
        cli + [str(tmp_path / "n.safetensors"), str(tmp_path / "back.pt"), "--to", "official"],
        check=True,
        capture_output=True,
    )
    back = torch.load(tmp_path / "back.pt", weights_only=True)["state_dict"]
    assert_same_tensors({k.removeprefix("module."): v for k, v in back.items()}, ref.state_dict())


def test_format_is_read_from_the_content_not_the_name(tmp_path, tiny_model):
    """A native file named model.pt (what `--to native model.pt` writes) reads back, and so does the reverse."""
    src = save_official(reference_tiny(), tmp_path / "official.pt")
    cli = [sys.executable, str(REPO / "tools/convert_checkpoint.py")]
    subprocess.run(cli + [str(src), str(tmp_path / "model.pt"), "--to", "native"], check=True, capture_output=True)
    subprocess.run(
        cli + [str(tmp_path / "model.pt"), str(tmp_path / "back.safetensors"), "--to", "official"],
        check=True,
        capture_output=True,
    )
    assert detect_format(tmp_path / "model.pt") == "native"
    assert detect_format(tmp_path / "back.safetensors") == "official"
    with open(tmp_path / "back.safetensors", "rb") as f:  # torch.load(path) would pick safetensors by the name
        back = torch.load(f, weights_only=True)["state_dict"]
    assert_same_tensors({k.removeprefix("module."): v for k, v in back.items()}, reference_tiny().state_dict())
    sd, _, fmt = read_checkpoint(tmp_path / "back.safetensors")
    assert fmt == "official" and sorted(sd) == sorted(tiny_model.state_dict())


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_model):
    sd = {k: v for k, v in tiny_model.state_dict().items() if k != "visual.norm.bias"}
    sd["visual.extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"missing: visual\.norm\.bias.*unexpected: visual\.extra\.weight"):
        load_native_into(build_model(model_config(TINY)), sd)


def test_shape_mismatch_is_named(tmp_path, tiny_model):
    write_checkpoint(tiny_model.state_dict(), tiny_model.config, tmp_path / "tiny.pt", "official")
    sd, _, _ = read_checkpoint(tmp_path / "tiny.pt")
    bigger = build_model(model_config("ViT-Tiny-16@RoBERTa-Tiny-chinese", image_size=96))
    with pytest.raises(
        WeightsError, match=r"shape mismatch: visual\.pos_embed: checkpoint \(1, 17, 64\) vs model \(1, 37, 64\)"
    ):
        load_native_into(bigger, sd)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Exploit(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="not loadable as a weights-only torch checkpoint"):
        read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools/convert_checkpoint.py"),
            str(tmp_path / "evil.pt"),
            str(tmp_path / "out.safetensors"),
            "--to",
            "native",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and not marker.exists()
    assert result.stderr.count("\n") == 1 and "evil.pt" in result.stderr


def test_cli_one_line_error_for_missing_source(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools/convert_checkpoint.py"),
            str(tmp_path / "nope.pt"),
            str(tmp_path / "x"),
            "--to",
            "hf",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"convert_checkpoint: error: {tmp_path / 'nope.pt'}: no such file or directory"


def _damaged_safetensors(tmp_path, tiny_model) -> dict[str, Path]:
    good = _native(tmp_path, tiny_model).read_bytes()
    files = {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "garbage": b"\x00\xffnot a safetensors file" * 10,
        "header-only": good[:8],
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.safetensors"
        paths[name].write_bytes(data)
    return paths


def test_damaged_safetensors_is_a_weights_error_naming_the_file(tmp_path, tiny_model):
    for path in _damaged_safetensors(tmp_path, tiny_model).values():
        with pytest.raises(WeightsError, match=rf"{path}: not a readable safetensors file"):
            read_checkpoint(path)


def test_cli_one_line_error_for_damaged_safetensors(tmp_path, tiny_model):
    path = _damaged_safetensors(tmp_path, tiny_model)["truncated"]
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/convert_checkpoint.py"), str(path), str(tmp_path / "out"), "--to", "hf"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"convert_checkpoint: error: {path}: not a readable safetensors file")
    assert not (tmp_path / "out").exists()


def test_weights_error_is_a_user_error():
    from cnclip_scale.errors import UserError

    assert issubclass(WeightsError, UserError) and issubclass(WeightsError, ValueError)
