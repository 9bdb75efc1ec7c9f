"""Shards to a real S3 server (SeaweedFS on loopback, started by the session fixture)."""

import io
import json
import os
import secrets
import tarfile

import pytest

from cnclip_scale.shards.writer import Destination
from tests.helpers.shards import image_samples, run_inspect, run_tool

pytestmark = pytest.mark.integration


def _read_split(fs, prefix):
    manifest = json.loads(fs.cat_file(f"{prefix}/manifest.json"))
    samples = {}
    for entry in manifest["shards"]:
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(f"{prefix}/{entry['shard']}"))) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return manifest, samples


@pytest.fixture
def bucket(s3_server):
    name = f"shards-{secrets.token_hex(4)}"
    s3_server.make_bucket(name)
    return name


def test_convert_to_s3_reads_back_and_resumes(s3_server, bucket, clean_seed):
    root, truth = clean_seed
    dst, options = f"s3://{bucket}/ds", json.dumps(s3_server.storage_options())
    first = run_tool(
        "--src",
        root,
        "--dst",
        dst,
        "--splits",
        "train,valid",
        "--workers",
        "2",
        "--samples-per-shard",
        "8",
        "--storage-options",
        options,
    )
    assert first.returncode == 0, first.stderr
    fs = s3_server.filesystem()
    for split in ("train", "valid"):
        manifest, samples = _read_split(fs, f"{bucket}/ds/{split}")
        assert image_samples(samples) == {i: (d, truth[split].captions()[i]) for i, d in truth[split].images.items()}
        assert all(fs.exists(f"{bucket}/ds/{split}/{e['shard'][:-4]}.stats.json") for e in manifest["shards"])
        assert fs.exists(f"{bucket}/ds/{split}/rejects.jsonl")
    # Credentials from the usual AWS environment variables work too; a rerun keeps every finished shard.
    env = {**os.environ, **s3_server.env()}
    again = run_tool("--src", root, "--dst", dst, "--splits", "train", "--samples-per-shard", "8", env=env)
    assert again.returncode == 0, again.stderr
    manifest = json.loads(fs.cat_file(f"{bucket}/ds/train/manifest.json"))
    assert manifest["resumed_shards"] == len(manifest["shards"]) == 5
    inspect = run_inspect(f"{dst}/train", "--verify", "--show", "1", "--storage-options", options)
    assert inspect.returncode == 0 and "sha256 and sample counts match" in inspect.stdout


def test_bad_credentials_and_unreachable_endpoint_fail_with_one_line(s3_server, bucket, clean_seed):
    root, _ = clean_seed
    wrong = json.dumps(s3_server.storage_options(secret="not-the-secret"))
    denied = run_tool("--src", root, "--dst", f"s3://{bucket}/x", "--splits", "valid", "--storage-options", wrong)
    assert denied.returncode == 2 and denied.stderr.count("\n") == 1
    assert denied.stderr.startswith("to_shards: error: access denied")
    nowhere = json.dumps(s3_server.storage_options(endpoint_url="http://127.0.0.1:9"))
    down = run_tool("--src", root, "--dst", f"s3://{bucket}/x", "--splits", "valid", "--storage-options", nowhere)
    assert down.returncode == 2 and down.stderr.startswith("to_shards: error: cannot reach destination")
    assert "Traceback" not in denied.stderr + down.stderr


def test_a_failed_upload_leaves_no_object(s3_server, bucket):
    dest = Destination(f"s3://{bucket}/atomic", s3_server.storage_options())
    with pytest.raises(RuntimeError):
        with dest.open_atomic("part.tar") as f:
            f.write(os.urandom(12 << 20))  # past the first multipart part: an upload is in flight
            raise RuntimeError("writer died")
    assert not s3_server.filesystem().exists(f"{bucket}/atomic/part.tar")
    with dest.open_atomic("whole.tar") as f:
        f.write(b"x" * 100)
    assert s3_server.filesystem().cat_file(f"{bucket}/atomic/whole.tar") == b"x" * 100
