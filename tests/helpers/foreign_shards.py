"""Shards another tool wrote, laid out the way img2dataset 1.47 writes them (its ``WebDatasetSampleWriter`` and
``write_stats``): ``00000.tar`` ... written by ``webdataset.TarWriter`` with ``KEY.jpg`` + ``KEY.txt`` + ``KEY.json``
per sample, keys of shard id and sample number (``000000003``: 5 + 4 digits for 10,000 samples per shard), failed
downloads missing from the tar (their keys skipped), ``00000_stats.json`` (``count``, ``successes``, ...),
``00000.parquet`` of every row's metadata, and no manifest."""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from tests.helpers.images import make_image


@dataclass
class ForeignShards:
    folder: str
    sizes: list[int]  # samples per tar
    captions: dict[str, str]  # key -> caption of every written sample

    def shard_names(self) -> list[str]:
        return [f"{k:05d}.tar" for k in range(len(self.sizes))]


def write_img2dataset_shards(folder: str, rows_per_shard: list[int], size: int = 48, failed_every: int = 4):
    """Shards of ``rows_per_shard[k]`` input rows each; every ``failed_every``-th row "failed to download" (as
    img2dataset: absent from the tar, counted in ``count`` but not ``successes``)."""
    os.makedirs(folder, exist_ok=True)
    captions, sizes, index = {}, [], 0
    for shard_id, rows in enumerate(rows_per_shard):
        name = f"{shard_id:05d}"
        metas, successes = [], 0
        with wds.TarWriter(os.path.join(folder, f"{name}.tar")) as sink:
            for row in range(rows):
                key = f"{shard_id * 10**4 + row:09d}"
                data, caption = make_image(index, size=size)
                index += 1
                failed = failed_every and row % failed_every == failed_every - 1
                meta = {
                    "url": f"file:///photos/{key}.jpg",
                    "caption": caption,
                    "key": key,
                    "status": "failed_to_download" if failed else "success",
                    "error_message": "HTTP 404" if failed else None,
                    "width": None if failed else size,
                    "height": None if failed else size,
                    "original_width": None if failed else size,
                    "original_height": None if failed else size,
                    "exif": None,
                    "sha256": None if failed else hashlib.sha256(data).hexdigest(),
                }
                metas.append(meta)
                if failed:
                    continue
                Image.open(io.BytesIO(data)).verify()
                sink.write({"__key__": key, "jpg": data, "txt": caption, "json": json.dumps(meta, indent=4)})
                captions[key] = caption
                successes += 1
        stats = {
            "count": rows,
            "successes": successes,
            "failed_to_download": rows - successes,
            "failed_to_resize": 0,
            "duration": 0.1,
            "start_time": 0.0,
            "end_time": 0.1,
            "status_dict": {"success": successes, "HTTP 404": rows - successes},
        }
        with open(os.path.join(folder, f"{name}_stats.json"), "w") as f:
            json.dump(stats, f, indent=4)
        pq.write_table(pa.Table.from_pylist(metas), os.path.join(folder, f"{name}.parquet"))
        sizes.append(successes)
    return ForeignShards(folder, sizes, captions)
