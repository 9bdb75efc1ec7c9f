"""launch/evaluate.py end to end in real processes: 1 rank vs 2 gloo ranks (torchrun), gathered vs
gallery-sharded, seed folder vs shards (uneven shards, pair shards with repeated images); recall
checked by Chinese-CLIP's own evaluation scripts run on our prediction files."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnclip_scale.checkpoints import load_model
from cnclip_scale.eval.zeroshot import TEMPLATES
from cnclip_scale.launch_env import free_port
from cnclip_scale.model import Tokenizer, build_model, model_config
from cnclip_scale.model.configs import TINY
from cnclip_scale.model.weights import write_checkpoint
from tests.helpers.data_shards import build_shard_set

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CN_CLIP_EVAL = Path(__import__("cn_clip").__file__).parent / "eval"
COMPARED = [
    "test_predictions.jsonl",
    "test_tr_predictions.jsonl",
    "output.json",
    "output_tr.json",
    "test_texts.reference.jsonl",
    "test_texts.txt_feat.npy",
]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def evaluate(out: Path, ckpt: str, data: str, ranks: int = 1, *extra: str) -> Path:
    script = [
        str(ROOT / "launch/evaluate.py"),
        "--checkpoint",
        ckpt,
        "--data",
        data,
        "--split",
        "test",
        "--output",
        str(out),
        "--batch-size",
        "4",
        *extra,
    ]
    if ranks == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(ranks),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            *script,
        ]
    # A new session, so that a hung run is stopped together with its ranks (killpg), not orphaned.
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    return out if proc.returncode == 0 else RuntimeError(f"rc {proc.returncode}: {output[-5000:]}")


def ok(run) -> Path:
    """A run's output folder; a failed run fails only the tests that use it."""
    if isinstance(run, Exception):
        pytest.fail(str(run))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    model = build_model(model_config(TINY))
    ckpt = str(root / "tiny.safetensors")
    write_checkpoint(model.state_dict(), model.config, ckpt, "native")
    # 31 images in shards of 7: 5 shards of uneven size, rank shares 16/15, workers get 8/8/8/7.
    shards = build_shard_set(str(root / "img"), 31, 7, split="test")
    classes = root / "classes.txt"  # caption stems ("…（k）" without the counter) as class names
    classes.write_text("\n".join(sorted({t["text"].split("（")[0] for t in shards.truth.texts})), encoding="utf-8")
    by_pair = build_shard_set(str(root / "pair"), 31, 9, group="pair", split="test", seed_dir=str(root / "pair_seed"))
    return {
        "seed": evaluate(root / "seed", ckpt, shards.seed_dir, 1, "--workers", "0"),
        "one": evaluate(root / "one", ckpt, shards.url, 1, "--workers", "2", "--save-features"),
        "two": evaluate(root / "two", ckpt, shards.url, 2, "--workers", "2", "--zeroshot-classes", str(classes)),
        "sharded": evaluate(root / "sharded", ckpt, shards.url, 2, "--workers", "1", "--gallery-sharded"),
        "by_pair": evaluate(root / "by_pair", ckpt, by_pair.url, 2, "--workers", "1"),
        "truth": shards.truth,
        "seed_dir": shards.seed_dir,
        "ckpt": ckpt,
        "classes": classes,
    }


@pytest.mark.parametrize("other", ["seed", "two", "sharded", "by_pair"])
def test_same_outputs_whatever_the_layout(runs, other):
    """Shards on 1 rank are the baseline: a seed folder, 2 ranks, gallery-sharded, and pair shards (an image in
    several samples) agree."""
    for name in COMPARED:
        assert (ok(runs["one"]) / name).read_bytes() == (ok(runs[other]) / name).read_bytes(), name


def test_every_image_and_text_once(runs):
    summary = json.loads((ok(runs["two"]) / "summary.json").read_text())
    truth = runs["truth"]
    assert (
        summary["world_size"] == 2 and summary["images"] == len(truth.images) and summary["texts"] == len(truth.texts)
    )
    assert summary["pairs"] == sum(len(t["image_ids"]) for t in truth.texts)
    ids = np.load(ok(runs["two"]) / "test_imgs.img_ids.npy").tolist()
    assert ids == sorted(int(i) for i in truth.images)
    parts = [np.load(ok(runs["sharded"]) / f"test_imgs.part{r:05d}-of-00002.img_ids.npy").tolist() for r in range(2)]
    assert sorted(parts[0] + parts[1]) == ids and not set(parts[0]) & set(parts[1])
    full = np.load(ok(runs["two"]) / "test_imgs.img_feat.npy")
    sharded = np.concatenate(
        [np.load(ok(runs["sharded"]) / f"test_imgs.part{r:05d}-of-00002.img_feat.npy") for r in range(2)]
    )
    assert np.array_equal(full, sharded[np.argsort(parts[0] + parts[1])])


