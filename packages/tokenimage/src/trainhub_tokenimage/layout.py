"""The layout picture of the README (``trainhub tokenimage layout --out docs/layout.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from trainhub_tokenimage.codec import TokenCodec
from trainhub_tokenimage.tokenizer import Tokenizer

DEFAULT_TEXT = "Hello, token image! Each token is a block of pixels; its id is written in base-4 digits."


def _rgb(image: "np.ndarray") -> "np.ndarray":
    x = (np.transpose(image, (1, 2, 0)) + 1.0) / 2.0
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x[..., :3]


def draw_layout(out: Path, tok: Tokenizer, codec: TokenCodec, text: Optional[str] = None) -> None:
    try:
        import matplotlib
    except ImportError:
        from trainhub import UserError

        raise UserError("the layout picture needs matplotlib: pip install 'trainhub-tokenimage[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    ids = ([tok.bos_id] + tok.encode(text or DEFAULT_TEXT) + [tok.eos_id])[: codec.capacity]
    image, mask = (x.numpy() for x in codec.encode(ids))
    bh, bw = codec.block
    gh, gw = codec.grid
    rows, cols = min(4, gh), min(8, gw)
    fig = plt.figure(figsize=(15, 8.2))
    grid = fig.add_gridspec(2, 4, height_ratios=[1.0, 0.85])

    ax = fig.add_subplot(grid[0, 0])
    shown = _rgb(image) * mask[0][..., None] + 0.5 * (1 - mask[0][..., None])
    ax.imshow(shown, interpolation="nearest")
    ax.add_patch(Rectangle((-0.5, -0.5), cols * bw, rows * bh, fill=False, ec="red", lw=1.5))
    ax.set_title(f"token image {codec.channels}x{codec.img_size}x{codec.img_size}\n{len(ids)} tokens, rest padding (grey)")
    ax.set_xticks([])
    ax.set_yticks([])

    ax = fig.add_subplot(grid[0, 1])
    ax.imshow(mask[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title("valid-pixel mask (1 x H x W)\nwhite = token, black = padding")
    ax.set_xticks([])
    ax.set_yticks([])

    ax = fig.add_subplot(grid[0, 2:])
    ax.imshow(_rgb(image)[: rows * bh, : cols * bw], interpolation="nearest")
    for r in range(rows):
        for c in range(cols):
            k = r * gw + c
            ax.add_patch(Rectangle((c * bw - 0.5, r * bh - 0.5), bw, bh, fill=False, ec="white", lw=2))
            if k < len(ids):
                label = tok.special_text(ids[k]) or tok.decode([ids[k]]) or "?"
                ax.text(c * bw + bw / 2 - 0.5, r * bh + bh / 2 - 0.5, f"#{k}\n{label!r}\nid {ids[k]}", ha="center",
                        va="center", fontsize=8, color="black", bbox=dict(fc="white", alpha=0.75, lw=0))
    ax.set_title(f"zoom (red box): one {bh}x{bw}-pixel block per token, raster order; capacity "
                 f"{gh}x{gw} = {codec.capacity} tokens")
    ax.set_xticks([])
    ax.set_yticks([])

    # one block, cell by cell
    k = 1 if len(ids) > 1 else 0
    tid = ids[k]
    digits = codec.code_digits[tid].tolist()
    ax = fig.add_subplot(grid[1, :2])
    ax.set_xlim(0, bw * codec.channels + bw)
    ax.set_ylim(bh, 0)
    ax.axis("off")
    cmap = plt.get_cmap("viridis")
    for cell in range(codec.cells):
        pix, ch = divmod(cell, codec.channels)
        y, x = divmod(pix, bw)
        left = x * (codec.channels + 1) + ch
        d = int(codec.digit_of_cell[cell])
        level = float(codec.levels[digits[d]])
        ax.add_patch(Rectangle((left, y), 1, 1, fc=cmap((level + 1) / 2), ec="black"))
        ax.text(left + 0.5, y + 0.5, f"cell {cell}\nch {ch}\nd{d}={digits[d]}\n{level:+.2f}", ha="center", va="center",
                fontsize=8, color="white" if level < 0.3 else "black")
    label = tok.special_text(tid) or repr(tok.decode([tid]))
    ax.set_title(f"block of token #{k} {label} (id {tid}) = base-{codec.base} digits {digits}\n{codec.cells} cells "
                 f"({bh}x{bw} pixels x {codec.channels} channels, channel fastest): cell k holds digit k % {codec.digits}")

    ax = fig.add_subplot(grid[1, 2:])
    lv = codec.levels.numpy()
    ax.axhline(0, color="black", lw=1)
    for i, v in enumerate(lv):
        ax.plot([v], [0], "o", ms=12, color=cmap((v + 1) / 2), mec="black")
        ax.text(v, 0.25, f"digit {i}\n{v:+.2f}", ha="center", fontsize=9)
    for a, b in zip(lv[:-1], lv[1:]):
        ax.axvline((a + b) / 2, color="grey", ls="--", lw=1)
    ax.set_xlim(-1.2, 1.2)
    ax.set_ylim(-1.1, 0.8)
    ax.set_yticks([])
    ax.text(0, -0.75, "decode: average the cells of each digit, then pick the valid token id whose pattern is nearest\n"
            f"(least squared distance over the block); {codec.vocab_size} of {codec.base ** codec.digits} codes are "
            "tokens, padding is 0 with mask 0", ha="center", fontsize=9)
    ax.set_title(f"{codec.base} levels spread over [-1, 1] (dashed: per-digit decision boundaries)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
