"""The evaluation reader: every image once across ranks × workers, all its captions, no shuffle;
from shards or straight from a Chinese-CLIP seed folder."""

import os

import pytest
import torch

from cnclip_scale.data.pipeline import build_eval_loader


def _read(source, world=2, workers=2, **kw):
    per_rank = []
    for rank in range(world):
        loader = build_eval_loader(
            source, image_size=32, batch_size=4, workers=workers, rank=rank, world_size=world, **kw
        )
        per_rank.append(list(loader))
    return per_rank


def _check(per_rank, truth):
    images = {}
    for batches in per_rank:
        for b in batches:
            assert b["images"].dtype == torch.uint8 and b["images"].shape[1:] == (3, 32, 32)
            assert len(b["images"]) == len(b["image_ids"]) == len(b["texts"]) <= 4
            for image_id, texts in zip(b["image_ids"], b["texts"]):
                assert image_id not in images  # exactly once across ranks
                images[image_id] = texts
    expected = {i: [(str(t), s) for t, s in c] for i, c in truth.captions().items()}
    assert images == expected  # every image, with all its captions


@pytest.mark.parametrize("world,workers", [(2, 2), (3, 0), (1, 1)])
def test_shards_every_image_once_with_all_captions(uneven, world, workers):
    _check(_read(uneven.manifest_url, world, workers), uneven.truth)


def test_reading_order_is_manifest_order_without_shuffle(uneven):
    (batches,) = _read(uneven.url, world=1, workers=0)
    assert [i for b in batches for i in b["image_ids"]] == list(uneven.truth.images)


def test_seed_folder_reads_the_same_as_its_shards(uneven):
    _check(_read(uneven.seed_dir, split="train"), uneven.truth)
    _check(_read(os.path.join(uneven.seed_dir, "train_imgs.tsv")), uneven.truth)
    from_seed = [b["images"] for b in _read(uneven.seed_dir, world=1, workers=0, split="train")[0]]
    from_shards = [b["images"] for b in _read(uneven.url, world=1, workers=0)[0]]
    assert torch.equal(torch.cat(from_seed), torch.cat(from_shards))  # same pixels either way


def test_more_ranks_than_images_does_not_fail(uneven):
    per_rank = _read(uneven.url, world=20, workers=0)
    assert sum(len(b["image_ids"]) for batches in per_rank for b in batches) == 17
    assert any(not batches for batches in per_rank)


def test_missing_seed_file_is_an_error(tmp_path):
    (tmp_path / "valid_imgs.tsv").write_text("")
    with pytest.raises(FileNotFoundError, match="valid_texts.jsonl"):
        build_eval_loader(
            str(tmp_path / "valid_imgs.tsv"), image_size=32, batch_size=4, workers=0, rank=0, world_size=1
        )


def test_seed_folder_with_a_utf8_bom_reads_the_first_image_and_text(tmp_path):
    """Issue 13 item 9: a BOM made the first image id "\\ufeff1000000" and dropped the first caption."""
    from tests.helpers.seed_data import write_seed_split

    truth = write_seed_split(str(tmp_path), "valid", 5, size=32)
    for name in ("valid_imgs.tsv", "valid_texts.jsonl"):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    per_rank = _read(str(tmp_path), world=1, workers=0, split="valid")
    _check(per_rank, truth)
    loader = build_eval_loader(
        str(tmp_path), image_size=32, batch_size=4, workers=0, rank=0, world_size=1, split="valid"
    )
    list(loader)
    assert loader.stats()["corrupt_samples"] == 0


def test_seed_folder_text_id_1_and_string_1_are_one_id(tmp_path):
    """Issue 13 item 7, read straight from a seed folder: the later "1" is skipped (as the converter rejects it),
    so no image gets another text's caption under the same id."""
    import json

    from tests.helpers.seed_data import write_seed_split

    truth = write_seed_split(str(tmp_path), "valid", 4, size=32, first_text_id=1)
    with open(tmp_path / "valid_texts.jsonl", "a", encoding="utf-8") as f:
        f.write(
            json.dumps(
                {"text_id": "1", "text": "另一段文字", "image_ids": [int(i) for i in truth.images]}, ensure_ascii=False
            )
            + "\n"
        )
    loader = build_eval_loader(
        str(tmp_path), image_size=32, batch_size=4, workers=0, rank=0, world_size=1, split="valid"
    )
    _check([list(loader)], truth)
    assert loader.stats()["corrupt_samples"] == 1
