"""VRT-style video deblurring transformer guided by a spike-camera stream, top to bottom.

Layout (after VRT, Liang et al. 2022; written from the paper's structure, no code taken):

    blurry frames (B, N, 3, H, W) --+-- flow estimator (learned from scratch) -> flows at 1, 1/2, 1/4, 1/8
                                    +-- conv_first([frame, neighbours warped to it])
    spike maps (B, N, S, H, W) ----- spike encoder -> N*K tokens per pixel -> temporal self-attention
                                     -> pyramid at 1, 1/2, 1/4, 1/8
    stages 1-7: U-shape at 1, 1/2, 1/4, 1/8, 1/4, 1/2, 1 scale; each = temporal mutual self-attention
                (TMSA) in 3D windows, shifted every other layer, then flow-guided parallel warping;
                spike features fused by per-pixel temporal cross-attention after the stages in fuse_stages
    stage 8:    full-resolution self-attention groups (reconstruction)
    output = conv_last(features) + blurry input

Shapes inside the transformer: (B, N, H, W, C) "channels last". Attention runs through
``F.scaled_dot_product_attention``; shifted windows are grouped by their mask pattern (at most 8) so no
per-window mask is ever materialised. The spike attentions run per pixel over time, in spatial chunks
whose size bounds memory (``max_batch_tokens``); chunking does not change the result.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass
from typing import Iterator, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

STAGE_SCALES = (1, 2, 4, 8, 4, 2, 1)  # stages 1-7


# ---- small pieces --------------------------------------------------------------------------------

def flow_warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` (M, C, H, W) at ``p + flow(p)``; ``flow`` (M, 2, H, W) in pixels (x, y). Zeros outside."""
    _, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=flow.dtype), torch.arange(w, device=x.device, dtype=flow.dtype), indexing="ij")
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p`` (training only)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1.0 - self.p)


class GEGLU(nn.Module):
    """``fc2(gelu(fc11 x) * fc12 x)``: the gated MLP VRT uses."""

    def __init__(self, dim: int, hidden: int, out: Optional[int] = None) -> None:
        super().__init__()
        self.fc11, self.fc12 = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc11(x)) * self.fc12(x))


def frames_conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D conv to every frame of (B, N, C, H, W)."""
    b, n = x.shape[:2]
    y = conv(x.reshape(b * n, *x.shape[2:]))
    return y.reshape(b, n, *y.shape[1:])


# ---- windows --------------------------------------------------------------------------------------

def effective_window(size: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A window never larger than the input; no shift along an axis the window covers completely."""
    win = tuple(min(s, w) for s, w in zip(size, window))
    sh = tuple(0 if s <= w else h for s, w, h in zip(size, window, shift))
    return win, sh


def window_partition(x: torch.Tensor, win: Sequence[int]) -> torch.Tensor:
    """(B, D, H, W, C) -> (B, nW, wd*wh*ww, C), windows in (d, h, w) order, tokens in (d, h, w) order."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // win[0], win[0], h // win[1], win[1], w // win[2], win[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, win[0] * win[1] * win[2], c)


def window_merge(x: torch.Tensor, win: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`."""
    b, c = x.shape[0], x.shape[-1]
    d, h, w = size
    x = x.view(b, d // win[0], h // win[1], w // win[2], win[0], win[1], win[2], c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, c)


@functools.lru_cache(maxsize=256)
def window_groups(grid: tuple[int, int, int], shift: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...], tuple[tuple[bool, ...], ...]]:
    """Windows grouped by shift-mask pattern: (order, inverse order, group sizes, patterns).

    After a cyclic shift only the last window along a shifted axis mixes two regions, so a window's
    mask depends only on which axes it is last along (pattern = 3 booleans, at most 8 groups).
    """
    nd, nh, nw = grid
    d, h, w = torch.meshgrid(torch.arange(nd), torch.arange(nh), torch.arange(nw), indexing="ij")
    code = ((d == nd - 1) & (shift[0] > 0)).long() * 4 + ((h == nh - 1) & (shift[1] > 0)).long() * 2 + ((w == nw - 1) & (shift[2] > 0)).long()
    code = code.reshape(-1)
    order = torch.argsort(code, stable=True)
    codes, sizes = torch.unique_consecutive(code[order], return_counts=True)
    patterns = tuple((bool(c & 4), bool(c & 2), bool(c & 1)) for c in codes.tolist())
    return order.to(device), torch.argsort(order).to(device), tuple(sizes.tolist()), patterns


