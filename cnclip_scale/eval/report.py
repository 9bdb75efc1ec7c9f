"""``report.html``: one self-contained page (CSS inline, thumbnails as data: URIs) with the recall tables,
sampled text queries with their top-k images (hits outlined green) and sampled image queries with their
top texts (hits marked ✓)."""

from __future__ import annotations

import base64
import html
import random

SAMPLE_TEXTS = 12
SAMPLE_IMAGES = 6
TEXTS_SHOWN = 5

_CSS = """
body{font-family:"Noto Sans CJK SC","WenQuanYi Micro Hei",sans-serif;margin:24px;background:#fafafa;color:#222}
table.r{border-collapse:collapse;margin:8px 0 24px}
table.r td,table.r th{border:1px solid #bbb;padding:4px 12px;text-align:right}
.q{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px;margin:10px 0}
.q h3{margin:0 0 8px;font-size:16px}.row{display:flex;gap:8px;flex-wrap:wrap}
.cell{width:104px;font-size:11px;text-align:center}
.cell img,.ph{width:96px;height:96px;object-fit:cover;border:4px solid #ccc;border-radius:4px;display:block;margin:auto}
.hit img,.hit .ph{border-color:#1a9e3a}.ph{background:#e4e4e4;line-height:96px;color:#888}
li.hit{color:#1a9e3a;font-weight:bold}
"""


def pick_queries(n_texts: int, n_images: int, image_has_text: list[bool]) -> tuple[list[int], list[int]]:
    """A fixed sample (seeded) of text queries and of image queries that have ground truth."""
    rng = random.Random(0)
    texts = sorted(rng.sample(range(n_texts), min(SAMPLE_TEXTS, n_texts)))
    with_text = [k for k in range(n_images) if image_has_text[k]]
    images = sorted(rng.sample(with_text, min(SAMPLE_IMAGES, len(with_text))))
    return texts, images


def _img(thumb: bytes | None, label: str) -> str:
    if thumb is None:
        return f'<div class="ph">{html.escape(label)}</div>'
    return f'<img alt="{html.escape(label)}" src="data:image/jpeg;base64,{base64.b64encode(thumb).decode()}">'


def _recall_table(title: str, rows: dict[str, dict]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("", "R@1", "R@5", "R@10", "MR", "scored", "predicted only"))
    body = "".join(
        f"<tr><th>{html.escape(name)}</th>"
        + (
            "".join(f"<td>{r[k]:.2f}</td>" for k in ("r1", "r5", "r10", "mean_recall"))
            if r["queries"]
            else "<td colspan='4'>no ground truth</td>"
        )
        + f"<td>{r['queries']}</td><td>{r.get('predicted_only', 0)}</td></tr>"
        for name, r in rows.items()
    )
    return f"<h2>{html.escape(title)}</h2><table class='r'><tr>{head}</tr>{body}</table>"


def render(
    *,
    title: str,
    facts: dict,
    t2i: dict,
    i2t: dict,
    zeroshot: dict | None,
    text_queries: list[tuple[str, str, list[tuple[str, bool]]]],
    image_queries: list[tuple[str, list[tuple[str, bool]]]],
    thumbs: dict[str, bytes],
) -> str:
    """text_queries: (text_id, text, [(image_id, hit)]); image_queries: (image_id, [(text, hit)])."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        "<p>" + " · ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in facts.items()) + "</p>",
        _recall_table("Recall", {"text → image": t2i, "image → text": i2t}),
    ]
    if zeroshot:
        parts.append(
            f"<h2>Zero-shot</h2><table class='r'><tr><th>top-1</th><th>top-5</th><th>images</th><th>classes</th></tr>"
            f"<tr><td>{zeroshot['top1']:.2f}</td><td>{zeroshot['top5']:.2f}</td>"
            f"<td>{zeroshot['images']}</td><td>{zeroshot['classes']}</td></tr></table>"
        )
    parts.append("<h2>Text → image</h2>")
    for text_id, text, results in text_queries:
        cells = "".join(
            f"<div class='cell{' hit' if hit else ''}'>{_img(thumbs.get(i), i)}#{r + 1} {html.escape(i)}</div>"
            for r, (i, hit) in enumerate(results)
        )
        parts.append(
            f"<div class='q'><h3>{html.escape(text)} <small>(text {html.escape(text_id)})</small></h3>"
            f"<div class='row'>{cells}</div></div>"
        )
    parts.append("<h2>Image → text</h2>")
    for image_id, results in image_queries:
        items = "".join(
            f"<li class='{'hit' if hit else ''}'>{'✓ ' if hit else ''}{html.escape(t)}</li>" for t, hit in results
        )
        parts.append(
            f"<div class='q'><div class='row'><div class='cell'>{_img(thumbs.get(image_id), image_id)}"
            f"{html.escape(image_id)}</div><ol>{items}</ol></div></div>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
