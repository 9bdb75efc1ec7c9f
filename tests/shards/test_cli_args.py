"""tools/to_shards.py refuses counts and split lists that cannot work: one line, exit 2, nothing written."""

import pytest

from cnclip_scale.cli.to_shards import main
from tests.helpers.seed_data import write_seed_dataset


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--samples-per-shard", "0"], "to_shards: error: --samples-per-shard: must be at least 1, got 0"),
        (["--samples-per-shard", "-5"], "to_shards: error: --samples-per-shard: must be at least 1, got -5"),
        (["--max-shard-bytes", "0"], "to_shards: error: --max-shard-bytes: must be at least 1, got 0"),
        (["--max-shard-bytes", "-1"], "to_shards: error: --max-shard-bytes: must be at least 1, got -1"),
        (["--workers", "0"], "to_shards: error: --workers: must be at least 1, got 0"),
        (["--splits", ","], "to_shards: error: --splits: no split names in ','"),
        (["--splits", " , "], "to_shards: error: --splits: no split names in ' , '"),
    ],
)
def test_impossible_arguments_are_one_line(tmp_path, capsys, args, expected):
    write_seed_dataset(str(tmp_path / "seed"), {"train": 4})
    rc = main(
        ["--src", str(tmp_path / "seed"), "--dst", str(tmp_path / "out"), "--splits", "train", "--no-progress", *args]
    )
    captured = capsys.readouterr()
    assert rc == 2
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), captured.err
    assert "Traceback" not in captured.out + captured.err
    assert not (tmp_path / "out").exists()
