"""Decoded text drawn as a picture, so eval samples can be read in TensorBoard/wandb image panels."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def text_panel(texts: Sequence[str], width: int = 640, max_lines: int = 14) -> np.ndarray:
    """One box per text (wrapped, at most ``max_lines`` lines each), stacked: ``H x W x 3`` uint8."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    line_h = 12
    boxes = []
    for text in texts:
        lines: list[str] = []
        for para in text.splitlines() or [""]:
            lines += wrap_to_width(para, font, width - 12)
        if len(lines) > max_lines:
            lines = lines[: max_lines - 1] + ["[...]"]
        boxes.append(lines)
    height = sum(len(b) * line_h + 12 for b in boxes) + 2
    img = Image.new("RGB", (width, max(height, 16)), "white")
    draw = ImageDraw.Draw(img)
    y = 2
    for lines in boxes:
        draw.rectangle([2, y, width - 3, y + len(lines) * line_h + 8], outline=(160, 160, 160))
        for j, line in enumerate(lines):
            draw.text((6, y + 4 + j * line_h), line, fill=(0, 0, 0), font=font)
        y += len(lines) * line_h + 12
    return np.asarray(img)


def wrap_to_width(text: str, font: Any, max_px: float) -> list[str]:
    """Break ``text`` into lines no wider than ``max_px`` as ``font`` draws them: at the last space that fits, or
    inside a word longer than a line (generations are often one long run of characters)."""
    lines, line = [], ""
    for ch in text:
        if line and font.getlength(line + ch) > max_px:
            cut = line.rfind(" ")
            if cut > 0 and ch != " ":
                lines.append(line[:cut])
                line = line[cut + 1:]
            else:
                lines.append(line)
                line = ""
            if ch == " " and not line:
                continue
        line += ch
    return lines + [line]
