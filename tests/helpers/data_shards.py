"""Shard sets for the data-pipeline tests, made the real way: a seed-layout split of real photos
(`tests.helpers.seed_data`) converted by the shard converter (`cnclip_scale.shards`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cnclip_scale.shards.convert import Options, convert_split
from cnclip_scale.shards.samples import sample_key
from cnclip_scale.shards.writer import Destination
from tests.helpers.seed_data import SeedSplit, write_seed_split


@dataclass
class ShardSet:
    url: str  # the split folder (holds manifest.json)
    manifest: dict
    truth: SeedSplit
    seed_dir: str

    @property
    def manifest_url(self) -> str:
        return f"{self.url}/manifest.json"

    @property
    def sizes(self) -> list[int]:
        return [s["samples"] for s in self.manifest["shards"]]

    def keys(self) -> set[str]:
        """Every sample key the shards hold (group=image: one per image)."""
        if self.manifest["group"] == "image":
            return {sample_key(i) for i in self.truth.images}
        return {sample_key(str(i), t["text_id"]) for t in self.truth.texts for i in t["image_ids"]}


def build_shard_set(
    root: str,
    n_images: int,
    samples_per_shard: int,
    group: str = "image",
    split: str = "train",
    size: int = 48,
    first_image_id: int = 1000000,
    dst: str | None = None,
    storage_options: dict | None = None,
    seed_dir: str | None = None,
) -> ShardSet:
    """Write a seed split under `root/seed` (or reuse `seed_dir`) and convert it to `dst` (default `root/shards`)."""
    seed_dir = seed_dir or os.path.join(root, "seed")
    truth = write_seed_split(seed_dir, split, n_images, size=size, first_image_id=first_image_id)
    dst = dst or os.path.join(root, "shards")
    opts = Options(
        group=group, samples_per_shard=samples_per_shard, progress=False, storage_options=dict(storage_options or {})
    )
    manifest = convert_split(seed_dir, split, Destination(dst, storage_options), opts)
    return ShardSet(f"{dst}/{split}", manifest, truth, seed_dir)
