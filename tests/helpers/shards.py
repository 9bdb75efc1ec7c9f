"""Running the converter and inspector as users do, and reading what they wrote with Python's tarfile only."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

from cnclip_scale.cli.to_shards import main

REPO = Path(__file__).resolve().parents[2]


def convert(*args) -> int:
    """The CLI in this process (faster than a subprocess); returns its exit code."""
    return main([str(a) for a in args])


def run_tool(*args, timeout=120, env=None, tool="to_shards.py"):
    """Run tools/to_shards.py (or another tool) as a user would; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / tool), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def run_inspect(*args, **kwargs):
    return run_tool(*args, tool="inspect_shards.py", **kwargs)


def read_tar_samples(paths):
    """{key: {ext: bytes}} over the shards at `paths`, with Python's tarfile only."""
    samples = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                assert ext not in samples.setdefault(key, {}), f"{member.name} twice"
                samples[key][ext] = tar.extractfile(member).read()
    return samples


def shard_paths(split_dir):
    manifest = json.loads((Path(split_dir) / "manifest.json").read_text())
    return [Path(split_dir) / s["shard"] for s in manifest["shards"]]


def reject_tuples(split_dir):
    lines = (Path(split_dir) / "rejects.jsonl").read_text().splitlines()
    return sorted((r["record"], r["source"], r.get("line", r.get("key")), r["reason"]) for r in map(json.loads, lines))


def image_samples(samples):
    """{image_id as str: (image bytes, [(text_id, text)])} from group=image samples."""
    out = {}
    for parts in samples.values():
        meta = json.loads(parts["json"])
        (image,) = [v for k, v in parts.items() if k not in ("json", "txt")]
        out[str(meta["image_id"])] = (image, [(t["text_id"], t["text"]) for t in meta["texts"]])
    return out
