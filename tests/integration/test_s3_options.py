"""Issue 15 part 3c: storage options reach every command that reads S3, against the real S3 server (the session
`s3_server` fixture): training's ``data.storage_options`` (a JSON object on the command line, a mapping in YAML), with
a brace pattern in a list override, and ``launch/evaluate.py --storage-options``. A wrong secret is one line."""

import json
import secrets

import pytest
import torch

from cnclip_scale.model import build_model, model_config
from cnclip_scale.model.configs import TINY
from cnclip_scale.model.tokenizer import Tokenizer
from cnclip_scale.model.weights import write_checkpoint
from cnclip_scale.train.config import ConfigError, load_config, save_config
from cnclip_scale.train.loop import preflight
from tests.eval.test_evaluate_command import assert_one_line, evaluate
from tests.helpers.data_shards import build_shard_set

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_split(s3_server, tmp_path_factory):
    bucket = f"opts-{secrets.token_hex(4)}"
    s3_server.make_bucket(bucket)
    root = str(tmp_path_factory.mktemp("seed"))
    shard_set = build_shard_set(
        root, 13, samples_per_shard=5, dst=f"s3://{bucket}/ds", storage_options=s3_server.storage_options()
    )
    return shard_set


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = build_model(model_config(TINY))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    write_checkpoint(model.state_dict(), model.config, path, "native")
    return str(path)


@pytest.fixture(autouse=True)
def no_aws_environment(monkeypatch):
    """Only the options given may reach the server: no AWS_* variables in this process."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def _overrides(s3_split, options: dict, tmp_path) -> list[str]:
    pattern = f"{s3_split.url}/train-{{000000..{len(s3_split.sizes) - 1:06d}}}.tar"
    return [
        f"data.train=[{pattern}]",  # a brace pattern inside a list override: no YAML traceback
        f"data.valid=[{s3_split.manifest_url}]",
        f"data.storage_options={json.dumps(options)}",
        f"model.name={TINY}",
        "data.batch_size=4",
        "data.valid_batch_size=4",
        "data.workers=0",
        "deepspeed.precision=fp32",
        f"train.output_dir={tmp_path / 'run'}",
    ]


def test_training_reads_s3_with_data_storage_options(s3_server, s3_split, tmp_path):
    cfg = load_config(None, _overrides(s3_split, s3_server.storage_options(), tmp_path))
    checked = preflight(cfg)  # resolves both sources on S3 and builds the loaders there
    keys = [k for batch in checked.train_loader for k in batch["keys"]]
    assert len(keys) == 12 and set(keys) <= s3_split.keys()  # 13 samples, drop_last at batch 4
    valid = [k for batch in checked.validator.loader for k in batch["keys"]]
    assert sorted(valid) == sorted(s3_split.keys())
    # the saved config keeps the endpoint and hides the secret
    save_config(cfg, tmp_path / "config.yaml")
    saved = (tmp_path / "config.yaml").read_text()
    assert s3_server.endpoint_url in saved and s3_server.secret_key not in saved and "<redacted>" in saved


def test_storage_options_in_yaml_and_a_wrong_secret_is_one_config_error(s3_server, s3_split, tmp_path):
    options = s3_server.storage_options(secret="not-the-secret")
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(
        "data:\n  storage_options:\n"
        + "".join(f"    {k}: {json.dumps(v)}\n" for k, v in options.items())
        + f"  train:\n    - {s3_split.url}\n"
    )
    cfg = load_config(yaml_file, [f"model.name={TINY}"])
    assert cfg.data.storage_options == options
    with pytest.raises(ConfigError, match=r"^data.train: access denied at s3://"):
        preflight(cfg)


def test_recall_through_the_evaluator_reads_s3(s3_server, s3_split):
    from cnclip_scale.eval import evaluate_retrieval

    torch.manual_seed(0)
    model = build_model(model_config(TINY))
    result = evaluate_retrieval(
        model, s3_split.manifest_url, Tokenizer(), batch_size=4, storage_options=s3_server.storage_options()
    )
    assert result["images"] == 13 and result["t2i"]["queries"] == result["texts"] > 0


def test_evaluate_command_takes_storage_options(capsys, s3_server, s3_split, tiny_checkpoint, tmp_path):
    options = json.dumps(s3_server.storage_options())
    args = ("--checkpoint", tiny_checkpoint, "--data", s3_split.url, "--output", str(tmp_path / "out"))
    rc, output = evaluate(capsys, *args, "--storage-options", options)
    assert rc == 0, output
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["images"] == 13
    wrong = json.dumps(s3_server.storage_options(secret="not-the-secret"))
    rc, output = evaluate(capsys, *args, "--storage-options", wrong)
    assert_one_line(rc, output, "evaluate: --data: access denied at s3://")
    rc, output = evaluate(capsys, *args, "--storage-options", "{not json")
    assert_one_line(rc, output, "evaluate: --storage-options is not JSON")


def test_img2dataset_shards_on_s3_count_from_stats_or_an_index_run(s3_server, tmp_path, capsys):
    from cnclip_scale.cli.inspect import main as inspect_main
    from cnclip_scale.data.sources import resolve_sources
    from tests.helpers.foreign_shards import write_img2dataset_shards

    shards = write_img2dataset_shards(str(tmp_path / "laion"), [8, 5, 6])
    bucket = f"laion-{secrets.token_hex(4)}"
    s3_server.make_bucket(bucket)
    fs, options = s3_server.filesystem(), s3_server.storage_options()
    for name in shards.shard_names():
        stem = name.removesuffix(".tar")
        fs.put(f"{shards.folder}/{name}", f"{bucket}/with-stats/{name}")
        fs.put(f"{shards.folder}/{stem}_stats.json", f"{bucket}/with-stats/{stem}_stats.json")
        fs.put(f"{shards.folder}/{name}", f"{bucket}/bare/{name}")
    (source,) = resolve_sources(f"s3://{bucket}/with-stats", storage_options=options)
    assert [s.samples for s in source.shards] == shards.sizes
    assert (
        inspect_main([f"s3://{bucket}/bare", "--index", "--workers", "2", "--storage-options", json.dumps(options)])
        == 0
    )
    assert f"{sum(shards.sizes)} samples" in capsys.readouterr().out
    (source,) = resolve_sources(f"s3://{bucket}/bare/{{00000..00002}}.tar", storage_options=options)
    assert [s.samples for s in source.shards] == shards.sizes
    assert not fs.exists(f"{bucket}/bare/.cnclip-index/00000.tar.json")  # progress records removed
