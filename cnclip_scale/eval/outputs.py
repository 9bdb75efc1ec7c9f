"""Every file the evaluator writes, in the formats Chinese-CLIP's tools read (see the seed README):
feature JSONL, prediction JSONL, ``output.json``; plus the compact ``.npy`` form and a reference JSONL."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from cnclip_scale.eval.ids import json_id


def ids_array(ids: list[str]) -> np.ndarray:
    """int64 when every id is a plain number, else unicode: loadable with ``allow_pickle=False`` either way."""
    as_json = [json_id(i) for i in ids]
    if all(isinstance(i, int) for i in as_json):
        return np.asarray(as_json, dtype=np.int64)
    return np.asarray([str(i) for i in ids], dtype=str)


def save_npy(out_dir: str, stem: str, kind: str, feats: torch.Tensor, ids: list[str]) -> None:
    """``{stem}.{kind}_feat.npy`` (float32 N×D) + ``{stem}.{kind}_ids.npy``, e.g. ``test_imgs.img_feat.npy``."""
    np.save(os.path.join(out_dir, f"{stem}.{kind}_feat.npy"), feats.float().cpu().numpy())
    np.save(os.path.join(out_dir, f"{stem}.{kind}_ids.npy"), ids_array(ids))


def load_npy(out_dir: str, stem: str, kind: str) -> tuple[np.ndarray, list]:
    feats = np.load(os.path.join(out_dir, f"{stem}.{kind}_feat.npy"))
    return feats, np.load(os.path.join(out_dir, f"{stem}.{kind}_ids.npy")).tolist()


def write_features_jsonl(path: str, id_name: str, ids: list[str], feats: torch.Tensor, mode: str = "w") -> None:
    """Seed format: ``{"image_id": 1000002, "feature": [...]}`` per line."""
    array = feats.float().cpu().numpy()
    with open(path, mode, encoding="utf-8") as f:
        for i, row in zip(ids, array):
            f.write(json.dumps({id_name: json_id(i), "feature": row.tolist()}) + "\n")


def read_features_jsonl(path: str, id_name: str) -> tuple[list, np.ndarray]:
    ids, feats = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            ids.append(obj[id_name])
            feats.append(obj["feature"])
    return ids, np.asarray(feats, dtype=np.float32)


def write_predictions(
    path: str,
    query_name: str,
    result_name: str,
    query_ids: list[str],
    result_ids: list[str],
    index: torch.Tensor,
    k: int,
) -> None:
    """``{"text_id": 8428, "image_ids": [top-k]}`` per query (``-1`` padding, when the gallery is short, is dropped)."""
    with open(path, "w", encoding="utf-8") as f:
        for q, row in zip(query_ids, index[:, :k].tolist()):
            f.write(
                json.dumps({query_name: json_id(q), result_name: [json_id(result_ids[g]) for g in row if g >= 0]})
                + "\n"
            )


def write_reference(path: str, split) -> None:
    """The ground truth as a seed ``{split}_texts.jsonl`` (text_id, text, image_ids), for ``evaluation.py``. Texts
    without ground truth are left out: ``evaluation.py`` divides by the texts its reference lists (and ignores
    predictions for others), so with this file it scores exactly the queries our recall counts."""
    images: dict[int, list] = {}
    for t, i in zip(split.gt_text.tolist(), split.gt_image.tolist()):
        images.setdefault(t, []).append(json_id(split.image_ids[i]))
    with open(path, "w", encoding="utf-8") as f:
        for t, (text_id, text) in enumerate(zip(split.text_ids, split.texts)):
            if t not in images:
                continue
            f.write(
                json.dumps(
                    {"text_id": json_id(text_id), "text": text, "image_ids": images.get(t, [])}, ensure_ascii=False
                )
                + "\n"
            )


def seed_score(recall: dict) -> dict:
    """``output.json`` exactly as ``evaluation.py``'s ``report_score`` writes it."""
    return {
        "success": True,
        "score": recall["score"],
        "scoreJson": {k: recall[k] for k in ("score", "mean_recall", "r1", "r5", "r10")},
    }


def seed_error(message: str) -> dict:
    """``output.json`` for a run that scored nothing, as ``evaluation.py``'s ``report_error_msg`` writes it."""
    return {"errorDetail": message, "errorMsg": message, "score": 0, "scoreJson": {}, "success": False}


def write_json(path: str, obj, pretty: bool = False) -> None:
    """``pretty=False`` writes byte-for-byte what the seed's ``json.dump(info, f)`` writes."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, **({"ensure_ascii": False, "indent": 2} if pretty else {}))
