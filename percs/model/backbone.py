"""DINOv2 vision transformer (ViT-S/B/L/g, patch 14) with the official checkpoints' parameter names.

Every module and parameter is named as in facebookresearch/dinov2 (`patch_embed.proj`, `blocks.{i}.attn.qkv`,
`blocks.{i}.ls1.gamma`, `mlp.fc1` or, for ViT-g, `mlp.w12` / `mlp.w3`, `register_tokens`, ...), so that the
official `*_pretrain.pth` state dicts load with `strict=True`. Loading lives in `percs.model.backbone_weights`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PATCH_SIZE = 14
# The official checkpoints were trained at 518 x 518: their position embeddings are a 37 x 37 grid.
POSITION_GRID = 37
LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class BackboneSpec:
    """The shape of one DINOv2 variant.

    `interpolate_offset` and `interpolate_antialias` reproduce how the official code resizes the position
    embeddings for that variant (0.1 / no antialias for the original models, 0 / antialias with registers).
    """

    embed_dim: int
    depth: int
    num_heads: int
    ffn: str  # "mlp" (fc1, GELU, fc2) or "swiglu" (w12, SiLU gate, w3)
    num_register_tokens: int = 0
    interpolate_offset: float = 0.1
    interpolate_antialias: bool = False

    @property
    def ffn_hidden_dim(self) -> int:
        """Hidden width of the feed-forward layer (MLP ratio 4, shrunk for SwiGLU as the official code does)."""
        hidden = 4 * self.embed_dim
        return swiglu_hidden_dim(hidden) if self.ffn == "swiglu" else hidden


def swiglu_hidden_dim(hidden: int) -> int:
    """SwiGLU width for a nominal MLP width: two thirds (same parameter budget), rounded up to a multiple of 8."""
    return (int(hidden * 2 / 3) + 7) // 8 * 8


_REGISTERS = dict(num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True)

VARIANTS: dict[str, BackboneSpec] = {
    "vits14": BackboneSpec(embed_dim=384, depth=12, num_heads=6, ffn="mlp"),
    "vitb14": BackboneSpec(embed_dim=768, depth=12, num_heads=12, ffn="mlp"),
    "vitl14": BackboneSpec(embed_dim=1024, depth=24, num_heads=16, ffn="mlp"),
    "vitg14": BackboneSpec(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu"),
    "vits14_reg": BackboneSpec(embed_dim=384, depth=12, num_heads=6, ffn="mlp", **_REGISTERS),
    "vitb14_reg": BackboneSpec(embed_dim=768, depth=12, num_heads=12, ffn="mlp", **_REGISTERS),
    "vitl14_reg": BackboneSpec(embed_dim=1024, depth=24, num_heads=16, ffn="mlp", **_REGISTERS),
    "vitg14_reg": BackboneSpec(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu", **_REGISTERS),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a variant by name (a key of `VARIANTS`)."""
    if name not in VARIANTS:
        raise ValueError(f"name {name!r} is not a DINOv2 variant; expected one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


@dataclass
class BackboneOutput:
    """What the backbone returns, all after the final LayerNorm.

    features: (B, C, H/14, W/14) patch tokens as a feature map, (y, x) order.
    class_token: (B, C).
    register_tokens: (B, R, C), R = 0 for the variants without registers.
    blocks: the patch tokens after each block asked for with `forward(images, blocks=...)`, each through the
    final LayerNorm as DINOv2's `get_intermediate_layers(norm=True)`, as (B, C, H/14, W/14) feature maps.
    tokens: with `forward(images, keep_tokens=k)`, every token after block k, before any norm: (B, N, C), class
    token first, then registers, then patches (what `run_blocks` continues from); None otherwise.
    """

    features: torch.Tensor
    class_token: torch.Tensor
    register_tokens: torch.Tensor
    blocks: tuple[torch.Tensor, ...] = ()
    tokens: torch.Tensor | None = None


def patch_grid(images: torch.Tensor) -> tuple[int, int]:
    """(H/14, W/14) for `images` (B, 3, H, W); ValueError naming `images` when the shape does not fit."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images is a {type(images).__name__}, expected a torch.Tensor")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images has shape {tuple(images.shape)}, expected (B, 3, H, W)")
    height, width = images.shape[-2:]
    for side, size in (("height", height), ("width", width)):
        if size == 0 or size % PATCH_SIZE:
            padded = max(PATCH_SIZE, math.ceil(size / PATCH_SIZE) * PATCH_SIZE)
            raise ValueError(
                f"images has {side} {size}, expected a positive multiple of the patch size {PATCH_SIZE} "
                f"(pad or crop to e.g. {padded})"
            )
    return height // PATCH_SIZE, width // PATCH_SIZE


def interpolate_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], offset: float = 0.1, antialias: bool = False
) -> torch.Tensor:
    """Resize position embeddings (1, 1 + M*M, C) to a patch grid `grid` = (h, w): (1, 1 + h*w, C).

    Bicubic, computed in float32 and returned in `pos_embed`'s dtype; the class token's entry is kept as is
    and the unchanged tensor is returned when `grid` is (M, M). With `offset` > 0 the resize is given as a
    scale factor (h + offset) / M rather than as an output size: the output still has h rows, but PyTorch
    maps output to input coordinates with that slightly larger scale. The official models were trained and
    evaluated that way, so the same offset is needed to reproduce their features.
    """
    num_patches = pos_embed.shape[1] - 1
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(f"pos_embed has {num_patches} patch entries, expected a square grid")
    if tuple(grid) == (side, side):
        return pos_embed
    height, width = grid
    dim = pos_embed.shape[-1]
    patch_pos = pos_embed[:, 1:].float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if offset:
        resize = dict(scale_factor=((height + offset) / side, (width + offset) / side))
    else:
        resize = dict(size=(height, width))
    patch_pos = F.interpolate(patch_pos, mode="bicubic", antialias=antialias, **resize)
    if tuple(patch_pos.shape[-2:]) != (height, width):
        raise RuntimeError(f"position embeddings resized to {tuple(patch_pos.shape[-2:])}, not {grid}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, height * width, dim)
    return torch.cat((pos_embed[:, :1].float(), patch_pos), dim=1).to(pos_embed.dtype)


class PatchEmbed(nn.Module):
    """Non-overlapping 14 x 14 patches to tokens: (B, 3, H, W) -> (B, H/14 * W/14, C), raster order."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention over (B, N, C) tokens with a fused qkv projection."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads {num_heads} does not divide embed_dim {dim}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape
        qkv = self.qkv(tokens).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, C / heads)
        # Default scale 1 / sqrt(C / heads), as in the official attention.
        if query.dtype == torch.bfloat16 and query.device.type == "cpu":
            attended = bfloat16_attention(query, key, value)
        else:
            attended = F.scaled_dot_product_attention(query, key, value)
        return self.proj(attended.transpose(1, 2).reshape(batch, length, dim))


