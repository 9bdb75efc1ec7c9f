"""The evaluator: embed a split on every rank, rank both directions exactly, score recall, write outputs.

``evaluate_retrieval`` is what the trainer calls inside its process group; ``run_evaluation(EvalConfig)`` is
``cnclip evaluate`` (sets up its own process group from the launcher's environment, writes files).
Two modes: all-gather (every rank holds all features; queries split over ranks on a fixed grid) and
gallery-sharded (image features stay on their rank; local top-k candidates are gathered and merged).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cnclip_scale import comm
from cnclip_scale.errors import UserError
from cnclip_scale.eval import outputs, report, zeroshot
from cnclip_scale.eval.config import EvalConfig
from cnclip_scale.eval.embed import Split, embed_split, eval_mode, gather_images
from cnclip_scale.eval.retrieval import recall, sharded_topk, split_topk, topk

log = logging.getLogger("cnclip_scale.eval")
RECALL_K = 10  # recall is always reported at 1/5/10, whatever top-k the prediction files keep


class NothingToScore(UserError):
    """The split holds no texts (or no images): recall over zero queries is not a score of 0."""


@dataclass
class Retrieval:
    split: Split
    t2i_index: torch.Tensor  # texts × K canonical image indices, every rank
    i2t_index: torch.Tensor  # images × K canonical text indices, every rank
    t2i: dict
    i2t: dict
    image_feats: torch.Tensor | None  # all images (all-gather mode) else None


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    # Without emulation: V100 "supports" bf16 only by emulating it, far slower than its fp16 tensor cores.
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def retrieve(
    model, loader, tokenizer, *, device, dtype, top_k: int = 10, gallery_sharded: bool = False, thumbs_limit: int = 0
) -> Retrieval:
    k = max(top_k, RECALL_K)
    with eval_mode(model):
        split = embed_split(model, loader, tokenizer, device=device, dtype=dtype, thumbs_limit=thumbs_limit)
    n_images, n_texts = len(split.image_ids), len(split.texts)
    if not n_texts or not n_images:  # the same counts on every rank: all raise alike
        what = "texts" if not n_texts else "images"
        raise NothingToScore(f"has no {what}: nothing to score ({n_images} images, {n_texts} texts read)")
    if gallery_sharded:
        _, t2i = sharded_topk(split.text_feats, split.image_feats, split.image_index, k)
        _, local = topk(split.image_feats, split.text_feats, k)  # my images against every text
        rows, local = comm.gather_rows(split.image_index), comm.gather_rows(local)
        i2t = torch.empty_like(local)
        i2t[rows] = local
        image_feats = None
    else:
        image_feats = gather_images(split)
        _, t2i = split_topk(split.text_feats, image_feats, k)
        _, i2t = split_topk(image_feats, split.text_feats, k)
    return Retrieval(
        split,
        t2i,
        i2t,
        recall(t2i, split.gt_text, split.gt_image, n_images),
        recall(i2t, split.gt_image, split.gt_text, n_texts),
        image_feats,
    )


def evaluate_retrieval(
    model,
    data,
    tokenizer,
    *,
    device=None,
    dtype=None,
    top_k: int = 10,
    batch_size: int = 64,
    workers: int = 0,
    split: str | None = None,
    gallery_sharded: bool = False,
    storage_options: dict | None = None,
) -> dict:
    """Text→image and image→text recall of ``model`` on ``data`` (an eval loader for this rank, or sources for
    ``build_eval_loader``), inside an initialised process group (or none). Same dict on every rank:
    ``{"t2i": {"r1","r5","r10","mean_recall","score","queries","predicted_only"}, "i2t": {...}, "images", "texts",
    "pairs"}``: recall over the ``queries`` with ground truth (0.0 and meaningless when there are none)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = dtype or default_dtype(device)
    if not hasattr(data, "__iter__") or isinstance(data, (str, list, tuple)):
        from cnclip_scale.data.pipeline import build_eval_loader

        data = build_eval_loader(
            data,
            image_size=model.image_size,
            batch_size=batch_size,
            workers=workers,
            rank=comm.rank(),
            world_size=comm.world(),
            split=split,
            storage_options=storage_options,
        )
    res = retrieve(model, data, tokenizer, device=device, dtype=dtype, top_k=top_k, gallery_sharded=gallery_sharded)
    return {
        "t2i": res.t2i,
        "i2t": res.i2t,
        "images": len(res.split.image_ids),
        "texts": len(res.split.texts),
        "pairs": int(res.split.gt_text.numel()),
    }


# --------------------------------------------------------------------------------------- the command


