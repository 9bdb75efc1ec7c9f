"""inspect_shards: counts, sha256 check against the stats, sample preview, contact sheet."""
import json

from PIL import Image

from conftest import convert, run_inspect


def test_inspect_verifies_shows_and_draws(clean_seed, tmp_path):
    root, truth = clean_seed
    out = tmp_path / "out"
    assert convert("--src", root, "--dst", out, "--splits", "valid", "--samples-per-shard", "5") == 0
    ok = run_inspect(out / "valid" / "manifest.json", "--verify", "--show", "2", "--montage", tmp_path / "sheet.png")
    assert ok.returncode == 0, ok.stderr
    assert "valid: 3 shards, 12 samples" in ok.stdout and "sha256 and sample counts match" in ok.stdout
    first = truth["valid"].texts[0]
    assert f"[{first['text_id']}] {first['text']}" in ok.stdout
    sheet = Image.open(tmp_path / "sheet.png")
    captions = json.loads(sheet.text["captions"])
    first_two = list(truth["valid"].images)[:2]
    assert [str(c["image_id"]) for c in captions] == first_two
    assert [(t["text_id"], t["text"]) for t in captions[0]["texts"]] == truth["valid"].captions()[first_two[0]]


def test_inspect_catches_a_changed_or_missing_shard(clean_seed, tmp_path):
    root, _ = clean_seed
    out = tmp_path / "out"
    assert convert("--src", root, "--dst", out, "--splits", "valid", "--samples-per-shard", "5") == 0
    shard = out / "valid" / "valid-000001.tar"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF  # same size: only the hash can tell
    shard.write_bytes(bytes(data))
    assert run_inspect(out / "valid").returncode == 0
    changed = run_inspect(out / "valid", "--verify")
    assert changed.returncode == 1 and "valid-000001.tar: sha256" in changed.stdout
    shard.unlink()
    missing = run_inspect(out / "valid")
    assert missing.returncode == 1 and "valid-000001.tar: missing" in missing.stdout
    nothing = run_inspect(tmp_path / "nowhere")
    assert nothing.returncode == 2 and nothing.stderr.startswith("inspect_shards: error: no readable manifest.json")