def bfloat16_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v as two bfloat16 matrix products (what inference under bfloat16 autocast runs
    on a CPU). For ViT windows (257 tokens, head dim 64) torch's fused CPU attention in bfloat16 takes 1.7x the
    time of these products on an AVX512-BF16 CPU (7.0 against 4.2 ms per block of 8 windows); the results
    agree with float32 attention to 0.5% relative error, as the fused kernel's do to 0.4%."""
    with torch.autocast("cpu", enabled=False):  # autocast would run the softmax in float32: 1.2x the time
        scores = (query * query.shape[-1] ** -0.5) @ key.transpose(-1, -2)
        return scores.softmax(dim=-1) @ value


class Mlp(nn.Module):
    """fc1, exact GELU, fc2: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(tokens)))


class SwiGLUFFN(nn.Module):
    """ViT-g's gated feed-forward: w12 gives gate and value halves, SiLU(gate) * value, w3 projects back."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(tokens).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (parameter `gamma`, initialised to 1 as the released models)."""

    def __init__(self, dim: int, init_value: float = 1.0):
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_value)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches: (B, N, C) -> (B, N, C)."""

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        dim = spec.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, spec.num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        ffn = {"mlp": Mlp, "swiglu": SwiGLUFFN}.get(spec.ffn)
        if ffn is None:
            raise ValueError(f"spec.ffn is {spec.ffn!r}, expected 'mlp' or 'swiglu'")
        self.mlp = ffn(dim, spec.ffn_hidden_dim)
        self.ls2 = LayerScale(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.ls1(self.attn(self.norm1(tokens)))
        return tokens + self.ls2(self.mlp(self.norm2(tokens)))


class DinoVisionTransformer(nn.Module):
    """A DINOv2 ViT with patch 14 whose state dict matches the official checkpoints key for key."""

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        self.spec = spec
        dim = spec.embed_dim
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + POSITION_GRID**2, dim))
        if spec.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, spec.num_register_tokens, dim))
        else:
            self.register_tokens = None
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        # Kept only so that the official state dicts load strictly: it replaces masked patches in DINOv2's
        # masked-image pretraining, which percs never does. Frozen, so that it is never an unused trainable
        # parameter (DistributedDataParallel would stop on it).
        self.mask_token = nn.Parameter(torch.zeros(1, dim), requires_grad=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every parameter as DINOv2 training does (also after `to_empty` of a meta-built model).

        DINOv2 draws from a normal with std 0.02 truncated at +-2 (absolute, i.e. 100 std): a plain normal
        has the same distribution and is several times faster on the CPU.
        """
        if self.cls_token.is_meta:  # nothing to fill; random ops on meta would import torch._dynamo (seconds)
            return
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.zeros_(self.mask_token)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Conv2d, nn.LayerNorm, LayerScale)):
                module.reset_parameters()

    def forward(self, images: torch.Tensor, blocks: tuple[int, ...] = (), tail: nn.ModuleList | None = None,
                keep_tokens: int | None = None) -> BackboneOutput:
        """Features of `images` (B, 3, H, W), ImageNet-normalised, H and W multiples of 14 (any other size).

        Returns a `BackboneOutput`: features (B, C, H/14, W/14), class_token (B, C), register_tokens (B, R, C),
        and the normalised patch features after each block numbered in `blocks` (1-based, in that order).
        tail: blocks that run in place of the last len(tail) blocks (a fine-tuned copy, `percs.model.instance`);
        keep_tokens: a block number whose raw output tokens are returned too (`BackboneOutput.tokens`).
        """
        if any(not 1 <= b <= len(self.blocks) for b in blocks):
            raise ValueError(f"blocks must be block numbers in 1..{len(self.blocks)}, got {tuple(blocks)}")
        if keep_tokens is not None and not 1 <= keep_tokens <= len(self.blocks):
            raise ValueError(f"keep_tokens must be a block number in 1..{len(self.blocks)}, got {keep_tokens!r}")
        grid = patch_grid(images)
        batch = images.shape[0]
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1), self.patch_embed(images)), dim=1)
        pos_embed = interpolate_pos_embed(
            self.pos_embed, grid, self.spec.interpolate_offset, self.spec.interpolate_antialias
        )
        tokens = tokens + pos_embed
        if self.register_tokens is not None:
            # Registers go after the position embedding: they have no position.
            registers = self.register_tokens.expand(batch, -1, -1)
            tokens = torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1)
        kept, tokens, raw = self.run_blocks(tokens, grid, blocks, tail=tail, keep_tokens=keep_tokens)
        first_patch = 1 + self.spec.num_register_tokens
        tokens = self.norm(tokens)
        features = tokens[:, first_patch:].transpose(1, 2).reshape(batch, -1, *grid)
        return BackboneOutput(features, tokens[:, 0], tokens[:, 1:first_patch], kept, raw)

    def run_blocks(self, tokens: torch.Tensor, grid: tuple[int, int], blocks: tuple[int, ...] = (), start: int = 0,
                   tail: nn.ModuleList | None = None, keep_tokens: int | None = None
                   ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor | None]:
        """Blocks start + 1 .. depth on tokens (B, N, C), the last len(tail) of them replaced by `tail`: (the
        normalised patch feature maps after each block in `blocks`, the raw tokens after the last block, the raw
        tokens after block keep_tokens or None). `forward` runs them all; a fine-tuned tail is trained from tokens
        kept before it (`percs.train.scorer`)."""
        tail = tail if tail is not None else ()
        if len(tail) > len(self.blocks):
            raise ValueError(f"tail has {len(tail)} blocks, the backbone {len(self.blocks)}")
        first_patch = 1 + self.spec.num_register_tokens
        batch, kept, raw = tokens.shape[0], {}, None
        replaced = len(self.blocks) - len(tail)
        for depth in range(start + 1, len(self.blocks) + 1):
            block = self.blocks[depth - 1] if depth <= replaced else tail[depth - 1 - replaced]
            tokens = block(tokens)
            if depth in blocks:
                kept[depth] = self.norm(tokens)[:, first_patch:].transpose(1, 2).reshape(batch, -1, *grid)
            if depth == keep_tokens:
                raw = tokens
        missing = [b for b in blocks if b not in kept]
        if missing:
            raise ValueError(f"blocks {missing} come before start={start} and cannot be returned")
        return tuple(kept[b] for b in blocks), tokens, raw


def build_backbone(name: str, device: torch.device | str | None = None) -> DinoVisionTransformer:
    """A randomly initialised variant (`VARIANTS` key) on `device` ("meta" builds it without memory)."""
    spec = backbone_spec(name)
    if device is None:
        return DinoVisionTransformer(spec)
    with torch.device(device):
        return DinoVisionTransformer(spec)