def load_model_once(checkpoint, device: torch.device):
    """The checkpoint's model on every rank. A DeepSpeed checkpoint is assembled into fp32 from every ZeRO partition
    (all optimizer states read): rank 0 does that once and broadcasts the weights, rather than every rank alone."""
    from cnclip_scale.checkpoints import WeightsError, detect_format, load_model, read_checkpoint
    from cnclip_scale.model.clip import build_model
    from cnclip_scale.model.configs import CLIPConfig
    from cnclip_scale.model.weights import load_native_into

    if comm.world() == 1 or detect_format(checkpoint) != "deepspeed":
        return load_model(checkpoint).to(device)
    sd, found = None, None
    if comm.rank() == 0:
        try:
            sd, config, _ = read_checkpoint(checkpoint)
            found = config.to_dict()
        except WeightsError as e:
            found = str(e)
    found = comm.broadcast_object(found)
    if isinstance(found, str):
        raise WeightsError(found)
    model = build_model(CLIPConfig.from_dict(found))
    if sd is not None:
        load_native_into(model, sd)
    model.to(device)
    comm.broadcast_(list(model.state_dict().values()))
    return model


def _write_features(cfg: EvalConfig, res: Retrieval, out: str) -> None:
    s, me, w = res.split, comm.rank(), comm.world()
    imgs, txts = f"{cfg.split}_imgs", f"{cfg.split}_texts"
    local_ids = [s.image_ids[i] for i in s.image_index.tolist()]
    if res.image_feats is not None:
        if me == 0:
            outputs.save_npy(out, imgs, "img", res.image_feats, s.image_ids)
    else:  # gallery-sharded: no rank holds every image; each writes its part
        outputs.save_npy(out, f"{imgs}.part{me:05d}-of-{w:05d}", "img", s.image_feats, local_ids)
    if me == 0:
        outputs.save_npy(out, txts, "txt", s.text_feats, s.text_ids)
    if not cfg.save_features:
        return
    path = os.path.join(out, f"{imgs}.img_feat.jsonl")
    if res.image_feats is not None:
        if me == 0:
            outputs.write_features_jsonl(path, "image_id", s.image_ids, res.image_feats)
    else:  # ranks append their parts in turn (one file, rank order)
        for r in range(w):
            if r == me:
                outputs.write_features_jsonl(path, "image_id", local_ids, s.image_feats, mode="w" if r == 0 else "a")
            comm.barrier()
    if me == 0:
        outputs.write_features_jsonl(os.path.join(out, f"{txts}.txt_feat.jsonl"), "text_id", s.text_ids, s.text_feats)


def _report(cfg: EvalConfig, res: Retrieval, zs: dict | None, facts: dict, out: str) -> None:
    """Rank 0 picks the queries; each rank sends the thumbnails it holds of the images shown."""
    s, k = res.split, min(cfg.top_k, RECALL_K)
    has_text = torch.bincount(s.gt_image, minlength=len(s.image_ids)).gt(0).tolist()
    text_q, image_q = report.pick_queries(len(s.texts), len(s.image_ids), has_text)
    truth = set(zip(s.gt_text.tolist(), s.gt_image.tolist()))
    shown = {s.image_ids[g] for t in text_q for g in res.t2i_index[t, :k].tolist() if g >= 0}
    shown |= {s.image_ids[i] for i in image_q}
    thumbs = {}
    for part in comm.gather_objects({i: b for i, b in s.thumbs.items() if i in shown}):
        thumbs.update(part)
    if comm.rank() != 0:
        return
    texts = [
        (
            s.text_ids[t],
            s.texts[t],
            [(s.image_ids[g], (t, g) in truth) for g in res.t2i_index[t, :k].tolist() if g >= 0],
        )
        for t in text_q
    ]
    images = [
        (
            s.image_ids[i],
            [(s.texts[t], (t, i) in truth) for t in res.i2t_index[i, : report.TEXTS_SHOWN].tolist() if t >= 0],
        )
        for i in image_q
    ]
    page = report.render(
        title=f"cnclip_scale evaluation — {cfg.split}",
        facts=facts,
        t2i=res.t2i,
        i2t=res.i2t,
        zeroshot=zs,
        text_queries=texts,
        image_queries=images,
        thumbs=thumbs,
    )
    Path(out, "report.html").write_text(page, encoding="utf-8")


