"""Foreign weight layouts as rename tables: one table per format, read in both directions.

Each row pairs a native key pattern (a key of :class:`~cnclip_scale.model.clip.CLIP`) with the foreign one and names
the reversible tensor change between them. In a pattern, ``{i}`` is a block index, a trailing ``*`` is the rest of the
key and ``{part}`` (foreign side only) one of the pieces a native tensor is split into. Keys no row matches pass
through unchanged, so that ``load_native_into`` names them. Nothing here knows about files.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

from ..errors import UserError

Tensors = dict[str, torch.Tensor]


class WeightsError(UserError, ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says exactly what is wrong."""


@dataclass(frozen=True)
class Op:
    """A tensor change and its inverse. ``parts`` > 1: one native tensor is that many foreign ones."""

    name: str
    to_native: Callable[[list[torch.Tensor]], torch.Tensor]
    from_native: Callable[[torch.Tensor], list[torch.Tensor]]
    parts: tuple[str, ...] = ("",)


def _one_to_one(name: str, to_native: Callable, from_native: Callable) -> Op:
    return Op(name, lambda ts: to_native(ts[0]), lambda t: [from_native(t)])


SAME = _one_to_one("same", lambda t: t, lambda t: t)
TRANSPOSE = _one_to_one("transpose", torch.t, torch.t)
CLS_TOKEN = _one_to_one("[W] <-> [1, 1, W]", lambda t: t.reshape(1, 1, -1), lambda t: t.reshape(-1))
BATCH_DIM = _one_to_one("[N, W] <-> [1, N, W]", lambda t: t.unsqueeze(0), lambda t: t.squeeze(0))
SCALAR = _one_to_one("[] <-> [1]", lambda t: t.reshape(1), lambda t: t.reshape(()))
QKV = Op(
    "q, k, v <-> qkv stacked on dim 0",
    lambda ts: torch.cat(ts, dim=0),
    lambda t: list(t.chunk(3, dim=0)),
    parts=("q", "k", "v"),
)


def _compile(pattern: str, parts: tuple[str, ...] = ()) -> re.Pattern:
    regex = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)")
    regex = regex.replace(r"\{part\}", f"(?P<part>{'|'.join(map(re.escape, parts))})")
    return re.compile(regex.replace(r"\*", r"(?P<rest>.+)"))


def _fill(pattern: str, fields: dict[str, str], part: str = "") -> str:
    return pattern.replace("{i}", fields.get("i") or "").replace("*", fields.get("rest") or "").replace("{part}", part)


@dataclass(frozen=True)
class Rule:
    native: str
    foreign: str
    op: Op = SAME

    @cached_property
    def native_re(self) -> re.Pattern:
        return _compile(self.native)

    @cached_property
    def foreign_re(self) -> re.Pattern:
        return _compile(self.foreign, self.op.parts)


@dataclass(frozen=True)
class Format:
    name: str
    rules: tuple[Rule, ...]
    ignored: tuple[str, ...] = ()  # foreign keys dropped on read: buffers and heads that hold nothing we use
    read_prefix: str = ""  # dropped from foreign keys on read when present

    @cached_property
    def ignored_re(self) -> tuple[re.Pattern, ...]:
        return tuple(map(_compile, self.ignored))


_OFFICIAL_BLOCK = "visual.transformer.resblocks.{i}"
_HF_BLOCK = "vision_model.encoder.layers.{i}"

OFFICIAL = Format(
    "official",
    read_prefix="module.",
    ignored=("*.position_ids", "bert.pooler.*"),
    rules=(
        Rule("visual.cls_token", "visual.class_embedding", CLS_TOKEN),
        Rule("visual.pos_embed", "visual.positional_embedding", BATCH_DIM),
        Rule("visual.patch_embed.proj.*", "visual.conv1.*"),
        Rule("visual.norm_pre.*", "visual.ln_pre.*"),
        Rule("visual.blocks.{i}.norm1.*", f"{_OFFICIAL_BLOCK}.ln_1.*"),
        Rule("visual.blocks.{i}.attn.qkv.weight", f"{_OFFICIAL_BLOCK}.attn.in_proj_weight"),
        Rule("visual.blocks.{i}.attn.qkv.bias", f"{_OFFICIAL_BLOCK}.attn.in_proj_bias"),
        Rule("visual.blocks.{i}.attn.proj.*", f"{_OFFICIAL_BLOCK}.attn.out_proj.*"),
        Rule("visual.blocks.{i}.norm2.*", f"{_OFFICIAL_BLOCK}.ln_2.*"),
        Rule("visual.blocks.{i}.mlp.fc1.*", f"{_OFFICIAL_BLOCK}.mlp.c_fc.*"),
        Rule("visual.blocks.{i}.mlp.fc2.*", f"{_OFFICIAL_BLOCK}.mlp.c_proj.*"),
        Rule("visual.norm.*", "visual.ln_post.*"),
        Rule("visual.head.weight", "visual.proj", TRANSPOSE),
        Rule("logit_scale", "logit_scale", SCALAR),
    ),
)  # bert.* and text_projection are already ours

