"""The installed commands: every console script this distribution declares starts and answers --help (a script that
names a missing module fails here, not on a user's machine), every `cnclip` subcommand too, with the same options
as its script; a misspelt subcommand is one clear error."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from cnclip_scale.cli import MODULES, command

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS = {
    "train": "launch/pretrain.py",
    "evaluate": "launch/evaluate.py",
    "to-shards": "tools/to_shards.py",
    "inspect": "tools/inspect_shards.py",
    "convert": "tools/convert_checkpoint.py",
    "plot": "tools/plot_metrics.py",
    "build-index": "tools/build_index.py",
    "export-onnx": "tools/export_onnx.py",
}


def console_scripts() -> list[str]:
    return sorted(
        ep.name
        for ep in importlib.metadata.entry_points(group="console_scripts")
        if ep.dist is not None and ep.dist.name.replace("-", "_") == "cnclip_scale"
    )


def run(*cmd) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, cwd=REPO)


def options(help_text: str) -> list[str]:
    """The option lines of a --help text (what follows its description)."""
    return help_text[help_text.index("options:") :].splitlines()


def test_the_distribution_declares_the_commands_users_expect():
    assert {"cnclip", "cnclip-to-shards", "cnclip-convert"} <= set(console_scripts())


@pytest.mark.parametrize("script", console_scripts())
def test_every_console_script_answers_help(script):
    result = run(BIN / script, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script} "), result.stdout


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_subcommand_answers_help_with_its_scripts_options(name):
    assert command(name).name == name
    result = run(BIN / "cnclip", name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: cnclip {name} "), result.stdout
    script = run(sys.executable, REPO / SCRIPTS[name], "--help")
    assert script.returncode == 0, script.stderr
    assert options(script.stdout) == options(result.stdout)


def test_an_unknown_subcommand_is_a_clear_error():
    result = run(BIN / "cnclip", "trian", "--config", "x.yaml")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = result.stderr.splitlines()[-1]
    assert error.startswith("cnclip: error: argument COMMAND: invalid choice: 'trian' (choose from "), error
    assert all(name in error for name in MODULES), error


def test_a_missing_subcommand_is_a_clear_error():
    result = run(BIN / "cnclip")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "cnclip: error: the following arguments are required: COMMAND"


def test_a_user_error_is_one_line_and_exit_2_through_cnclip(tmp_path):
    """The dispatcher applies each command's error policy: the same line the script prints."""
    result = run(BIN / "cnclip", "to-shards", "--src", tmp_path, "--dst", tmp_path / "out", "--workers", "0")
    assert result.returncode == 2
    assert result.stderr == "to_shards: error: --workers: must be at least 1, got 0\n"