def _check_data(spec: str, storage_options: dict | None = None) -> None:
    """Each ``a::b`` part of ``--data`` exists (local) or can be listed with the credentials given (remote)."""
    for part in str(spec).split("::"):
        part = part.strip()
        if part.startswith("pipe:"):
            continue
        # a brace pattern, a shard or a manifest is checked through its folder
        folder = part.split("{")[0].rsplit("/", 1)[0] if "{" in part or part.endswith((".tar", ".json")) else part
        if "://" not in part or part.startswith("file://"):
            local = part.removeprefix("file://") if "{" not in part else (folder.removeprefix("file://") or ".")
            if not os.path.exists(local):
                raise UserError(f"--data: {part}: no such file or directory")
            continue
        import fsspec

        from cnclip_scale.shards.writer import describe_storage_error

        try:
            fs, path = fsspec.core.url_to_fs(folder.rstrip("/"), **(storage_options or {}))
            fs.ls(path)
        except FileNotFoundError:
            raise UserError(f"--data: {part}: no such file or directory") from None
        except Exception as e:  # noqa: BLE001 - wrong secret, no endpoint, no bucket: the user's to fix
            raise UserError(f"--data: {describe_storage_error(e, part, 'read')}") from None


def preflight(cfg: EvalConfig) -> tuple[list[str] | None, list[str] | None]:
    """What can be checked before the ranks start, on every rank alike (so a bad argument is one line from rank 0,
    exit 2 everywhere): counts, the checkpoint's and the data's paths, the zero-shot files. Returns the zero-shot
    class names and templates (None when not asked for)."""
    from cnclip_scale.checkpoints import detect_format

    for option, least in (("top_k", 1), ("batch_size", 1), ("context_length", 1), ("workers", 0), ("thumbs_limit", 0)):
        value = getattr(cfg, option)
        if value < least:
            raise UserError(
                f"--{option.replace('_', '-')}: must be {'at least 1' if least else '0 or more'}, got {value}"
            )
    try:
        detect_format(cfg.checkpoint)
    except UserError as e:
        raise UserError(f"--checkpoint: {e}") from None
    _check_data(cfg.data, cfg.storage_options)
    classes = templates = None
    if cfg.zeroshot_classes:
        classes = _read_list("--zeroshot-classes", cfg.zeroshot_classes, "class names")
        templates = _read_list("--templates", cfg.templates, "templates") if cfg.templates else zeroshot.TEMPLATES
    return classes, templates


def _read_list(option: str, path: str, what: str) -> list[str]:
    try:
        lines = zeroshot.read_lines(path) if option == "--zeroshot-classes" else zeroshot.read_templates(path)
    except FileNotFoundError:
        raise UserError(f"{option}: {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{option}: {path}: cannot read it ({e})") from None
    except ValueError as e:  # a template without '{}'
        raise UserError(f"{option}: {e}") from None
    if not lines:
        raise UserError(f"{option}: {path}: no {what} (one per line)")
    return lines


