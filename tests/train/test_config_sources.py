"""Issue 15 part 3c: list overrides keep brace patterns whole (they failed with a raw YAML traceback), and
``data.storage_options`` is a JSON object on the command line or a mapping in YAML, redacted where it is saved."""

import pytest
import yaml

from cnclip_scale.train.config import ConfigError, load_config, save_config, split_list


@pytest.mark.parametrize(
    "text, items",
    [
        ("[s3://b/train-{000000..000003}.tar]", ["s3://b/train-{000000..000003}.tar"]),
        ("[s3://b/a-{0..3}.tar,s3://b/b-{x,y}.tar]", ["s3://b/a-{0..3}.tar", "s3://b/b-{x,y}.tar"]),
        ("s3://b/a-{0..3}.tar, shards/valid", ["s3://b/a-{0..3}.tar", "shards/valid"]),
        ("[a, b]", ["a", "b"]),
        ('["a,b", c]', ["a,b", "c"]),
        ("[]", []),
    ],
)
def test_list_overrides_split_on_commas_outside_braces(text, items):
    assert split_list(text) == items


def test_brace_patterns_in_a_list_override_load(tmp_path):
    cfg = load_config(None, ["data.train=[s3://b/train-{000000..000003}.tar,s3://b/more-{0,1}.tar]"])
    assert cfg.data.train == ["s3://b/train-{000000..000003}.tar", "s3://b/more-{0,1}.tar"]
    cfg = load_config(None, ["optim.betas=[0.8, 0.9]", "data.train_weights=1,3"])
    assert cfg.optim.betas == [0.8, 0.9] and cfg.data.train_weights == [1.0, 3.0]
    with pytest.raises(ConfigError, match=r"^override optim.betas\[1\]: expected float, got 'x'"):
        load_config(None, ["optim.betas=[0.9,x]"])
    with pytest.raises(ConfigError, match=r"^override data.train: expected list"):
        load_config(None, ["data.train=[s3://b/train-{000000..000003.tar]"])  # unbalanced: one line, no traceback


def test_storage_options_from_json_and_yaml_and_redacted_when_saved(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_S3_SECRET", "s3cr3t")
    cfg = load_config(
        None, ['data.storage_options={"endpoint_url": "http://127.0.0.1:9000", "secret": "${MY_S3_SECRET}"}']
    )
    assert cfg.data.storage_options == {"endpoint_url": "http://127.0.0.1:9000", "secret": "s3cr3t"}
    path = tmp_path / "run.yaml"
    path.write_text(
        "data:\n  storage_options:\n    endpoint_url: http://s3.local\n    key: AKIA\n"
        "    client_kwargs: {region_name: us-east-1, aws_session_token: tok}\n"
    )
    cfg = load_config(path)
    assert cfg.data.storage_options["client_kwargs"]["region_name"] == "us-east-1"
    save_config(cfg, tmp_path / "saved.yaml")
    saved = yaml.safe_load((tmp_path / "saved.yaml").read_text())["data"]["storage_options"]
    assert saved == {
        "endpoint_url": "http://s3.local",
        "key": "<redacted>",
        "client_kwargs": {"region_name": "us-east-1", "aws_session_token": "<redacted>"},
    }
    assert cfg.data.storage_options["key"] == "AKIA"  # only the saved copy is redacted
    for bad, message in (("{not json", "expected a JSON object"), ("[1, 2]", "expected dict")):
        with pytest.raises(ConfigError, match=rf"^override data.storage_options: {message}"):
            load_config(None, [f"data.storage_options={bad}"])
