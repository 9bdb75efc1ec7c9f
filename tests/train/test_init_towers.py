"""model.init_vision / model.init_text: read and checked in preflight (before any process group), applied after
model.init in _build_model; the text tower's vocab becomes the run's tokenizer vocab."""

import logging
import re

import pytest
import torch

from cnclip_scale.train import loop
from cnclip_scale.train.config import load_config
from tests.helpers.train_runs import REPO, make_tiny_shards
from tests.model.conftest import CAPTIONS
from tests.model.test_towers import bert_tiny, open_clip_tiny, save_bert_dir


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("shards"), {"train": 16})


def run_config(shards, out, *extra):
    return load_config(
        REPO / "configs/tiny-cpu.yaml",
        [f"data.train=[{shards}/train]", f"train.output_dir={out}", "data.batch_size=8", *extra],
    )


def test_towers_are_applied_after_init_and_the_text_vocab_is_used(shards, tmp_path):
    vision = open_clip_tiny()
    torch.save(vision.state_dict(), tmp_path / "openai.pt")
    bert = bert_tiny()
    text_dir = save_bert_dir(tmp_path / "bert", bert, tokenizer_json=True)
    cfg = run_config(
        shards, tmp_path / "out", f"model.init_vision={tmp_path / 'openai.pt'}", f"model.init_text={text_dir}"
    )
    checked = loop.preflight(cfg)
    assert checked.tokenizer.vocab_file == text_dir / "tokenizer.json"
    model = loop._build_model(cfg, checked, logging.getLogger("test")).eval()
    assert checked.towers == (None, None)  # released once applied
    torch.manual_seed(3)
    images = torch.randn(2, 3, 64, 64)
    ids, mask = checked.tokenizer(CAPTIONS)
    with torch.no_grad():
        assert (model.encode_image(images, normalize=False) - vision.encode_image(images)).abs().max() <= 1e-5
        got = model.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        assert (got - bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state).abs().max() <= 1e-5


def test_tower_that_does_not_fit_is_one_line_before_any_rank_starts(shards, tmp_path, capsys):
    torch.save(open_clip_tiny(width=96).state_dict(), tmp_path / "wide.pt")
    from tests.train.test_pretrain_command import assert_one_line, pretrain

    rc, output = pretrain(capsys, shards, tmp_path / "out", f"model.init_vision={tmp_path / 'wide.pt'}")
    assert_one_line(rc, output, f"pretrain: image tower {tmp_path / 'wide.pt'} (OpenAI/open_clip layout) does not fit")
    assert re.search(r"shape mismatch: visual\.blocks\.0\.", output)