def run_evaluation(cfg: EvalConfig) -> dict:
    """``cnclip evaluate`` (see its ``--help``): checks ``cfg`` before any process group starts, then evaluates on
    every rank of the launcher's job. Returns the summary (every rank)."""
    from cnclip_scale.data.pipeline import build_eval_loader
    from cnclip_scale.model.tokenizer import Tokenizer

    classes, templates = preflight(cfg)
    info, device, created = comm.start(use_deepspeed=False)
    try:
        times = {}
        t0 = time.perf_counter()
        dtype = {"auto": default_dtype(device), "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
            cfg.precision
        ]
        model = load_model_once(cfg.checkpoint, device)
        ckpt_dir = cfg.checkpoint if os.path.isdir(cfg.checkpoint) else None
        context_length = min(cfg.context_length, model.config.text.max_position_embeddings)
        tokenizer = Tokenizer.for_model_dir(ckpt_dir, context_length)
        try:  # every rank resolves the same sources, so all raise alike
            loader = build_eval_loader(
                cfg.data,
                image_size=model.image_size,
                batch_size=cfg.batch_size,
                workers=cfg.workers,
                rank=comm.rank(),
                world_size=comm.world(),
                split=cfg.split,
                storage_options=cfg.storage_options,
            )
        except UserError:
            raise
        except (ValueError, FileNotFoundError) as e:  # no manifest or shards, a seed file missing for this split
            raise UserError(f"--data: {e}") from None
        times["load"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            res = retrieve(
                model,
                loader,
                tokenizer,
                device=device,
                dtype=dtype,
                top_k=cfg.top_k,
                gallery_sharded=cfg.gallery_sharded,
                thumbs_limit=cfg.thumbs_limit if cfg.write_report else 0,
            )
        except NothingToScore as e:
            message = f"split {cfg.split!r} {e}"
            if comm.rank() == 0:  # the seed's tools read output.json: say it failed rather than score 0
                os.makedirs(cfg.output, exist_ok=True)
                for name in ("output.json", "output_tr.json"):
                    outputs.write_json(os.path.join(cfg.output, name), outputs.seed_error(message))
            raise NothingToScore(message) from None
        times["embed_and_rank"] = time.perf_counter() - t0
        zs = None
        if classes:
            class_feats = zeroshot.class_embeddings(model, tokenizer, classes, templates, device=device, dtype=dtype)
            local_ids = [res.split.image_ids[i] for i in res.split.image_index.tolist()]
            zs = zeroshot.zeroshot_accuracy(
                res.split.image_feats, local_ids, res.split.local_captions, class_feats, classes
            )
            zs["templates"] = len(templates)

        out = cfg.output
        os.makedirs(out, exist_ok=True)
        t0 = time.perf_counter()
        s = res.split
        _write_features(cfg, res, out)
        loader_stats = {}
        for part in comm.gather_objects(s.loader_stats):
            for name, n in part.items():
                loader_stats[name] = loader_stats.get(name, 0) + n
        summary = {
            "split": cfg.split,
            "checkpoint": str(cfg.checkpoint),
            "data": str(cfg.data),
            "model": model.config.name,
            "images": len(s.image_ids),
            "texts": len(s.texts),
            "pairs": int(s.gt_text.numel()),
            "top_k": cfg.top_k,
            "t2i": _scored(res.t2i),
            "i2t": _scored(res.i2t),
            "zeroshot": zs,
            "world_size": comm.world(),
            "launcher": info.launcher,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "gallery_sharded": bool(cfg.gallery_sharded),
            "loader": loader_stats,
            "torch": torch.__version__,
        }
        if comm.rank() == 0:
            k = cfg.top_k
            outputs.write_predictions(
                os.path.join(out, f"{cfg.split}_predictions.jsonl"),
                "text_id",
                "image_ids",
                s.text_ids,
                s.image_ids,
                res.t2i_index,
                k,
            )
            outputs.write_predictions(
                os.path.join(out, f"{cfg.split}_tr_predictions.jsonl"),
                "image_id",
                "text_ids",
                s.image_ids,
                s.text_ids,
                res.i2t_index,
                k,
            )
            if res.t2i["queries"]:  # the texts with ground truth only: evaluation.py scores exactly our subset
                outputs.write_reference(os.path.join(out, f"{cfg.split}_texts.reference.jsonl"), s)
            for name, r, what in (("output.json", res.t2i, "text"), ("output_tr.json", res.i2t, "image")):
                outputs.write_json(
                    os.path.join(out, name), outputs.seed_score(r) if r["queries"] else _no_truth(r, what)
                )
        if cfg.write_report:
            facts = {k: summary[k] for k in ("model", "images", "texts", "world_size", "device", "dtype")}
            _report(cfg, res, zs, facts, out)
        times["write"] = time.perf_counter() - t0
        summary["timings_s"] = {k: round(v, 3) for k, v in times.items()}
        if comm.rank() == 0:
            outputs.write_json(os.path.join(out, "summary.json"), summary, pretty=True)
            log.info("t2i %s | i2t %s", _line(res.t2i, "text"), _line(res.i2t, "image"))
        comm.barrier()
        return summary
    finally:
        if created:
            comm.stop()


def _line(r: dict, what: str) -> str:
    """``R@1 20.34 R@5 ... MR ... (59 text queries scored, 3 predicted only)``, or ``no ground truth (...)``."""
    counts = f"{r['queries']} {what} queries scored, {r['predicted_only']} predicted only"
    if not r["queries"]:
        return f"no ground truth: nothing scored ({counts})"
    return " ".join(f"{k.upper()} {r[k]:.2f}" for k in ("r1", "r5", "r10")) + f" MR {r['mean_recall']:.2f} ({counts})"


def _scored(r: dict) -> dict:
    """The recall dict for summary.json; without any ground truth the counts only, not recall 0."""
    if r["queries"]:
        return r
    return {"queries": 0, "predicted_only": r["predicted_only"], "ground_truth": False}


def _no_truth(r: dict, what: str) -> dict:
    """``output.json`` for a split whose queries have no ground truth: the seed's own not-scored form
    (``success: false``, as ``evaluation.py`` writes when it cannot score), saying why; the run still succeeds."""
    return outputs.seed_error(
        f"no ground truth: {r['predicted_only']} {what} queries predicted, none has ground truth, nothing scored"
    )


__all__ = ["evaluate_retrieval", "run_evaluation", "retrieve", "load_model_once"]