def test_zeroshot_on_two_ranks_equals_a_direct_computation(runs):
    """Top-1/top-5 recomputed in this process: the saved image features of the 1-rank run against class features
    made here from the model's own text tower (the re-normalised mean of the normalised template features)."""
    zs = json.loads((ok(runs["two"]) / "summary.json").read_text())["zeroshot"]
    truth = runs["truth"]
    assert zs["images"] == len(truth.images) and zs["unlabelled"] == 0 and zs["templates"] == len(TEMPLATES)
    classes = runs["classes"].read_text(encoding="utf-8").splitlines()
    model, tokenizer = load_model(runs["ckpt"]).eval(), Tokenizer()
    with torch.no_grad():
        class_feats = []
        for name in classes:
            ids, mask = tokenizer([t.replace("{}", name) for t in TEMPLATES])
            class_feats.append(torch.nn.functional.normalize(model.encode_text(ids, mask).mean(dim=0), dim=0))
    feats = np.load(ok(runs["one"]) / "test_imgs.img_feat.npy")
    image_ids = np.load(ok(runs["one"]) / "test_imgs.img_ids.npy").tolist()
    captions = truth.captions()
    # an image's class: the longest class name found in its captions (an image may carry two texts)
    labels = np.array(
        [
            max(
                (k for k, c in enumerate(classes) if any(c in text for _, text in captions[str(i)])),
                key=lambda k: len(classes[k]),
            )
            for i in image_ids
        ]
    )
    ranked = np.argsort(-(feats @ torch.stack(class_feats).numpy().T), axis=1, kind="stable")
    assert zs["top1"] == pytest.approx(100 * np.mean(ranked[:, 0] == labels), abs=1e-6)
    assert zs["top5"] == pytest.approx(100 * np.mean((ranked[:, :5] == labels[:, None]).any(axis=1)), abs=1e-6)


def test_feature_jsonl_matches_npy(runs):
    lines = (ok(runs["one"]) / "test_imgs.img_feat.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert set(first) == {"image_id", "feature"} and isinstance(first["image_id"], int)
    feats = np.load(ok(runs["one"]) / "test_imgs.img_feat.npy")
    assert np.array_equal(np.asarray([json.loads(x)["feature"] for x in lines], dtype=np.float32), feats)
    assert len((ok(runs["one"]) / "test_texts.txt_feat.jsonl").read_text().splitlines()) == len(runs["truth"].texts)


def test_recall_equals_chinese_clip_evaluation_scripts(runs, tmp_path):
    """evaluation.py / evaluation_tr.py (cn-clip 1.6.0) on our prediction files and the seed's own texts.jsonl."""
    out = ok(runs["two"])
    texts = tmp_path / "test_texts.jsonl"
    shutil.copy(Path(runs["seed_dir"]) / "test_texts.jsonl", texts)
    env = _env()

    def run(script, *args):
        subprocess.run(
            [sys.executable, str(CN_CLIP_EVAL / script), *map(str, args)],
            env=env,
            check=True,
            capture_output=True,
            cwd=tmp_path,
            timeout=120,
        )

    run("evaluation.py", texts, out / "test_predictions.jsonl", tmp_path / "t2i.json")
    run("transform_ir_annotation_to_tr.py", "--input", texts)
    run("evaluation_tr.py", tmp_path / "test_texts.tr.jsonl", out / "test_tr_predictions.jsonl", tmp_path / "i2t.json")
    for ours, theirs in [("output.json", "t2i.json"), ("output_tr.json", "i2t.json")]:
        want = json.loads((tmp_path / theirs).read_text())
        assert want["success"] is True, want
        assert (out / ours).read_text() == (tmp_path / theirs).read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["t2i"]["score"] == json.loads((tmp_path / "t2i.json").read_text())["score"]


def test_report_renders_in_headless_chromium(runs, tmp_path):
    """The 2-rank report (thumbnails from both ranks) in Debian's chromium: the screenshot shows photos and text."""
    from PIL import Image, ImageStat

    page = ok(runs["two"]) / "report.html"
    body = page.read_text()
    assert "http" not in body.replace("http-equiv", "")  # self-contained: nothing fetched
    assert body.count("data:image/jpeg;base64,") >= 12 and '<div class="ph">' not in body  # every thumbnail found
    assert body.count("<div class='q'><h3>") == 12 and "R@10" in body
    assert sum(t["text"] in body for t in runs["truth"].texts) >= 12  # captions shown
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser and not os.environ.get("CI"):
        pytest.skip("chromium not installed and this is not CI (make test-deps installs it as root; Debian 'chromium')")
    assert browser, "chromium not installed (make test-deps installs it; Debian package 'chromium')"
    shot = tmp_path / "report.png"
    proc = subprocess.Popen(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1000,1400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 1400)
    # A blank or text-only page has a handful of colours; photo thumbnails bring thousands.
    colours = len(np.unique(np.asarray(image.resize((500, 700))).reshape(-1, 3), axis=0))
    assert colours > 2000, colours
    assert max(ImageStat.Stat(image).stddev) > 30
