"""The Chinese-CLIP model: an OpenAI-style ViT image tower (timm) and a BERT text tower (transformers).

Plain ``nn.Module``s, nothing else: no DeepSpeed, no data, no launchers. Weight formats live in ``weights.py``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import BertConfig, BertModel

from .configs import CLIPConfig, ResNetConfig, TextConfig, VisionConfig

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


class PatchDropout(nn.Module):
    """FLIP's random patch dropping (Chinese-CLIP's ``--mask-ratio``, open_clip's ``patch_dropout``): in training, each
    image keeps a random ``1 - ratio`` of its patch tokens (the class token always), chosen after the positional
    embeddings are added and before the blocks, so the blocks see fewer tokens. In eval mode, or at ratio 0, it is the
    identity: evaluation and export see every patch. The draw uses torch's default generator of the tokens' device,
    which the trainer seeds per rank and saves in its checkpoints, so a resumed run drops the same patches."""

    def __init__(self, ratio: float = 0.0, num_prefix_tokens: int = 1):
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
        self.ratio = ratio
        self.num_prefix_tokens = num_prefix_tokens

    def kept(self, num_patches: int) -> int:
        """How many patch tokens an image keeps (at least one)."""
        return max(1, int(num_patches * (1.0 - self.ratio)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.ratio == 0.0:
            return x
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        batch, num_patches, width = patches.shape
        # a random permutation per image (argsort of uniform noise); its first `keep` entries are the patches kept
        keep = torch.rand(batch, num_patches, device=x.device).argsort(dim=1)[:, : self.kept(num_patches)]
        patches = patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, width))
        return torch.cat([prefix, patches], dim=1)


def build_vision_tower(cfg: VisionConfig | ResNetConfig) -> nn.Module:
    """timm's ViT in the OpenAI-CLIP arrangement; its ``head`` is the bias-free projection into the joint space.
    A ``ResNetConfig`` gives the ModifiedResNet (``resnet.py``), whose attention pool projects."""
    if isinstance(cfg, ResNetConfig):
        from .resnet import ModifiedResNet

        return ModifiedResNet(cfg)
    vit = VisionTransformer(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.width,
        depth=cfg.layers,
        num_heads=cfg.heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=True,
        pre_norm=True,  # ln_pre; also makes the patch conv bias-free, as OpenAI's conv1 is
        global_pool="token",  # ln_post is applied to every token, then the class token is taken
        class_token=True,
        num_classes=cfg.embed_dim,
        norm_layer=partial(nn.LayerNorm, eps=cfg.layer_norm_eps),
        act_layer="quick_gelu",
    )
    vit.head = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
    return vit


def bert_config(cfg: TextConfig) -> BertConfig:
    config = BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act="gelu",
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        hidden_dropout_prob=cfg.hidden_dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        layer_norm_eps=cfg.layer_norm_eps,
        pad_token_id=cfg.pad_token_id,
    )
    # SDPA gives GPUs fused attention kernels; on CPU it is PyTorch's own SDPA path.
    config._attn_implementation = "sdpa"
    return config


def build_text_tower(cfg: TextConfig) -> BertModel:
    return BertModel(bert_config(cfg), add_pooling_layer=False)


class CLIP(nn.Module):
    """Two towers and a learned temperature. Features come out L2-normalised."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.visual = build_vision_tower(config.vision)
        self.bert = build_text_tower(config.text)
        self.text_projection = nn.Parameter(torch.empty(config.text.hidden_size, config.embed_dim))
        # Shape [1], not 0-dim: DeepSpeed 0.19.8 cannot broadcast 0-dim parameters. The weight adapter maps the
        # official/HF 0-dim tensor to and from this shape.
        self.logit_scale = nn.Parameter(torch.full((1,), LOGIT_SCALE_INIT))
        nn.init.normal_(self.text_projection, std=config.text.hidden_size**-0.5)

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward: memory per layer drops to its inputs."""
        self.visual.set_grad_checkpointing(enable)  # timm checkpoints non-reentrantly by default
        if enable:
            # Non-reentrant: works with frozen inputs and under ZeRO-3's parameter partitioning.
            self.bert.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif self.bert.is_activation_checkpointing:
            self.bert.activation_checkpointing_disable()

    def set_mask_ratio(self, ratio: float) -> None:
        """FLIP patch dropout in training (``PatchDropout``); 0 turns it off. timm's ViT applies ``patch_drop`` after
        the positional embeddings and before ``norm_pre`` (ln_pre) and the blocks, where FLIP and open_clip drop."""
        if not hasattr(self.visual, "patch_drop"):
            if ratio:
                tower = type(self.visual).__name__
                raise ValueError(f"mask ratio {ratio}: the {tower} image tower has no patch tokens")
            return
        self.visual.patch_drop = PatchDropout(ratio, num_prefix_tokens=self.visual.num_prefix_tokens)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.text.pad_token_id)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask.long()).last_hidden_state
        features = hidden[:, 0, :] @ self.text_projection  # the [CLS] position
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Returns (image features, text features, temperature); the temperature is exp(logit_scale) capped at 100."""
        image_features = self.encode_image(images)
        text_features = self.encode_text(input_ids, attention_mask)
        scale = self.logit_scale.clamp(0, LOGIT_SCALE_MAX).exp().squeeze(0)
        return image_features, text_features, scale


def build_model(config: CLIPConfig, grad_checkpointing: bool = False, mask_ratio: float = 0.0) -> CLIP:
    model = CLIP(config)
    model.set_grad_checkpointing(grad_checkpointing)
    if mask_ratio:
        model.set_mask_ratio(mask_ratio)
    return model
