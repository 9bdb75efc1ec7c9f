"""launch/evaluate.py's answer to bad arguments and empty inputs: one line on stderr, exit code 2, no traceback, and
no "success" where nothing was scored. Run in this process (one rank; the 2-rank form is in tests/integration)."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _command():
    spec = importlib.util.spec_from_file_location("evaluate_command", REPO / "launch/evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def evaluate(capsys, *args) -> tuple[int, str]:
    rc = _command()(["--split", "test", "--workers", "0", "--no-report", *args])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def assert_one_line(rc: int, output: str, expected: str) -> None:
    assert rc == 2, output
    # log records of a run that got going (INFO lines) and DeepSpeed's import notice are not error lines
    lines = [
        line
        for line in output.splitlines()
        if line.strip() and " | INFO | " not in line and not re.match(r"\[[\d-]+ [\d:,]+\] \[", line)
    ]
    assert len(lines) == 1 and "Traceback" not in output, output
    assert lines[0].startswith(expected), lines[0]


def test_missing_checkpoint_is_one_line(capsys, seed_split, tmp_path):
    rc, output = evaluate(
        capsys,
        "--checkpoint",
        str(tmp_path / "nope.safetensors"),
        "--data",
        seed_split[0],
        "--output",
        str(tmp_path / "out"),
    )
    assert_one_line(rc, output, f"evaluate: --checkpoint: {tmp_path / 'nope.safetensors'}: no such file or directory")
    assert not (tmp_path / "out").exists()


def test_missing_data_is_one_line(capsys, tiny_checkpoint, tmp_path):
    rc, output = evaluate(
        capsys, "--checkpoint", tiny_checkpoint, "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "out")
    )
    assert_one_line(rc, output, f"evaluate: --data: {tmp_path / 'nope'}: no such file or directory")


def test_damaged_checkpoint_is_one_line(capsys, seed_split, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"{}garbage")
    rc, output = evaluate(capsys, "--checkpoint", str(bad), "--data", seed_split[0], "--output", str(tmp_path / "o"))
    assert_one_line(rc, output, f"evaluate: {bad}: not a readable safetensors file")


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_zeroshot_classes_is_one_line(capsys, tiny_checkpoint, seed_split, tmp_path, content):
    classes = tmp_path / "classes.txt"
    classes.write_text(content)
    rc, output = evaluate(
        capsys,
        "--checkpoint",
        tiny_checkpoint,
        "--data",
        seed_split[0],
        "--output",
        str(tmp_path / "out"),
        "--zeroshot-classes",
        str(classes),
    )
    assert_one_line(rc, output, f"evaluate: --zeroshot-classes: {classes}: no class names")


@pytest.mark.parametrize("option", ["--top-k", "--batch-size"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_counts_below_one_are_refused(capsys, tiny_checkpoint, seed_split, tmp_path, option, value):
    rc, output = evaluate(
        capsys,
        "--checkpoint",
        tiny_checkpoint,
        "--data",
        seed_split[0],
        "--output",
        str(tmp_path / "out"),
        option,
        value,
    )
    assert_one_line(rc, output, f"evaluate: {option}: must be at least 1, got {value}")


def test_a_split_without_texts_is_not_a_success(capsys, tiny_checkpoint, seed_split, tmp_path):
    """Images but no texts: nothing to score. output.json must not say success with a score of 0."""
    folder = tmp_path / "seed"
    folder.mkdir()
    src = Path(seed_split[0])
    (folder / "test_imgs.tsv").write_bytes((src / "test_imgs.tsv").read_bytes())
    (folder / "test_texts.jsonl").write_text("")
    rc, output = evaluate(
        capsys, "--checkpoint", tiny_checkpoint, "--data", str(folder), "--output", str(tmp_path / "out")
    )
    assert_one_line(rc, output, "evaluate: split 'test' has no texts: nothing to score")
    for name in ("output.json", "output_tr.json"):
        result = json.loads((tmp_path / "out" / name).read_text())
        assert result["success"] is False and "no texts" in result["errorMsg"], result


def test_a_folder_without_the_split_is_one_line(capsys, tiny_checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    rc, output = evaluate(
        capsys, "--checkpoint", tiny_checkpoint, "--data", str(tmp_path / "empty"), "--output", str(tmp_path / "out")
    )
    assert_one_line(rc, output, "evaluate: --data: ")
