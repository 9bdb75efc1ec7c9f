"""tools/plot_metrics.py on a metrics.jsonl shaped like the trainer's (resume duplicates, a torn last line)."""

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageStat

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from cnclip_scale.train import plots as plot_metrics  # noqa: E402


def write_metrics(path: Path) -> None:
    lines = []
    for step in range(1, 41):
        lines.append(
            {
                "kind": "train",
                "time": step,
                "step": step,
                "loss": 3.0 / step,
                "lr": 1e-4 * min(1, step / 10),
                "i2t_acc": step,
                "t2i_acc": step * 0.9,
                "logit_scale": 4.6,
            }
        )
        if step % 10 == 0:
            lines.append(
                {
                    "kind": "valid",
                    "time": step,
                    "step": step,
                    "valid_loss": 2.0 / step,
                    "valid_i2t_acc": step,
                    "valid_t2i_acc": step,
                    "t2i_r1": step,
                    "t2i_r10": 2 * step,
                    "t2i_mean_recall": 1.5 * step,
                }
            )
    lines.append({"kind": "train", "step": 20, "loss": 99.0, "lr": 1e-4})  # resumed run repeats step 20
    path.write_text("\n".join(json.dumps(x) for x in lines) + '\n{"kind": "train", "st', encoding="utf-8")


def test_reads_last_record_per_step_and_skips_torn_line(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl")
    m = plot_metrics.read(str(tmp_path / "metrics.jsonl"))
    assert len(m["train"]) == 40 and len(m["valid"]) == 4 and m["train"][20]["loss"] == 99.0


def test_png_has_every_panel(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl")
    out = tmp_path / "curves.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools/plot_metrics.py"), str(tmp_path / "metrics.jsonl"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "loss, learning rate, in-batch accuracy (%), recall (%)" in proc.stdout
    image = Image.open(out).convert("RGB")
    assert image.size[1] > image.size[0] and max(ImageStat.Stat(image).stddev) > 20


def test_nothing_to_plot_is_an_error(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"kind": "train"}\n', encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools/plot_metrics.py"), str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "no plottable records" in proc.stderr
