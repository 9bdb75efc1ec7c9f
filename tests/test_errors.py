"""The commands' one-line error report: rank 0 speaks, every rank returns exit code 2."""

import pytest

from cnclip_scale.errors import UserError, is_main_rank, report


@pytest.mark.parametrize(
    "env, main",
    [
        ({}, True),
        ({"RANK": "0"}, True),
        ({"RANK": "1"}, False),
        ({"SLURM_PROCID": "3"}, False),
        ({"SLURM_PROCID": "0"}, True),
    ],
)
def test_rank_0_prints_one_line_and_every_rank_exits_2(monkeypatch, capsys, env, main):
    for name in ("RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_main_rank() is main
    assert report("pretrain", UserError("data.valid: source folder not found: /x\n(second line)")) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("pretrain: data.valid: source folder not found: /x (second line)\n" if main else "")
