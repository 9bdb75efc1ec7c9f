"""Issue 16 on 2 real ranks (gloo, ZeRO-2): FLIP patch dropout resumes exactly, ``train.reset_optimizer`` keeps the
weights and data position with a fresh optimizer and schedule (and new parameter groups), ``train.reset_data`` starts
the epoch over, and the epoch-based save/validation intervals fire at epoch ends. One torchrun launch
(tests/integration/train_driver.py) runs every scenario."""

import math

import pytest
import torch

from cnclip_scale.checkpoints import read_checkpoint
from cnclip_scale.train.optim import lr_at
from tests.helpers.train_runs import make_tiny_shards, read_keys, read_metrics, run_train_plan

pytestmark = pytest.mark.integration
STEPS, RESUME_AT = 6, 3  # 64 samples / (2 ranks × 8) = 4 steps an epoch


def _common(shards, out):
    return [
        f"data.train=[{shards}/train]",
        f"train.output_dir={out}",
        "data.batch_size=8",
        "data.workers=1",
        "optim.lr=2e-3",
        "optim.warmup=1",
        f"optim.max_steps={STEPS}",
        "train.log_every=1",
        "train.record_keys=true",
        "train.keep_last=5",
        "deepspeed.zero_stage=2",
        "deepspeed.precision=fp32",
        "model.mask_ratio=0.5",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    shards = make_tiny_shards(root / "data", {"train": 64, "valid": 9})
    resume = {"dir": str(root / "base"), "step": RESUME_AT}
    plan = [
        {"name": "base", "overrides": _common(shards, root / "base") + [f"train.save_every={RESUME_AT}"]},
        {
            "name": "resumed",
            "resume_from": resume,
            "overrides": _common(shards, root / "resumed") + [f"train.save_every={RESUME_AT}"],
        },
        {
            "name": "reset-optimizer",
            "resume_from": resume,
            "overrides": _common(shards, root / "reset-optimizer")
            + [
                "train.reset_optimizer=true",
                "optim.warmup=4",
                "optim.lr_vision=1e-3",
                "train.freeze_text_except_last=1",  # other parameter groups than the saving run's
            ],
        },
        {
            "name": "reset-data",
            "resume_from": resume,
            "overrides": _common(shards, root / "reset-data") + ["train.reset_data=true"],
        },
        {
            "name": "epochs",
            "overrides": _common(shards, root / "epochs")
            + [
                "train.save_every=0",
                "train.save_every_epochs=1",
                "train.valid_every_epochs=1",
                f"data.valid=[{shards}/valid]",
                "data.valid_batch_size=4",
            ],
        },
    ]
    run_train_plan(root, plan)
    return root


def _metrics(out):
    return {m["step"]: m for m in read_metrics(out)}


def test_patch_dropout_trains_and_resumes_exactly(runs):
    full, again = _metrics(runs / "base"), _metrics(runs / "resumed")
    assert sorted(full) == list(range(1, STEPS + 1)) and all(math.isfinite(m["loss"]) for m in full.values())
    assert sorted(again) == list(range(RESUME_AT + 1, STEPS + 1))
    for step in again:  # the same patches dropped: the RNG streams come back with the checkpoint
        assert again[step]["loss"] == pytest.approx(full[step]["loss"], abs=1e-6), step
    for rank in (0, 1):
        tail = read_keys(runs / "resumed", rank)
        assert {s: read_keys(runs / "base", rank)[s] for s in tail} == tail


def test_reset_optimizer_keeps_weights_and_data_position_with_a_fresh_schedule(runs):
    out = runs / "reset-optimizer"
    metrics, full = _metrics(out), _metrics(runs / "base")
    assert sorted(metrics) == list(range(RESUME_AT + 1, STEPS + 1))
    # the data position is kept: the next samples
    for rank in (0, 1):
        tail = read_keys(out, rank)
        assert {s: read_keys(runs / "base", rank)[s] for s in tail} == tail
    # a fresh warmup over the steps left: the logged lr (the first group's: text_projection, at optim.lr) after the
    # first step is lr_at(1), then lr_at(2), ...; the loss of that first step is the saving run's own (same weights,
    # samples and patch draws)
    for k in range(STEPS - RESUME_AT):
        assert metrics[RESUME_AT + 1 + k]["lr"] == pytest.approx(lr_at(1 + k, 2e-3, 4, STEPS - RESUME_AT))
    assert metrics[RESUME_AT + 1]["loss"] == pytest.approx(full[RESUME_AT + 1]["loss"], abs=1e-6)
    assert full[RESUME_AT + 1]["lr"] == pytest.approx(lr_at(RESUME_AT + 1, 2e-3, 1, STEPS))
    # the text tower is locked but its last layer: the rest holds the step-3 weights exactly
    saved, _, _ = read_checkpoint(runs / "base" / "checkpoints" / f"step{RESUME_AT:08d}")
    final, _, _ = read_checkpoint(out / "model.safetensors")
    for name, tensor in saved.items():
        locked = name.startswith(("bert.embeddings.", "bert.encoder.layer.0."))
        assert torch.equal(final[name], tensor) == locked, name


def test_reset_data_starts_the_epoch_over(runs):
    out = runs / "reset-data"
    assert sorted(_metrics(out)) == list(range(RESUME_AT + 1, STEPS + 1))
    for rank in (0, 1):
        full, tail = read_keys(runs / "base", rank), read_keys(out, rank)
        assert tail[RESUME_AT + 1] == full[1] and tail[RESUME_AT + 2] == full[2]  # epoch 0 from its first batch


def test_epoch_intervals_save_and_validate_at_epoch_ends(runs):
    out = runs / "epochs"
    assert [m["step"] for m in read_metrics(out, "valid")] == [4, STEPS]  # end of epoch 1, then the final one
    tags = sorted(p.name for p in (out / "checkpoints").glob("step*"))
    assert tags == ["step00000004", f"step{STEPS:08d}"]
