"""Named model configurations of the Chinese-CLIP family, selected as ``"<vision>@<text>"``.

The sizes are the released family's (Chinese-CLIP's ``clip/model_configs/*.json``); the tiny ones exist so that
tests and CPU demos train in seconds. ``model_config("ViT-B-16@RoBERTa-wwm-ext-base-chinese")`` is the entry point.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class VisionConfig:
    """An OpenAI-CLIP ViT: class token, learned positions, ln_pre, pre-norm QuickGELU blocks, ln_post, bias-free
    projection."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    head_width: int = 64
    mlp_ratio: float = 4.0
    embed_dim: int = 512  # the joint space; the family sizes it by the vision tower
    layer_norm_eps: float = 1e-5

    @property
    def heads(self) -> int:
        return self.width // self.head_width


@dataclass(frozen=True)
class ResNetConfig:
    """OpenAI CLIP's ModifiedResNet (``model/resnet.py``): 3-conv stem, anti-aliased Bottlenecks, attention pool
    whose output projection is the joint space. Its stages have no patch tokens (no FLIP, no block freezing)."""

    image_size: int = 224
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64  # the stem's width; the last stage (and the attention pool) is 32× wider
    head_width: int = 64
    embed_dim: int = 1024

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))  # a list after a JSON round trip

    @property
    def heads(self) -> int:
        return self.width * 32 // self.head_width


@dataclass(frozen=True)
class TextConfig:
    """A BERT encoder (Chinese RoBERTa-wwm-ext is BERT-architecture) without pooler."""

    vocab_size: int = 21128
    hidden_size: int = 768
    layers: int = 12
    heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0


@dataclass(frozen=True)
class CLIPConfig:
    name: str
    vision: VisionConfig | ResNetConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)

    @property
    def embed_dim(self) -> int:
        return self.vision.embed_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CLIPConfig:
        vision = VisionConfig(**d["vision"]) if "patch_size" in d["vision"] else ResNetConfig(**d["vision"])
        return cls(name=d["name"], vision=vision, text=TextConfig(**d["text"]))


VISION_CONFIGS: dict[str, VisionConfig | ResNetConfig] = {
    "RN50": ResNetConfig(image_size=224, layers=(3, 4, 6, 3), width=64, embed_dim=1024),
    "ViT-B-32": VisionConfig(image_size=224, patch_size=32, width=768, layers=12, embed_dim=512),
    "ViT-B-16": VisionConfig(image_size=224, patch_size=16, width=768, layers=12, embed_dim=512),
    "ViT-L-14": VisionConfig(image_size=224, patch_size=14, width=1024, layers=24, embed_dim=768),
    "ViT-L-14-336": VisionConfig(image_size=336, patch_size=14, width=1024, layers=24, embed_dim=768),
    "ViT-H-14": VisionConfig(image_size=224, patch_size=14, width=1280, layers=32, head_width=80, embed_dim=1024),
    # Tiny towers for tests and CPU demos (random init; not a released model).
    "ViT-Tiny-16": VisionConfig(image_size=64, patch_size=16, width=64, layers=2, head_width=32, embed_dim=32),
    "ViT-Small-16": VisionConfig(image_size=96, patch_size=16, width=192, layers=4, head_width=48, embed_dim=128),
    # 8×8 patches of a 32-px image: fine enough to see the demo's handwritten digit strokes.
    "ViT-Tiny-4": VisionConfig(image_size=32, patch_size=4, width=96, layers=3, head_width=32, embed_dim=64),
}

TEXT_CONFIGS: dict[str, TextConfig] = {
    "RoBERTa-wwm-ext-base-chinese": TextConfig(hidden_size=768, layers=12, heads=12, intermediate_size=3072),
    "RoBERTa-wwm-ext-large-chinese": TextConfig(hidden_size=1024, layers=24, heads=16, intermediate_size=4096),
    "RBT3-chinese": TextConfig(hidden_size=768, layers=3, heads=12, intermediate_size=3072),
    "RoBERTa-Tiny-chinese": TextConfig(
        hidden_size=64, layers=2, heads=2, intermediate_size=128, max_position_embeddings=128
    ),
    "RoBERTa-Small-chinese": TextConfig(
        hidden_size=192, layers=4, heads=4, intermediate_size=768, max_position_embeddings=128
    ),
}

# The pairs the family released, plus the tiny ones; any vision@text combination of the tables above also resolves.
RELEASED = [
    "RN50@RBT3-chinese",
    "ViT-B-16@RoBERTa-wwm-ext-base-chinese",
    "ViT-L-14@RoBERTa-wwm-ext-base-chinese",
    "ViT-L-14-336@RoBERTa-wwm-ext-base-chinese",
    "ViT-H-14@RoBERTa-wwm-ext-large-chinese",
]
TINY = "ViT-Tiny-16@RoBERTa-Tiny-chinese"
SMALL = "ViT-Small-16@RoBERTa-Small-chinese"


def model_config(name: str, **vision_overrides) -> CLIPConfig:
    """Resolve ``"<vision>@<text>"`` to a :class:`CLIPConfig`; ``vision_overrides`` e.g. ``image_size=96``."""
    vision_name, sep, text_name = name.partition("@")
    if not sep:
        raise ValueError(f"model name {name!r} must be '<vision>@<text>', e.g. 'ViT-B-16@RoBERTa-wwm-ext-base-chinese'")
    if vision_name not in VISION_CONFIGS:
        raise ValueError(f"unknown vision tower {vision_name!r}; known: {', '.join(VISION_CONFIGS)}")
    if text_name not in TEXT_CONFIGS:
        raise ValueError(f"unknown text tower {text_name!r}; known: {', '.join(TEXT_CONFIGS)}")
    vision = replace(VISION_CONFIGS[vision_name], **vision_overrides)
    return CLIPConfig(name=name, vision=vision, text=TEXT_CONFIGS[text_name])


def all_model_names() -> list[str]:
    return [f"{v}@{t}" for v in VISION_CONFIGS for t in TEXT_CONFIGS]


def match_registered_name(config: CLIPConfig) -> str | None:
    """The registry name whose sizes equal ``config`` (ignoring its own name), or None."""
    for name in all_model_names():
        candidate = model_config(name)
        if candidate.vision == config.vision and candidate.text == config.text:
            return name
    return None