@functools.lru_cache(maxsize=256)
def region_labels(win: tuple[int, int, int], shift: tuple[int, int, int], pattern: tuple[bool, bool, bool]) -> torch.Tensor:
    """Region id of every token of a window with ``pattern`` (tokens of different regions must not attend)."""
    axes = []
    for n, s, last in zip(win, shift, pattern):
        lab = torch.zeros(n, dtype=torch.long)
        if last and s > 0:
            lab[n - s :] = 1
        axes.append(lab)
    d, h, w = torch.meshgrid(*axes, indexing="ij")
    return (d * 4 + h * 2 + w).reshape(-1)


@functools.lru_cache(maxsize=256)
def relative_index(win: tuple[int, int, int], table: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """(N, N) index into a relative-position table built for window ``table`` (``win`` may be smaller)."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in win], indexing="ij")).reshape(3, -1)
    rel = coords[:, :, None] - coords[:, None, :] + torch.tensor(table)[:, None, None].sub(1)
    idx = rel[0] * (2 * table[1] - 1) * (2 * table[2] - 1) + rel[1] * (2 * table[2] - 1) + rel[2]
    return idx.to(device)


def mask_from_labels(lq: torch.Tensor, lk: torch.Tensor) -> torch.Tensor:
    return torch.where(lq[:, None] == lk[None, :], 0.0, float("-inf"))


# ---- temporal mutual self-attention ------------------------------------------------------------

class WindowAttention(nn.Module):
    """Self-attention with a relative position bias inside 3D windows, plus (``mutual``) mutual attention
    between the two frames of a 2-frame window: each frame's queries read the other frame's keys, an
    implicit alignment. Outputs of both are concatenated and projected."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int, int], mutual: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {heads} heads")
        self.heads, self.window, self.mutual = heads, window, mutual
        self.bias_table = nn.Parameter(torch.zeros((2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1), heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.qkv = nn.Linear(dim, 3 * dim)
        if mutual:
            self.qkv_mut = nn.Linear(dim, 3 * dim)
            self.pos = nn.Parameter(torch.zeros(window[1] * window[2], dim))  # spatial position inside the window
            nn.init.trunc_normal_(self.pos, std=0.02)
        self.proj = nn.Linear(dim * (2 if mutual else 1), dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        m, n, c = t.shape
        return t.view(m, n, self.heads, c // self.heads).transpose(1, 2)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v), attn_mask=mask.to(q.dtype))
        return out.transpose(1, 2).reshape(q.shape)

    def forward(self, x: torch.Tensor, win: tuple[int, int, int], shift: tuple[int, int, int], pattern: tuple[bool, bool, bool]) -> torch.Tensor:
        """``x``: (M, N, C) tokens of M windows that share one shift-mask ``pattern``."""
        m, n, c = x.shape
        labels = region_labels(win, shift, pattern).to(x.device)
        bias = self.bias_table[relative_index(win, self.window, x.device)].permute(2, 0, 1)  # (heads, N, N)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        out = self._attend(q, k, v, (bias + mask_from_labels(labels, labels))[None])
        if not self.mutual:
            return self.proj(out)
        mut = torch.zeros_like(out)
        half = n // 2
        # frames of a 2-frame window in different temporal regions were paired by the cyclic shift: no mutual attention
        if win[0] == 2 and not (pattern[0] and shift[0] > 0):
            pos = self.pos.view(self.window[1], self.window[2], c)[: win[1], : win[2]].reshape(1, half, c)
            qm, km, vm = self.qkv_mut(x + pos.repeat(1, 2, 1).to(x.dtype)).chunk(3, dim=-1)
            smask = mask_from_labels(labels[:half], labels[:half])[None, None]
            a = self._attend(qm[:, :half], km[:, half:], vm[:, half:], smask)  # frame 0 reads frame 1
            b = self._attend(qm[:, half:], km[:, :half], vm[:, :half], smask)
            mut = torch.cat([a, b], dim=1)
        return self.proj(torch.cat([mut, out], dim=-1))


class TMSA(nn.Module):
    """One transformer layer: (shifted) window attention and a GEGLU MLP, each pre-norm and residual,
    each optionally recomputed in backward (``use_checkpoint_attn`` / ``use_checkpoint_ffn``)."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int, int], shift: tuple[int, int, int], mutual: bool,
                 mlp_ratio: float, drop_path: float, checkpoint_attn: bool, checkpoint_ffn: bool) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window, mutual)
        self.mlp = GEGLU(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        self.checkpoint_attn, self.checkpoint_ffn = checkpoint_attn, checkpoint_ffn

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w, c = x.shape
        win, shift = effective_window((d, h, w), self.window, self.shift)
        x = self.norm1(x)
        pad = [(-s) % n for s, n in zip((d, h, w), win)]
        x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        size = (d + pad[0], h + pad[1], w + pad[2])
        if any(shift):
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        windows = window_partition(x, win)  # (B, nW, N, C)
        grid = tuple(s // n for s, n in zip(size, win))
        order, inverse, sizes, patterns = window_groups(grid, shift, x.device)  # type: ignore[arg-type]
        if len(sizes) == 1:
            out = self.attn(windows.flatten(0, 1), win, shift, patterns[0]).view_as(windows)
        else:
            parts = torch.split(windows.index_select(1, order), list(sizes), dim=1)
            outs = [self.attn(p.flatten(0, 1), win, shift, pat).view_as(p) for p, pat in zip(parts, patterns)]
            out = torch.cat(outs, dim=1).index_select(1, inverse)
        x = window_merge(out, win, size)
        if any(shift):
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return self.drop_path(x[:, :d, :h, :w])

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_attn and torch.is_grad_enabled():
            x = x + checkpoint(self._attention, x, use_reentrant=False)
        else:
            x = x + self._attention(x)
        if self.checkpoint_ffn and torch.is_grad_enabled():
            return x + checkpoint(self._ffn, x, use_reentrant=False)
        return x + self._ffn(x)


class TMSAGroup(nn.Module):
    """``depth`` TMSA layers, the odd ones shifted by half a window, then a linear layer; residual."""

    def __init__(self, dim: int, depth: int, heads: int, window: tuple[int, int, int], mutual: bool, mlp_ratio: float,
                 drop_path: Sequence[float], checkpoint_attn: bool, checkpoint_ffn: bool) -> None:
        super().__init__()
        shift = tuple(w // 2 for w in window)
        self.blocks = nn.ModuleList([
            TMSA(dim, heads, window, (0, 0, 0) if i % 2 == 0 else shift, mutual, mlp_ratio, drop_path[i], checkpoint_attn, checkpoint_ffn)  # type: ignore[arg-type]
            for i in range(depth)
        ])
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for blk in self.blocks:
            y = blk(y)
        return x + self.linear(y)


# ---- alignment -------------------------------------------------------------------------------------

class FlowEstimator(nn.Module):
    """Coarse-to-fine optical flow between two frames, trained from scratch with the restoration loss
    (no downloaded SpyNet). Returns flows at 1, 1/2, 1/4 and 1/8 scale, in pixels of each scale, such
    that ``flow_warp(supp, flow) ~ ref``."""

    def __init__(self, in_ch: int, width: int = 32, levels: int = 4) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        for _ in range(levels):
            last = nn.Conv2d(width, 2, 3, padding=1)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.levels.append(nn.Sequential(
                nn.Conv2d(2 * in_ch + 2, width, 5, padding=2), nn.LeakyReLU(0.1),
                nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.1), last,
            ))

    def forward(self, ref: torch.Tensor, supp: torch.Tensor) -> list[torch.Tensor]:
        refs, supps = [ref], [supp]
        for _ in range(len(self.levels) - 1):
            refs.insert(0, F.avg_pool2d(refs[0], 2))
            supps.insert(0, F.avg_pool2d(supps[0], 2))
        flow = ref.new_zeros(ref.shape[0], 2, *refs[0].shape[-2:])
        flows = []
        for level, r, s in zip(self.levels, refs, supps):
            if flow.shape[-2:] != r.shape[-2:]:
                flow = F.interpolate(flow, size=r.shape[-2:], mode="bilinear", align_corners=False) * 2.0
            flow = flow + level(torch.cat([r, flow_warp(s, flow), flow], 1))
            flows.insert(0, flow)
        return flows


class ParallelWarp(nn.Module):
    """Flow-guided alignment of both neighbours to every frame, then a GEGLU fusing frame + neighbours.

    The flow is refined by a learned residual (bounded by ``max_residue``) predicted from the frame,
    the flow-warped neighbour and the flow: a light stand-in for VRT's flow-guided deformable conv.
    """

    def __init__(self, dim: int, max_residue: float) -> None:
        super().__init__()
        self.max_residue = max_residue
        last = nn.Conv2d(dim, 2, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.offset = nn.Sequential(nn.Conv2d(2 * dim + 2, dim, 3, padding=1), nn.LeakyReLU(0.1), last)
        self.fuse = GEGLU(3 * dim, 3 * dim, dim)

    def _align(self, nb: torch.Tensor, ref: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        warped = flow_warp(nb, flow)
        flow = flow + self.max_residue * torch.tanh(self.offset(torch.cat([ref, warped, flow.to(ref.dtype)], 1)))
        return flow_warp(nb, flow)

    def forward(self, x: torch.Tensor, flows_b: torch.Tensor, flows_f: torch.Tensor) -> torch.Tensor:
        """``x`` (B, N, H, W, C); ``flows_b[:, i]`` aligns frame i+1 to i, ``flows_f[:, i]`` frame i to i+1."""
        b, n, h, w, c = x.shape
        f = x.permute(0, 1, 4, 2, 3)  # (B, N, C, H, W)
        zeros = f.new_zeros(b, 1, c, h, w)
        if n > 1:
            nxt = self._align(f[:, 1:].flatten(0, 1), f[:, :-1].flatten(0, 1), flows_b.flatten(0, 1)).view(b, n - 1, c, h, w)
            prv = self._align(f[:, :-1].flatten(0, 1), f[:, 1:].flatten(0, 1), flows_f.flatten(0, 1)).view(b, n - 1, c, h, w)
            from_next, from_prev = torch.cat([nxt, zeros], 1), torch.cat([zeros, prv], 1)
        else:
            from_next = from_prev = zeros
        cat = torch.cat([f, from_next, from_prev], 2).permute(0, 1, 3, 4, 2)
        return self.fuse(cat)


class Stage(nn.Module):
    """A U-shape stage: resize (none / 2x down / 2x up), mutual+self attention group on 2-frame windows
    (``mul_attn_ratio`` of the layers), self-attention group on full windows, parallel warping."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, window: tuple[int, int, int], reshape: Literal["none", "down", "up"],
                 mul_attn_ratio: float, mlp_ratio: float, drop_path: Sequence[float], max_residue: float,
                 checkpoint_attn: bool, checkpoint_ffn: bool) -> None:
        super().__init__()
        self.reshape_mode = reshape
        if reshape == "down":
            self.norm, self.resize = nn.LayerNorm(4 * in_dim), nn.Linear(4 * in_dim, dim)
        elif reshape == "up":
            self.norm, self.resize = nn.LayerNorm(in_dim // 4), nn.Linear(in_dim // 4, dim)
        else:
            self.norm, self.resize = nn.LayerNorm(dim), nn.Identity()
        n_mut = int(depth * mul_attn_ratio)
        self.mutual = (TMSAGroup(dim, n_mut, heads, (2, window[1], window[2]), True, mlp_ratio, drop_path[:n_mut], checkpoint_attn, checkpoint_ffn)
                       if n_mut else None)
        self.self_attn = (TMSAGroup(dim, depth - n_mut, heads, window, False, mlp_ratio, drop_path[n_mut:], checkpoint_attn, checkpoint_ffn)
                          if depth - n_mut else None)
        self.warp = ParallelWarp(dim, max_residue)

    def forward(self, x: torch.Tensor, flows_b: torch.Tensor, flows_f: torch.Tensor) -> torch.Tensor:
        b, n, h, w, c = x.shape
        if self.reshape_mode == "down":
            x = x.view(b, n, h // 2, 2, w // 2, 2, c).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, n, h // 2, w // 2, 4 * c)
        elif self.reshape_mode == "up":
            x = x.view(b, n, h, w, 2, 2, c // 4).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, n, 2 * h, 2 * w, c // 4)
        x = self.resize(self.norm(x))
        if self.mutual is not None:
            x = self.mutual(x)
        if self.self_attn is not None:
            x = self.self_attn(x)
        return self.warp(x, flows_b, flows_f)


# ---- spike branch ------------------------------------------------------------------------------------

@dataclass
class ChunkSpec:
    """How per-pixel attention is cut into spatial chunks (memory bound; results do not change).

    ``adaptive_chunk``: chunks as large as ``max_batch_tokens`` allows, where tokens = batch x pixels
    x key tokens per pixel; otherwise ``chunk_size`` (square side or number of rows; 0 = no chunking).
    """

    heads: int = 4
    adaptive_chunk: bool = True
    max_batch_tokens: int = 49152
    chunk_size: int = 64
    chunk_shape: Literal["square", "rows"] = "square"

    def tiles(self, batch: int, keys: int, h: int, w: int) -> Iterator[tuple[slice, slice]]:
        if self.adaptive_chunk:
            pixels = max(1, self.max_batch_tokens // max(1, batch * keys))
            if pixels >= h * w:
                side = 0
            else:
                side = max(1, math.isqrt(pixels)) if self.chunk_shape == "square" else max(1, pixels // w)
        else:
            side = self.chunk_size
        if side <= 0:
            yield slice(0, h), slice(0, w)
            return
        for top in range(0, h, side):
            if self.chunk_shape == "rows":
                yield slice(top, min(h, top + side)), slice(0, w)
            else:
                for left in range(0, w, side):
                    yield slice(top, min(h, top + side)), slice(left, min(w, left + side))


class PixelAttention(nn.Module):
    """Attention along time at every pixel: queries (B, Nq, H, W, C) read keys/values (B, Nk, H, W, Ck)
    at the same pixel (self-attention when no keys are given), with a learned bias on the relative time
    of query and key. Runs in spatial chunks (:class:`ChunkSpec`), each recomputed in backward when
    ``checkpoint_chunks`` (so memory stays bounded in training too).

    Times are integers in a common unit (positions of tokens on the time axis); offsets beyond
    ``max_offset`` share the last bias bucket. Returns the attention output (add it as a residual).
    """

    def __init__(self, dim: int, kv_dim: Optional[int], spec: ChunkSpec, max_offset: int, zero_init: bool, checkpoint_chunks: bool = False) -> None:
        super().__init__()
        if dim % spec.heads:
            raise ValueError(f"dim {dim} is not divisible by {spec.heads} heads")
        self.spec, self.max_offset, self.checkpoint_chunks = spec, max_offset, checkpoint_chunks
        self.cross = kv_dim is not None
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(kv_dim) if kv_dim is not None else None
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if zero_init:  # starts as the identity when added as a residual
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        self.time_bias = nn.Parameter(torch.zeros(2 * max_offset + 1, spec.heads))

    def _chunk(self, q_in: torch.Tensor, kv_in: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, nq, h, w, c = q_in.shape
        nk, heads = kv_in.shape[1], self.spec.heads
        q = self.q(self.norm_q(q_in)).permute(0, 2, 3, 1, 4).reshape(b * h * w, nq, heads, c // heads).transpose(1, 2)
        kv_normed = self.norm_kv(kv_in) if self.norm_kv is not None else self.norm_q(kv_in)
        k, v = self.kv(kv_normed).permute(0, 2, 3, 1, 4).reshape(b * h * w, nk, 2, heads, c // heads).unbind(2)
        out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias.to(q.dtype))
        out = self.proj(out.transpose(1, 2).reshape(b, h, w, nq, c))
        return out.permute(0, 3, 1, 2, 4)

    def forward(self, x: torch.Tensor, kv: Optional[torch.Tensor], q_time: torch.Tensor, k_time: torch.Tensor) -> torch.Tensor:
        kv = x if kv is None else kv
        b, _, h, w, _ = x.shape
        offset = (k_time[None, :] - q_time[:, None]).clamp(-self.max_offset, self.max_offset) + self.max_offset
        bias = self.time_bias[offset].permute(2, 0, 1)[None]  # (1, heads, Nq, Nk)
        rows: list[torch.Tensor] = []
        row: list[torch.Tensor] = []
        row_top = -1
        for ys, xs in self.spec.tiles(b, kv.shape[1], h, w):
            qc, kc = x[:, :, ys, xs], kv[:, :, ys, xs]
            if self.checkpoint_chunks and torch.is_grad_enabled():
                out = checkpoint(self._chunk, qc, kc, bias, use_reentrant=False)
            else:
                out = self._chunk(qc, kc, bias)
            if ys.start != row_top and row:
                rows.append(torch.cat(row, dim=3))
                row = []
            row_top = ys.start
            row.append(out)
        rows.append(torch.cat(row, dim=3))
        return torch.cat(rows, dim=2)


class SpikeEncoder(nn.Module):
    """Spike maps (B, N, S, H, W) -> (B, N*K, H, W, C) tokens: each frame's S bins are cut into K
    segments (sub-exposures), each encoded by shared convs, then temporal self-attention over all N*K
    segment tokens of a pixel; plus a strided-conv pyramid at 1/2, 1/4, 1/8."""

    def __init__(self, channels: int, segments: int, dim: int, blocks: int, tsa: Optional[ChunkSpec], checkpoint_chunks: bool) -> None:
        super().__init__()
        if channels % segments:
            raise ValueError(f"spike channels {channels} are not divisible into {segments} segments")
        self.segments = segments
        self.head = nn.Sequential(nn.Conv2d(channels // segments, dim, 3, padding=1), nn.LeakyReLU(0.1))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(dim, dim, 3, padding=1)) for _ in range(blocks)
        )
        self.tsa = PixelAttention(dim, None, tsa, max_offset=4 * segments, zero_init=False, checkpoint_chunks=checkpoint_chunks) if tsa else None
        self.down = nn.ModuleList(nn.Sequential(nn.Conv2d(dim, dim, 3, stride=2, padding=1), nn.LeakyReLU(0.1)) for _ in range(3))

    def segment_times(self, n: int, device: torch.device) -> torch.Tensor:
        """Centre time of every segment token, in half-segment units (frame f spans [2fK, 2(f+1)K))."""
        return torch.arange(n * self.segments, device=device) * 2 + 1

    def forward(self, spike: torch.Tensor, timer: "StageTimer") -> list[torch.Tensor]:
        b, n, s, h, w = spike.shape
        k = self.segments
        with timer("spike_encoder"):
            x = self.head(spike.reshape(b * n * k, s // k, h, w))
            for blk in self.blocks:
                x = x + blk(x)
            feats = x.view(b, n * k, -1, h, w).permute(0, 1, 3, 4, 2)
        if self.tsa is not None:
            with timer("spike_tsa"):
                t = self.segment_times(n, spike.device)
                feats = feats + self.tsa(feats, None, t, t)
        with timer("spike_pyramid"):
            pyramid = [feats]
            x = feats.permute(0, 1, 4, 2, 3).flatten(0, 1)
            for down in self.down:
                x = down(x)
                pyramid.append(x.view(b, n * k, *x.shape[1:]).permute(0, 1, 3, 4, 2))
        return pyramid


# ---- profiling -----------------------------------------------------------------------------------------

class StageTimer:
    """Forward time per named part: CUDA events on GPU (one synchronisation per forward, when read),
    ``perf_counter`` on CPU. Disabled: a no-op."""

    def __init__(self, enabled: bool, device: torch.device) -> None:
        self.enabled, self.cuda = enabled, device.type == "cuda"
        self.events: dict[str, list] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.events.setdefault(name, []).append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.events.setdefault(name, []).append(time.perf_counter() - t0)

    def result(self) -> dict[str, float]:
        """Milliseconds per part (summed when a part ran more than once)."""
        if not self.enabled:
            return {}
        if self.cuda:
            torch.cuda.synchronize()
            return {k: sum(s.elapsed_time(e) for s, e in v) for k, v in self.events.items()}
        return {k: 1000.0 * sum(v) for k, v in self.events.items()}


# ---- the network ---------------------------------------------------------------------------------------

class VRTSpike(nn.Module):
    """Spike-guided VRT for video deblurring (``upscale=1``): (blur (B, N, 3, H, W), spike (B, N, S, H, W)) -> sharp.

    ``depths``/``embed_dims``/``num_heads``: per stage, 8 entries at least (stages 1-7, then one
    stage-8 group per further entry). ``window_size``: (frames, height, width). ``fuse_stages``:
    stages (1-7) after which spike features are fused. With ``profile``, every forward stores the time
    of each part in ``self.timings`` (ms); with ``keep_features`` set, the (B, N, h, w, C) outputs of
    stages 1-7 in ``self.features`` (for feature distillation).
    """

    def __init__(
        self,
        spike_channels: int,
        depths: Sequence[int] = (8, 8, 8, 8, 4, 4, 4, 8),
        embed_dims: Sequence[int] = (96, 96, 96, 96, 96, 96, 96, 120),
        num_heads: Sequence[int] = (6,) * 8,
        window_size: tuple[int, int, int] = (6, 8, 8),
        mul_attn_ratio: float = 0.75,
        mlp_ratio: float = 2.0,
        drop_path_rate: float = 0.2,
        upscale: int = 1,
        use_checkpoint_attn: bool = False,
        use_checkpoint_ffn: bool = False,
        flow_width: int = 32,
        flow_use_spike: bool = True,
        max_residue_magnitude: float = 10.0,
        spike_dim: int = 32,
        spike_segments: int = 4,
        spike_encoder_blocks: int = 2,
        spike_tsa: Optional[ChunkSpec] = ChunkSpec(),
        fuse: ChunkSpec = ChunkSpec(),
        fuse_stages: Sequence[int] = (1, 2, 3, 4),
        profile: bool = False,
    ) -> None:
        super().__init__()
        if upscale != 1:
            raise ValueError("only upscale=1 (deblurring) is implemented")
        if len(depths) < 8 or len(embed_dims) != len(depths) or len(num_heads) != len(depths):
            raise ValueError(f"depths, embed_dims and num_heads need the same length >= 8, got {len(depths)}, {len(embed_dims)}, {len(num_heads)}")
        if any(d % 4 for d in embed_dims[4:7]):
            raise ValueError(f"embed_dims of stages 4-6 must be divisible by 4 (pixel shuffle), got {list(embed_dims)}")
        bad = [s for s in fuse_stages if not 1 <= s <= 7]
        if bad:
            raise ValueError(f"fuse_stages must lie in 1..7, got {bad}")
        self.profile = profile
        self.spike_channels, self.embed_dims = spike_channels, list(embed_dims)
        self.timings: dict[str, float] = {}
        self.keep_features = False  # when set, every forward stores the outputs of stages 1-7 in self.features (distillation)
        self.features: list[torch.Tensor] = []
        self.flow_use_spike = flow_use_spike
        self.spike_segments = spike_segments
        win = tuple(window_size)
        self.flow = FlowEstimator(3 + (1 if flow_use_spike else 0), flow_width)
        self.conv_first = nn.Conv2d(9, embed_dims[0], 3, padding=1)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        reshapes = ("none", "down", "down", "down", "up", "up", "up")
        self.stages = nn.ModuleList()
        for i in range(7):
            self.stages.append(Stage(embed_dims[i - 1] if i else embed_dims[0], embed_dims[i], depths[i], num_heads[i], win,  # type: ignore[arg-type]
                                     reshapes[i], mul_attn_ratio, mlp_ratio, dpr[sum(depths[:i]) : sum(depths[: i + 1])],  # type: ignore[arg-type]
                                     max_residue_magnitude / STAGE_SCALES[i], use_checkpoint_attn, use_checkpoint_ffn))
        self.stage8_in = nn.Sequential(nn.LayerNorm(embed_dims[6]), nn.Linear(embed_dims[6], embed_dims[7]))
        self.stage8 = nn.ModuleList()
        for i in range(7, len(depths)):
            if embed_dims[i] != embed_dims[7]:
                raise ValueError(f"stage-8 groups share one width; got embed_dims {list(embed_dims[7:])}")
            self.stage8.append(TMSAGroup(embed_dims[i], depths[i], num_heads[i], win, False, mlp_ratio,  # type: ignore[arg-type]
                                         dpr[sum(depths[:i]) : sum(depths[: i + 1])], use_checkpoint_attn, use_checkpoint_ffn))
        self.norm = nn.LayerNorm(embed_dims[-1])
        self.after_body = nn.Linear(embed_dims[-1], embed_dims[0])
        self.conv_last = nn.Conv2d(embed_dims[0], 3, 3, padding=1)
        nn.init.zeros_(self.conv_last.weight)  # the untrained network returns its input
        nn.init.zeros_(self.conv_last.bias)
        self.spike = SpikeEncoder(spike_channels, spike_segments, spike_dim, spike_encoder_blocks, spike_tsa, use_checkpoint_attn)
        self.fuse = nn.ModuleDict({
            str(s): PixelAttention(embed_dims[s - 1], spike_dim, fuse, max_offset=4 * spike_segments, zero_init=True,
                                   checkpoint_chunks=use_checkpoint_attn)
            for s in sorted(set(fuse_stages))
        })
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear) and m.weight.abs().sum() > 0:  # zero-initialised output projections stay zero
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def transformer_blocks(self) -> list[nn.Module]:
        """The TMSA layers (the units to checkpoint or shard)."""
        return [m for m in self.modules() if isinstance(m, TMSA)]

    def flows(self, blur: torch.Tensor, spike: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Backward flows (frame i+1 -> i) and forward flows (frame i -> i+1) at 1, 1/2, 1/4, 1/8 scale,
        each (B, N-1, 2, h, w). The estimator sees the frame and, with ``flow_use_spike``, the firing
        rate of the central quarter of the exposure (sharper than the blurry frame)."""
        b, n, _, h, w = blur.shape
        x = blur
        if self.flow_use_spike:
            s = spike.shape[2]
            lo, hi = (3 * s) // 8, max((5 * s) // 8, (3 * s) // 8 + 1)
            x = torch.cat([blur, spike[:, :, lo:hi].mean(2, keepdim=True)], 2)
        if n == 1:
            empty = [blur.new_zeros(b, 0, 2, h // 2**i, w // 2**i) for i in range(4)]
            return empty, empty
        a, c = x[:, :-1].flatten(0, 1), x[:, 1:].flatten(0, 1)
        both = self.flow(torch.cat([a, c]), torch.cat([c, a]))  # (ref, supp): supp warped onto ref
        back = [f[: len(a)].view(b, n - 1, 2, *f.shape[-2:]) for f in both]
        fwd = [f[len(a) :].view(b, n - 1, 2, *f.shape[-2:]) for f in both]
        return back, fwd

    def forward(self, blur: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
        timer = StageTimer(self.profile, blur.device)
        with timer("forward"):
            out = self._forward(blur, spike, timer)
        if self.profile:
            self.timings = timer.result()
        return out

    def _forward(self, blur: torch.Tensor, spike: torch.Tensor, timer: StageTimer) -> torch.Tensor:
        b, n, _, h, w = blur.shape
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:  # three 2x downsamplings need sizes divisible by 8
            blur = F.pad(blur.flatten(0, 1), (0, pw, 0, ph), mode="replicate").view(b, n, 3, h + ph, w + pw)
            spike = F.pad(spike.flatten(0, 1), (0, pw, 0, ph), mode="replicate").view(b, n, -1, h + ph, w + pw)
        with timer("align"):
            back, fwd = self.flows(blur, spike)
            if n > 1:
                nb = flow_warp(blur[:, 1:].flatten(0, 1), back[0].flatten(0, 1)).view(b, n - 1, 3, *blur.shape[-2:])
                pv = flow_warp(blur[:, :-1].flatten(0, 1), fwd[0].flatten(0, 1)).view(b, n - 1, 3, *blur.shape[-2:])
                zero = torch.zeros_like(blur[:, :1])
                x = torch.cat([blur, torch.cat([nb, zero], 1), torch.cat([zero, pv], 1)], 2)
            else:
                x = torch.cat([blur, torch.zeros_like(blur), torch.zeros_like(blur)], 2)
            x = frames_conv(self.conv_first, x).permute(0, 1, 3, 4, 2)  # (B, N, H, W, C)
        spikes = self.spike(spike, timer)
        q_time = torch.arange(n, device=blur.device) * (2 * self.spike_segments) + self.spike_segments
        k_time = self.spike.segment_times(n, blur.device)
        x_first, skips = x, []
        for i, stage in enumerate(self.stages):
            scale = STAGE_SCALES[i]
            level = int(math.log2(scale))
            if i > 4:
                x = x + skips[7 - i]  # U-shape skips: stage 6 gets stage 3's output, stage 7 stage 2's
            with timer(f"stage{i + 1}"):
                x = stage(x, back[level], fwd[level])
            if str(i + 1) in self.fuse:
                with timer(f"fuse{i + 1}"):
                    x = x + self.fuse[str(i + 1)](x, spikes[level], q_time, k_time)
            skips.append(x)
        self.features = skips if self.keep_features else []
        x = x + skips[0]
        with timer("stage8"):
            x = self.stage8_in(x)
            for group in self.stage8:
                x = group(x)
        with timer("reconstruction"):
            x = x_first + self.after_body(self.norm(x))
            out = frames_conv(self.conv_last, x.permute(0, 1, 4, 2, 3)) + blur
        return out[..., :h, :w]