HF = Format(
    "hf",
    ignored=("*.position_ids", "text_model.pooler.*"),
    rules=(
        Rule("visual.cls_token", "vision_model.embeddings.class_embedding", CLS_TOKEN),
        Rule("visual.pos_embed", "vision_model.embeddings.position_embedding.weight", BATCH_DIM),
        Rule("visual.patch_embed.proj.*", "vision_model.embeddings.patch_embedding.*"),
        Rule("visual.norm_pre.*", "vision_model.pre_layrnorm.*"),
        Rule("visual.blocks.{i}.norm1.*", f"{_HF_BLOCK}.layer_norm1.*"),
        Rule("visual.blocks.{i}.attn.qkv.*", f"{_HF_BLOCK}.self_attn.{{part}}_proj.*", QKV),
        Rule("visual.blocks.{i}.attn.proj.*", f"{_HF_BLOCK}.self_attn.out_proj.*"),
        Rule("visual.blocks.{i}.norm2.*", f"{_HF_BLOCK}.layer_norm2.*"),
        Rule("visual.blocks.{i}.mlp.*", f"{_HF_BLOCK}.mlp.*"),
        Rule("visual.norm.*", "vision_model.post_layernorm.*"),
        Rule("visual.head.weight", "visual_projection.weight"),
        Rule("bert.*", "text_model.*"),
        Rule("text_projection", "text_projection.weight", TRANSPOSE),
        Rule("logit_scale", "logit_scale", SCALAR),
    ),
)

# Chinese-CLIP's RN50: our ModifiedResNet (resnet.py) keeps cn_clip's visual.* names, so only the shared keys change.
OFFICIAL_RN = Format(
    "official_rn",
    read_prefix=OFFICIAL.read_prefix,
    ignored=OFFICIAL.ignored,
    rules=(Rule("logit_scale", "logit_scale", SCALAR),),
)

FOREIGN_FORMATS = {f.name: f for f in (OFFICIAL, HF, OFFICIAL_RN)}


def _format(fmt: str) -> Format:
    if fmt not in FOREIGN_FORMATS:
        raise WeightsError(f"unknown weight layout {fmt!r}; choose one of {sorted(FOREIGN_FORMATS)}")
    return FOREIGN_FORMATS[fmt]


def _match(rules: tuple[Rule, ...], key: str, side: str) -> tuple[Rule, dict[str, str]] | tuple[None, None]:
    for rule in rules:
        if m := getattr(rule, f"{side}_re").fullmatch(key):
            return rule, m.groupdict()
    return None, None


def to_native(sd: Tensors, fmt: str) -> Tensors:
    """A foreign state dict in our keys and shapes."""
    fmt = _format(fmt)
    out: Tensors = {}
    pieces: dict[str, tuple[Rule, dict, Tensors]] = {}  # native key -> its rule, fields and the foreign parts seen
    for key, value in sd.items():
        key = key.removeprefix(fmt.read_prefix) if fmt.read_prefix else key
        if any(r.fullmatch(key) for r in fmt.ignored_re):
            continue
        rule, fields = _match(fmt.rules, key, "foreign")
        if rule is None:
            out[key] = value
            continue
        pieces.setdefault(_fill(rule.native, fields), (rule, fields, {}))[2][fields.get("part") or ""] = value
    for native_key, (rule, fields, parts) in pieces.items():
        if set(parts) != set(rule.op.parts):
            wanted = [_fill(rule.foreign, fields, p) for p in rule.op.parts]
            raise WeightsError(
                f"{fmt.name} checkpoint: {native_key} needs {', '.join(wanted)}; "
                f"found only the {'/'.join(sorted(parts))} part"
            )
        out[native_key] = rule.op.to_native([parts[p] for p in rule.op.parts])
    return out


def from_native(sd: Tensors, fmt: str) -> Tensors:
    """Our state dict in a foreign format's keys and shapes (without ``read_prefix``)."""
    fmt = _format(fmt)
    out: Tensors = {}
    for key, value in sd.items():
        rule, fields = _match(fmt.rules, key, "native")
        if rule is None:
            out[key] = value.contiguous()
            continue
        for part, piece in zip(rule.op.parts, rule.op.from_native(value), strict=True):
            out[_fill(rule.foreign, fields, part)] = piece.contiguous()
    return out
