"""Images as files on S3: a captions table of s3:// URLs (the test SeaweedFS server), read with --storage-options."""

import json
import secrets

import pytest

from tests.helpers.images import make_image
from tests.helpers.shards import convert, read_tar_samples, shard_paths

pytestmark = pytest.mark.integration


def test_table_of_s3_urls_converts_and_names_a_missing_object(s3_server, tmp_path):
    bucket = f"photos-{secrets.token_hex(4)}"
    s3_server.make_bucket(bucket)
    fs = s3_server.filesystem()
    images = {}
    for i in range(5):
        data, caption = make_image(i, 80)
        url = f"s3://{bucket}/imgs/{i}.jpg"
        fs.pipe_file(url[len("s3://") :], data)
        images[url] = (data, caption)
    missing = f"s3://{bucket}/imgs/missing.jpg"
    table = tmp_path / "urls.jsonl"
    rows = [{"url": u, "caption": c} for u, (_, c) in images.items()] + [{"url": missing, "caption": "不在桶里"}]
    table.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    options = json.dumps(s3_server.storage_options())
    args = ("--src", table, "--image-column", "url", "--dst", tmp_path / "out", "--storage-options", options)
    assert convert(*args, "--workers", "2", "--samples-per-shard", "2", "--no-progress") == 0
    got = {}
    for parts in read_tar_samples(shard_paths(tmp_path / "out" / "train")).values():
        meta = json.loads(parts["json"])
        got[meta["image_id"]] = (parts["jpg"], meta["texts"][0]["text"])
    assert got == images
    rejects = [json.loads(x) for x in (tmp_path / "out" / "train" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"], r["reason"]) for r in rejects if r["record"] == "image"] == [
        (missing, 6, "missing_file")
    ]
