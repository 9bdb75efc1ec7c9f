"""Training curves from the trainer's metrics.jsonl → one PNG: loss, learning rate, in-batch accuracy, recall.

Records are ``{"kind": "train"|"valid", "step", ...}``; a resumed run appends, so for a repeated (kind, step)
the last record wins. Recall panel: any numeric ``valid`` key with ``recall`` or an ``r1``/``r5``/``r10`` part.
"""

from __future__ import annotations

import json
import re

RECALL = re.compile(r"(recall|(^|_)r(1|5|10)($|_))")


class NothingToPlot(ValueError):
    """A metrics file without a single plottable record."""


def read(path: str) -> dict[str, dict[int, dict]]:
    """kind -> step -> record (last one wins). Unparsable lines (a run killed mid-write) are skipped."""
    out: dict[str, dict[int, dict]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "step" in rec:
                out.setdefault(rec.get("kind", "train"), {})[int(rec["step"])] = rec
    return out


def series(records: dict[int, dict], key: str) -> tuple[list[int], list[float]]:
    steps = [s for s in sorted(records) if isinstance(records[s].get(key), (int, float))]
    scale = 100.0 if key.endswith("_acc") else 1.0  # the trainer logs accuracies as fractions; the log lines show %
    return steps, [records[s][key] * scale for s in steps]


def _panels(metrics: dict[str, dict[int, dict]]) -> list[tuple[str, list]]:
    """(title, [((steps, values), label), ...]) of every panel that has data."""
    train, valid = metrics.get("train", {}), metrics.get("valid", {})
    recall_keys = sorted(
        {k for r in valid.values() for k, v in r.items() if isinstance(v, (int, float)) and RECALL.search(k)}
    )
    panels = [
        ("loss", [(train, "loss", "train"), (valid, "loss", "valid"), (valid, "valid_loss", "valid")]),
        ("learning rate", [(train, "lr", "lr")]),
        (
            "in-batch accuracy (%)",
            [
                (train, "i2t_acc", "train i2t"),
                (train, "t2i_acc", "train t2i"),
                (valid, "valid_i2t_acc", "valid i2t"),
                (valid, "valid_t2i_acc", "valid t2i"),
                (valid, "i2t_acc", "valid i2t"),
                (valid, "t2i_acc", "valid t2i"),
            ],
        ),
        ("recall (%)", [(valid, k, k) for k in recall_keys]),
    ]
    panels = [(title, [(series(recs, key), label) for recs, key, label in lines]) for title, lines in panels]
    panels = [(title, [(s, label) for s, label in lines if s[0]]) for title, lines in panels]
    return [(title, lines) for title, lines in panels if lines]


def plot(metrics: dict[str, dict[int, dict]], out: str) -> list[str]:
    """Draw the panels that have data into the PNG ``out``; returns their titles."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = _panels(metrics)
    if not panels:
        raise NothingToPlot("no plottable records (need 'step' and e.g. 'loss' or 'lr')")
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.8 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, lines) in zip(axes[:, 0], panels, strict=True):
        for (steps, values), label in lines:
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return [title for title, _ in panels]
