"""TokenDiT: a DiT-style denoiser over image patches that keeps padding out of attention.

    noisy (B,C,H,W) * mask -> patches -> + 2-D sin-cos position + segment embedding
        (tokens head: + what each block alone says, its likelihood posterior embedded, + that of its `context`
         neighbours on each side in reading order, through a convolution; + its own time)
    [condition patches (chat prompt, clean), noisy patches] -> depth x adaLN-Zero blocks (timestep-modulated)
    -> the noisy patches -> adaLN final layer -> then, by ``head``:
    tokens (default): per token block, logits over the vocabulary (an unembedding shared by the blocks of a
        patch) + the block's Gaussian log-likelihood (skip=True); predicted clean image = the expected code
        pattern, sum_v softmax(logits)_v * pattern_v (the score interpolation of CDCD, Dieleman et al. 2022).
    pixels: F (B,C,H,W); predicted clean image = c_skip(t) * noisy + c_out(t) * F (skip=True)
                                               = F                             (skip=False)

Times: one per sample, or with the tokens head one per token block (``B x capacity``), so that a token can be
noised while its neighbours are clean (the sequential sampler writes text that way).

The tokens head's skip: under ``noisy = sqrt(a) pattern_v + sqrt(1 - a) noise`` a block's log-likelihood of token
``v`` is ``(sqrt(a) x.p_v - a |p_v|^2 / 2) / (1 - a)`` up to a constant; added to the network's logits, a block that
the noise left readable is read exactly at once, and the network supplies what the context knows. The pixels
head's skip is the preconditioning of Karras et al. 2022 (EDM) written for this variance-preserving noise:
``c_skip = sqrt(a) s^2 / (a s^2 + 1 - a)``, ``c_out = sqrt(1 - a) s / sqrt(a s^2 + 1 - a)``, ``s = sigma_data``.

Why the convolution: in short CPU runs the attention did not learn where a token's neighbours are (measured: with
every other token clean, the prediction of the noised ones was no better than from the block alone after 400
steps); reading order neighbours given directly are used within a few hundred steps.

A patch with no valid pixel is masked out as an attention key (SDPA boolean ``attn_mask``), and padded
pixels are zeroed at the input, so padding never changes the prediction for valid pixels.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from trainhub_tokenimage.codec import TokenCodec
from trainhub_tokenimage.diffusion import SCHEDULES, alpha_bar


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, ``(grid * grid, dim)``; half the channels per axis."""
    assert dim % 4 == 0, "hidden size must be a multiple of 4"
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64), indexing="ij")

    def axis(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([axis(ys), axis(xs)], dim=1).float()


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> sinusoidal features of ``1000 t`` -> MLP."""

    def __init__(self, hidden: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block with adaLN-Zero conditioning on the timestep."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1[:, None] * self.attn(modulate(self.norm1(x), sh1, sc1), attn_mask)
        return x + g2[:, None] * self.mlp(modulate(self.norm2(x), sh2, sc2))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


class TokenDiT(nn.Module):
    """``forward(noisy, t, condition=None, mask=None, condition_mask=None) -> predicted clean image``;
    ``logits(...)`` (``head="tokens"``) -> ``B x capacity x vocab`` in the codec's raster order.

    ``t``: one time in [0, 1] per sample. ``mask``/``condition_mask``: ``B x 1 x H x W``, 1 = valid pixel
    (None: all valid). ``condition``: a clean token image (the chat prompt) attended to in context; only a
    model built with ``conditional=True`` has the condition embedding (so DDP sees no unused parameters).
    ``head="tokens"`` needs the ``codec`` (its block must tile the patch). ``skip``: the tokens head adds each
    block's log-likelihood to the logits, the pixels head uses the EDM preconditioning.
    """

    def __init__(self, img_size: int = 64, channels: int = 3, patch_size: int = 4, hidden: int = 192, depth: int = 6,
                 heads: int = 6, mlp_ratio: float = 4.0, conditional: bool = False, skip: bool = True,
                 schedule: str = "cosine", sigma_data: float = 0.75, head: str = "pixels",
                 codec: Optional[TokenCodec] = None, context: int = 2) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"patch_size={patch_size} must divide img_size={img_size}")
        if hidden % heads or hidden % 4:
            raise ValueError(f"hidden={hidden} must be a multiple of heads={heads} and of 4")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if head not in ("pixels", "tokens"):
            raise ValueError(f"unknown head {head!r}; allowed: pixels, tokens")
        self.skip, self.schedule, self.sigma_data, self.head = skip, schedule, sigma_data, head
        self.img_size, self.channels, self.patch_size = img_size, channels, patch_size
        self.grid = img_size // patch_size
        self.codec = codec
        if head == "tokens":
            if codec is None or (codec.img_size, codec.channels) != (img_size, channels):
                raise ValueError("head='tokens' needs the codec of this image size and channel count")
            (bh, bw), p = codec.block, patch_size
            if p % bh or p % bw:
                raise ValueError(f"patch_size={p} must be a multiple of the token block {bh}x{bw} for head='tokens'")
            sub = (p // bh, p // bw)  # token blocks per patch: rows, columns
            self.per_patch = sub[0] * sub[1]
            # codec raster index of the k-th block of patch n (blocks of a patch in raster order)
            pr, pc, sr, sc = torch.meshgrid(*(torch.arange(n) for n in (self.grid, self.grid, *sub)), indexing="ij")
            order = ((pr * sub[0] + sr) * codec.grid[1] + pc * sub[1] + sc).flatten()
            self.register_buffer("order", order, persistent=False)  # codec raster -> (patch, block of the patch)
            self.register_buffer("raster", torch.argsort(order), persistent=False)  # and back
            self.register_buffer("patterns", codec.patterns.clone(), persistent=False)  # vocab x cells
        self.x_embed = nn.Conv2d(channels, hidden, patch_size, stride=patch_size)
        self.c_embed = nn.Conv2d(channels, hidden, patch_size, stride=patch_size) if conditional else None
        self.segment = nn.Parameter(torch.zeros(2 if conditional else 1, hidden))  # 0: noisy target, 1: condition
        # persistent: trainhub's EMA copies every buffer into ema.safetensors, and loading checks the keys
        self.register_buffer("pos", sincos_2d(hidden, self.grid))
        self.t_embed = TimestepEmbedder(hidden)
        self.blocks = nn.ModuleList(Block(hidden, heads, mlp_ratio) for _ in range(depth))
        if head == "tokens":
            assert codec is not None
            self.final = FinalLayer(hidden, self.per_patch * hidden)
            self.unembed = nn.Linear(hidden, codec.vocab_size)
            # what each block alone says: its likelihood posterior, embedded (one table per block of a patch)
            self.read_embed = nn.Parameter(torch.empty(self.per_patch, codec.vocab_size, hidden))
            # and what its neighbours in reading order say, before any attention has learned where to look
            self.context = nn.Conv1d(hidden, hidden, 2 * context + 1, padding=context) if context else None
        else:
            self.final = FinalLayer(hidden, patch_size * patch_size * channels)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for emb in (self.x_embed, self.c_embed):
            if emb is None:
                continue
            nn.init.xavier_uniform_(emb.weight.view(emb.weight.shape[0], -1))
            nn.init.zeros_(emb.bias)
        nn.init.normal_(self.segment, std=0.02)
        if self.head == "tokens":
            nn.init.normal_(self.read_embed, std=0.02)
        for mlp in (self.t_embed.mlp[0], self.t_embed.mlp[2]):
            nn.init.normal_(mlp.weight, std=0.02)
        for blk in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(blk.ada[-1].weight)
            nn.init.zeros_(blk.ada[-1].bias)
        nn.init.zeros_(self.final.ada[-1].weight)
        nn.init.zeros_(self.final.ada[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def patch_keep(self, mask: torch.Tensor) -> torch.Tensor:
        """``B x 1 x H x W`` pixel mask -> ``B x N`` bool: patches holding at least one valid pixel."""
        return F.max_pool2d(mask.float(), self.patch_size).flatten(1) > 0.5

    def embed(self, image: torch.Tensor, mask: torch.Tensor, segment: int) -> torch.Tensor:
        conv = self.c_embed if segment else self.x_embed
        assert conv is not None
        x = conv(image * mask.to(image.dtype)).flatten(2).transpose(1, 2)
        return x + self.pos.to(x.dtype) + self.segment[segment].to(x.dtype)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        b, p, g, c = x.shape[0], self.patch_size, self.grid, self.channels
        x = x.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, g * p, g * p)

    def forward(self, noisy: torch.Tensor, t: torch.Tensor, condition: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, condition_mask: Optional[torch.Tensor] = None,
                logits: bool = False) -> torch.Tensor:
        """The predicted clean image, or with ``logits=True`` (tokens head) the logits (what DDP-wrapped training calls)."""
        if self.head == "tokens":
            out = self.logits(noisy, t, condition, mask, condition_mask)
            return out if logits else self.expected_image(out)
        if logits:
            raise ValueError("logits need a TokenDiT built with head='tokens'")
        out = self.unpatchify(self.features(noisy, t, condition, mask, condition_mask))
        if not self.skip:
            return out
        b = noisy.shape[0]
        mask = torch.ones_like(noisy[:, :1]) if mask is None else mask
        c_skip, c_out = self.skip_scales(t.reshape(-1).expand(b) if t.numel() == 1 else t)
        return (c_skip * (noisy * mask).float() + c_out * out.float()).to(out.dtype)

    def logits(self, noisy: torch.Tensor, t: torch.Tensor, condition: Optional[torch.Tensor] = None,
               mask: Optional[torch.Tensor] = None, condition_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``B x capacity x vocab`` token logits, block ``i`` of the codec's raster order in row ``i``."""
        if self.head != "tokens":
            raise ValueError("logits need a TokenDiT built with head='tokens'")
        b = noisy.shape[0]
        if mask is None:
            mask = torch.ones_like(noisy[:, :1])
        like = self.likelihood(noisy * mask, self._times(t, b))  # the input's reading and, with skip, the logits' base
        f = self.features(noisy, t, condition, mask, condition_mask, like=like)
        out = self.unembed(f.reshape(b, f.shape[1] * self.per_patch, -1))[:, self.raster].float()
        return out + like if self.skip else out

    def likelihood(self, noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``log p(noisy block | token v)`` up to a constant per block, ``B x capacity x vocab``: under
        ``noisy = sqrt(a) pattern_v + sqrt(1 - a) noise`` it is ``(sqrt(a) x.p_v - a |p_v|^2 / 2) / (1 - a)``. Added
        to the network's logits (``skip``), a block that the noise left readable is read exactly and the network
        only has to supply what the context knows."""
        assert self.codec is not None
        a = alpha_bar(t, self.schedule)  # type: ignore[arg-type]
        a = a[..., None] if a.dim() == 2 else a.view(-1, 1, 1)
        with torch.autocast(noisy.device.type, enabled=False):  # logits of up to ~1e4 at low noise: fp32
            x = self.codec.to_blocks(noisy.float())
            p = self.patterns.float()
            return (a.sqrt() * (x @ p.T) - 0.5 * a * p.square().sum(1)) / (1.0 - a).clamp_min(1e-3)

    def expected_image(self, logits: torch.Tensor) -> torch.Tensor:
        """The clean image the logits expect: each block's code patterns weighted by the token probabilities."""
        assert self.codec is not None
        return self.codec.expected_image(logits)

    def features(self, noisy: torch.Tensor, t: torch.Tensor, condition: Optional[torch.Tensor] = None,
                 mask: Optional[torch.Tensor] = None, condition_mask: Optional[torch.Tensor] = None,
                 like: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The final layer's output per noisy patch, ``B x patches x out``; ``like``: the tokens head's
        :meth:`likelihood` of ``noisy * mask``, where the caller has it already."""
        b = noisy.shape[0]
        if mask is None:
            mask = torch.ones_like(noisy[:, :1])
        tokens, keep = self.embed(noisy, mask, 0), self.patch_keep(mask)
        n = tokens.shape[1]
        t = self._times(t, b)
        if self.head == "tokens":  # each block's own reading and its time, per patch
            order = self.order
            if like is None:
                like = self.likelihood(noisy * mask, t)
            probs = like.softmax(-1)[:, order]
            probs = probs.reshape(b, n, self.per_patch, -1).to(tokens.dtype)
            read = torch.einsum("bnkv,kvh->bnh", probs, self.read_embed.to(tokens.dtype))
            tokens = tokens + read
            if self.context is not None:
                tokens = tokens + self.context(read.transpose(1, 2)).transpose(1, 2)
            tt = (t[:, order] if t.dim() == 2 else t[:, None].expand(b, order.numel())).reshape(b, n, self.per_patch)
            tokens = tokens + self.t_embed(tt.mean(-1).flatten()).reshape(b, n, -1).to(tokens.dtype)
            t = t.mean(1) if t.dim() == 2 else t
        if condition is not None:
            if self.c_embed is None:
                raise ValueError("this TokenDiT was built without conditional=True and cannot take a condition")
            if condition_mask is None:
                condition_mask = torch.ones_like(condition[:, :1])
            tokens = torch.cat([self.embed(condition, condition_mask, 1), tokens], dim=1)
            keep = torch.cat([self.patch_keep(condition_mask), keep], dim=1)
        keep = keep | ~keep.any(dim=1, keepdim=True)  # an all-padding image: nothing to protect, avoid empty softmax
        attn_mask = keep[:, None, None, :]
        c = self.t_embed(t)
        for blk in self.blocks:
            tokens = blk(tokens, c.to(tokens.dtype), attn_mask)
        return self.final(tokens[:, -n:], c.to(tokens.dtype))

    def _times(self, t: torch.Tensor, b: int) -> torch.Tensor:
        """``t``: one time, one per sample (``B``) or, with ``head="tokens"``, one per token block (``B x capacity``)."""
        t = torch.as_tensor(t)
        if t.dim() == 2:
            if self.head != "tokens":
                raise ValueError("times per token block need head='tokens'")
            return t
        return t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(-1)

    def skip_scales(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out)`` at times ``t``, shaped ``B x 1 x 1 x 1``."""
        a = alpha_bar(t, self.schedule).view(-1, 1, 1, 1)  # type: ignore[arg-type]
        s2 = self.sigma_data**2
        var = a * s2 + 1.0 - a
        return a.sqrt() * s2 / var, (1.0 - a).sqrt() * self.sigma_data / var.sqrt()
