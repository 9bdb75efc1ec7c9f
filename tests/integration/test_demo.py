"""`make demo`'s path, shortened: the same script and commands with fewer training steps."""

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.recall import assert_recall_matches_files
from tests.helpers.train_runs import REPO, train_env

pytestmark = pytest.mark.integration


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/run_demo.py"), "--out", str(out), "--steps", "30"],
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    stdout = result.stdout
    assert "text→image" in stdout and "image→text" in stdout and "zero-shot" in stdout
    summary = json.loads((out / "eval" / "summary.json").read_text())
    seed = out / "seed"  # every image and text of the demo's test split was evaluated
    assert summary["images"] == len((seed / "test_imgs.tsv").read_text().splitlines()) > 200
    assert summary["texts"] == len((seed / "test_texts.jsonl").read_text().splitlines()) > 50
    # the reported recall is what the written top-k lists give against the seed's own ground truth
    assert_recall_matches_files(summary, out / "eval", "test", seed / "test_texts.jsonl")
    parser = _Tags()
    parser.feed((out / "eval" / "report.html").read_text(encoding="utf-8"))
    images = [a for tag, a in parser.tags if tag == "img"]
    assert images and all(a["src"].startswith("data:image/") for a in images)  # self-contained
    with Image.open(out / "training_curves.png") as png:
        png.verify()
    assert (out / "run" / "model.safetensors").exists()
    steps_logged = _train_records(out)
    # re-running reuses what is built: no new dataset, no new training steps
    again = subprocess.run(
        [sys.executable, str(REPO / "tools/run_demo.py"), "--out", str(out), "--steps", "30"],
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing" in again.stdout
    assert _train_records(out) == steps_logged  # the finished run was resumed, not trained again


def _train_records(out: Path) -> int:
    return sum(json.loads(line)["kind"] == "train" for line in (out / "run" / "metrics.jsonl").read_text().splitlines())
