"""Pictures a run writes: labelled grids."""

from __future__ import annotations

import numpy as np
import torch

from trainhub.kit.media import labelled_grid


def test_labelled_grid_places_enlarged_tiles_under_their_titles():
    colours = [(20 + 40 * i, 100, 200) for i in range(6)]
    imgs = torch.stack([torch.tensor(c, dtype=torch.float32).view(3, 1, 1).expand(3, 8, 8) / 127.5 - 1 for c in colours])
    grid = labelled_grid(imgs, ncol=3, col_titles=["LR", "SR", "HR"], row_titles=["a", "b"], min_tile=32, padding=4)
    assert grid.dtype == np.uint8 and grid.shape[2] == 3
    boxes = []
    for c in colours:
        ys, xs = np.where((grid == c).all(axis=2))
        assert len(ys) == 32 * 32, "a tile is not an exact 4x nearest enlargement"
        assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (32, 32)
        boxes.append((ys.min(), xs.min()))
    top, left = boxes[0]
    assert boxes == [(top + 36 * (i // 3), left + 36 * (i % 3)) for i in range(6)]  # row by row, 3 to a row
    dark = (grid < 100).all(axis=2)
    assert dark[:top].any(), "no column titles above the tiles"
    assert dark[top:, :left].any(), "no row titles left of the tiles"


def test_labelled_grid_without_titles_is_just_the_tiles():
    grid = labelled_grid(torch.zeros(4, 1, 16, 16), ncol=2, min_tile=16, padding=2)
    assert grid.shape == (2 + 2 * 18, 2 + 2 * 18, 3)
