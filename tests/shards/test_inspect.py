"""inspect_shards: counts, sha256 check against the stats, sample preview, contact sheet."""

import json

from PIL import Image

from tests.helpers.shards import convert, run_inspect


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


def test_inspect_names_the_file_and_field_of_an_impossible_manifest_or_stats(clean_seed, tmp_path):
    """Issue 13 item 5: a manifest without `shards` was a KeyError traceback; a negative count went unnoticed."""
    root, _ = clean_seed
    out = tmp_path / "out"
    assert convert("--src", root, "--dst", out, "--splits", "valid", "--samples-per-shard", "5") == 0
    manifest_path = out / "valid" / "manifest.json"
    good = json.loads(manifest_path.read_text())
    for edit, field in (
        (lambda m: m.pop("shards"), "field shards is missing"),
        (lambda m: m["shards"][1].update(samples=-3), "field shards[1].samples must be a non-negative"),
        (lambda m: m["totals"].update(samples="12"), "field totals.samples must be a non-negative"),
        (lambda m: m["records"]["images"].pop("written"), "field records.images.written is missing"),
    ):
        broken = json.loads(json.dumps(good))
        edit(broken)
        manifest_path.write_text(json.dumps(broken))
        result = run_inspect(out / "valid", "--verify")
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.startswith(f"inspect_shards: error: {manifest_path}: {field}"), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    manifest_path.write_text(json.dumps(good))
    stats_path = out / "valid" / "valid-000000.stats.json"
    stats_path.write_text(json.dumps({**json.loads(stats_path.read_text()), "samples": -5}))
    result = run_inspect(out / "valid", "--verify")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"inspect_shards: error: {stats_path}: field samples must be a non-negative integer, got -5"
    )


def test_inspect_names_a_symlink_member_instead_of_blaming_the_folder(clean_seed, tmp_path):
    """Issue 13 item 12: a tar with a symlink member was reported as "cannot write to <dir>"."""
    import io
    import tarfile

    root, _ = clean_seed
    out = tmp_path / "out"
    assert convert("--src", root, "--dst", out, "--splits", "valid", "--samples-per-shard", "50") == 0
    shard = out / "valid" / "valid-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        link = tarfile.TarInfo("evil.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        for member, payload in members:
            tar.addfile(member, io.BytesIO(payload))
    manifest_path = out / "valid" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["shards"][0]["bytes"] = shard.stat().st_size
    manifest_path.write_text(json.dumps(manifest))
    shown = run_inspect(out / "valid", "--show", "1")
    assert shown.returncode == 2 and "Traceback" not in shown.stderr, shown.stderr
    assert shown.stderr.strip() == (
        f"inspect_shards: error: {shard}: member evil.jpg is a symbolic link, not a "
        f"file (to_shards writes regular files only)"
    )
    verified = run_inspect(out / "valid", "--verify")
    assert verified.returncode == 1 and "Traceback" not in verified.stderr
    assert "PROBLEM valid-000000.tar: member evil.jpg is a symbolic link" in verified.stdout
