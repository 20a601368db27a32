"""The exact token <-> image codec.

An image of ``channels x img_size x img_size`` is cut into blocks of ``block_h x block_w`` pixels,
one token per block, in raster order (left to right, top to bottom): capacity =
``(img_size // block_h) * (img_size // block_w)`` tokens. A block has ``cells = block_h * block_w *
channels`` values, enumerated pixel by pixel (row-major) with the channel fastest. A token id is written
as ``digits`` base-``base`` digits (most significant first, ``base ** digits >= vocab_size``); cell
``k`` holds digit ``k % digits`` as one of ``base`` levels evenly spread over [-1, 1], so every digit
is repeated ``cells / digits`` times across different pixels.

Decoding picks, per block, the valid token whose pattern is nearest in squared distance (the
maximum-likelihood token under Gaussian noise): encoded images decode exactly, noisy ones to the
nearest valid code. Pixels outside the sequence are padding: value 0, mask 0.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from trainhub import UserError


class TokenCodec:
    """Token ids in ``[0, vocab_size)`` <-> ``C x H x W`` images in [-1, 1] with a ``1 x H x W`` valid mask."""

    def __init__(self, vocab_size: int, img_size: int = 64, channels: int = 3, block: Sequence[int] = (4, 4),
                 base: int = 4) -> None:
        bh, bw = int(block[0]), int(block[1])
        if vocab_size < 2:
            raise UserError(f"vocab_size={vocab_size}: need at least 2 tokens")
        if base < 2:
            raise UserError(f"data.base={base}: need at least 2 levels per cell")
        if bh < 1 or bw < 1 or img_size % bh or img_size % bw:
            raise UserError(f"data.block={[bh, bw]} must divide data.img_size={img_size}")
        digits = 1
        while base**digits < vocab_size:
            digits += 1
        cells = bh * bw * channels
        if digits > cells:
            raise UserError(f"a vocabulary of {vocab_size} needs {digits} base-{base} digits per token but a "
                            f"{bh}x{bw}x{channels} block has {cells} cells: raise data.block, data.channels or data.base")
        self.vocab_size, self.img_size, self.channels = vocab_size, img_size, channels
        self.block, self.base, self.digits, self.cells = (bh, bw), base, digits, cells
        self.grid = (img_size // bh, img_size // bw)
        self.capacity = self.grid[0] * self.grid[1]
        self.levels = torch.linspace(-1.0, 1.0, base)
        self.digit_of_cell = torch.arange(cells) % digits
        self.repeats = torch.bincount(self.digit_of_cell, minlength=digits).float()  # cells per digit
        ids = torch.arange(vocab_size)
        powers = base ** torch.arange(digits - 1, -1, -1)
        self.code_digits = (ids[:, None] // powers) % base  # vocab x digits
        self.patterns = self.levels[self.code_digits[:, self.digit_of_cell]]  # vocab x cells
        self._powers = powers

    def describe(self) -> str:
        bh, bw = self.block
        return (f"{self.channels}x{self.img_size}x{self.img_size} image, {bh}x{bw}-pixel block per token: capacity "
                f"{self.capacity} tokens; {self.digits} base-{self.base} digits per token in {self.cells} cells "
                f"(each digit {self.cells / self.digits:.1f}x), vocab {self.vocab_size} of {self.base ** self.digits} codes")

    # ---- layout ----
    def to_image(self, blocks: torch.Tensor) -> torch.Tensor:
        """``(..., capacity, cells)`` -> ``(..., C, H, W)``."""
        (gh, gw), (bh, bw), c = self.grid, self.block, self.channels
        lead = blocks.shape[:-2]
        x = blocks.reshape(*lead, gh, gw, bh, bw, c)
        n = len(lead)
        x = x.permute(*range(n), n + 4, n, n + 2, n + 1, n + 3)  # C, gh, bh, gw, bw
        return x.reshape(*lead, c, gh * bh, gw * bw)

    def to_blocks(self, image: torch.Tensor) -> torch.Tensor:
        """``(..., C, H, W)`` -> ``(..., capacity, cells)``."""
        (gh, gw), (bh, bw), c = self.grid, self.block, self.channels
        lead = image.shape[:-3]
        x = image.reshape(*lead, c, gh, bh, gw, bw)
        n = len(lead)
        x = x.permute(*range(n), n + 1, n + 3, n + 2, n + 4, n)  # gh, gw, bh, bw, C
        return x.reshape(*lead, self.capacity, self.cells)

    # ---- encode ----
    def encode(self, ids: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (at most ``capacity``) -> ``(image C x H x W, mask 1 x H x W)``; padding is 0 with mask 0."""
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        n = ids.numel()
        if n > self.capacity:
            raise ValueError(f"{n} tokens exceed the image capacity of {self.capacity}")
        if n and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}); got {int(ids.min())}..{int(ids.max())}")
        blocks = torch.zeros(self.capacity, self.cells)
        blocks[:n] = self.patterns[ids]
        valid = torch.zeros(self.capacity, self.cells)
        valid[:n] = 1.0
        return self.to_image(blocks), self.to_image(valid)[:1]

    def block_map(self, values: torch.Tensor) -> torch.Tensor:
        """One value per block ``(..., capacity)`` -> ``(..., 1, H, W)``: each block's pixels hold its value."""
        return self.to_image(values[..., None].expand(*values.shape, self.cells))[..., :1, :, :]

    def block_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Pixel mask ``(..., 1, H, W)`` -> bool ``(..., capacity)``: which token blocks are valid."""
        return self.to_blocks(mask.expand(*mask.shape[:-3], self.channels, *mask.shape[-2:]))[..., 0] > 0.5

    # ---- decode ----
    def digit_means(self, image: torch.Tensor) -> torch.Tensor:
        """``(..., C, H, W)`` -> ``(..., capacity, digits)``: each digit's cells averaged."""
        blocks = self.to_blocks(image.float())
        onehot = torch.nn.functional.one_hot(self.digit_of_cell, self.digits).float().to(blocks.device)
        return (blocks @ onehot) / self.repeats.to(blocks.device)

    def nearest(self, image: torch.Tensor, chunk: int = 1 << 24) -> torch.Tensor:
        """Nearest valid token per block: ``(..., C, H, W)`` -> ids ``(..., capacity)`` (long).

        The squared distance to a token's pattern is a sum over digits of ``r_d (m_d - level)^2`` (plus a term
        that is the same for every token), so the nearest of all ``base ** digits`` codes rounds each digit
        mean ``m_d`` to its nearest level. Where that code is not a token (id >= vocab_size), the valid tokens
        are searched exhaustively.
        """
        means = self.digit_means(image)
        lead = means.shape[:-1]
        m = means.reshape(-1, self.digits)
        ids = (self._round_digits(m) * self._powers.to(m.device)).sum(-1)
        bad = ids >= self.vocab_size
        if bool(bad.any()):
            ids[bad] = self._search(m[bad], chunk)
        return ids.reshape(lead)

    def _round_digits(self, means: torch.Tensor) -> torch.Tensor:
        return ((means + 1.0) * (self.base - 1) / 2.0).round().clamp(0, self.base - 1).long()

    def _search(self, m: torch.Tensor, chunk: int) -> torch.Tensor:
        """Exhaustive nearest valid token for digit means ``m`` (rows x digits)."""
        lv = self.levels.to(m.device)[self.code_digits.to(m.device)]  # vocab x digits
        r = self.repeats.to(m.device)
        # ||x - p_v||^2 = const - sum_d r_d (2 m_d l_vd - l_vd^2): maximise the bracket
        w = (2.0 * lv * r).T  # digits x vocab
        bias = (lv.square() * r).sum(1)  # vocab
        rows = max(1, chunk // self.vocab_size)
        out = torch.empty(m.shape[0], dtype=torch.long, device=m.device)
        for i in range(0, m.shape[0], rows):
            out[i : i + rows] = (m[i : i + rows] @ w - bias).argmax(-1)
        return out

    def is_valid_code(self, image: torch.Tensor) -> torch.Tensor:
        """Per block: does rounding each digit to its nearest level give a token id < vocab_size? ``(..., capacity)``."""
        d = self._round_digits(self.digit_means(image))
        return (d * self._powers.to(d.device)).sum(-1) < self.vocab_size

    def decode(self, image: torch.Tensor, mask: Optional[torch.Tensor] = None) -> list[int] | list[list[int]]:
        """Image ``C x H x W`` (or a batch) -> token ids of the valid blocks (all blocks without a mask)."""
        ids = self.nearest(image)
        if mask is None:
            keep = torch.ones_like(ids, dtype=torch.bool)
        else:
            keep = self.block_mask(mask.to(ids.device))
        if ids.dim() == 1:
            return ids[keep].tolist()
        return [row[k].tolist() for row, k in zip(ids, keep)]

    def expected_image(self, logits: torch.Tensor) -> torch.Tensor:
        """Token logits ``(..., capacity, vocab)`` -> the image they expect: each block's code patterns weighted
        by the token probabilities, ``(..., C, H, W)``."""
        return self.to_image(logits.float().softmax(-1) @ self.patterns.to(logits.device))

    def snap(self, image: torch.Tensor) -> torch.Tensor:
        """Replace every block by the pattern of its nearest valid token (same shape)."""
        ids = self.nearest(image)
        return self.to_image(self.patterns.to(ids.device)[ids]).to(image.dtype)
