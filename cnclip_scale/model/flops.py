"""FLOPs per sample of our CLIP: the ViT image tower, the BERT text tower and the two projections.

Counted as PyTorch's ``torch.utils.flop_counter.FlopCounterMode`` counts them, so the two can be compared: every
matrix product (a multiply-add is 2 FLOPs) — the patch-embedding convolution, the q/k/v, output and MLP projections,
the attention scores (q·kᵀ) and the attention-weighted values, the two joint-space projections. Elementwise work
(norms, activations, softmax, dropout, residual adds) is ignored: it is memory-bound and a few percent of the time,
not of the arithmetic. Attention runs over every position of the padded text (the kernels do), so the text cost
depends on the context length, not on the captions.

Training is 3× the forward (the backward of a matmul is two matmuls of the same size: the gradient with respect to
its input and to its weight), less the patch embedding's input gradient, which nothing needs (the images are not
trained). Gradient checkpointing adds one more forward of the checkpointed blocks, recomputed in the backward, less
what the backward never uses: PyTorch's non-reentrant checkpoint (what timm and our BERT set-up use) stops
recomputing once every saved tensor is back, and a ViT block ends in ``x + fc2(...)`` whose add saves nothing, so
fc2's product is not recomputed (BERT's layers end in a LayerNorm, which needs its input: recomputed in full).
MFU is conventionally quoted without the recompute (model FLOPs); with it, it is what the hardware executes (HFU).

Nothing here imports torch, DeepSpeed or data code: a config in, integers out.
"""

from __future__ import annotations

from dataclasses import dataclass

from .configs import CLIPConfig


@dataclass(frozen=True)
class Flops:
    """Forward FLOPs of one sample, by part."""

    vision_patch_embed: int
    vision_blocks: int
    vision_mlp_out: int  # the part of vision_blocks that is each block's last product, fc2 (see checkpointed)
    vision_head: int
    text_layers: int
    text_projection: int

    @property
    def vision(self) -> int:
        return self.vision_patch_embed + self.vision_blocks + self.vision_head

    @property
    def text(self) -> int:
        return self.text_layers + self.text_projection

    @property
    def forward(self) -> int:
        return self.vision + self.text

    @property
    def checkpointed(self) -> int:
        """What gradient checkpointing recomputes in the backward: the transformer blocks of both towers (the patch
        embedding and the projections sit outside the checkpointed segments), except each ViT block's fc2 product,
        whose output no backward needs (see the module docstring)."""
        return self.vision_blocks - self.vision_mlp_out + self.text_layers


def _encoder_layer(tokens: int, width: int, hidden: int) -> int:
    """One pre- or post-norm transformer layer over ``tokens`` positions: q, k, v and output projections
    (4 · t · w² multiply-adds), scores and weighted values (2 · t² · w, summed over the heads), the two MLP matmuls
    (2 · t · w · h)."""
    return 2 * (4 * tokens * width * width + 2 * tokens * tokens * width + 2 * tokens * width * hidden)


def flops_per_sample(config: CLIPConfig, context_length: int = 52) -> Flops:
    """Forward FLOPs of one image + one text of ``context_length`` tokens (the tokenizer pads every text to it)."""
    v, t = config.vision, config.text
    grid = v.image_size // v.patch_size
    patches = grid * grid
    tokens = patches + 1  # the class token
    mlp = int(v.width * v.mlp_ratio)
    return Flops(
        # Conv2d(3, width, kernel=stride=patch): one (3·p²)×width product per patch.
        vision_patch_embed=2 * patches * 3 * v.patch_size * v.patch_size * v.width,
        vision_blocks=v.layers * _encoder_layer(tokens, v.width, mlp),
        # The bias-free projection sees only the pooled class token.
        vision_mlp_out=v.layers * 2 * tokens * mlp * v.width,
        vision_head=2 * v.width * config.embed_dim,
        text_layers=t.layers * _encoder_layer(context_length, t.hidden_size, t.intermediate_size),
        # [CLS] state × text_projection; no pooler.
        text_projection=2 * t.hidden_size * config.embed_dim,
    )


def forward_flops(config: CLIPConfig, context_length: int = 52) -> int:
    return flops_per_sample(config, context_length).forward


def training_flops(config: CLIPConfig, context_length: int = 52, grad_checkpointing: bool = False) -> int:
    """FLOPs of one sample's training step: forward + backward (2× forward, without the patch embedding's unused input
    gradient), plus the recomputed blocks when ``grad_checkpointing``. The contrastive logits (batch × batch × embed,
    a few MFLOPs per sample) and the optimiser update (elementwise, per parameter, not per sample) are left out."""
    f = flops_per_sample(config, context_length)
    return 3 * f.forward - f.vision_patch_embed + (f.checkpointed if grad_checkpointing else 0)
