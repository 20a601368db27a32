"""The DiT family's sizes, as the paper names them: ``DiT-<size>/<patch>`` (no torch here: the plugin lists the names
without importing the model)."""

#: size -> (depth, hidden size, heads)
SIZES: dict[str, tuple[int, int, int]] = {
    "XL": (28, 1152, 16),
    "L": (24, 1024, 16),
    "B": (12, 768, 12),
    "S": (12, 384, 6),
    "Ti": (6, 192, 3),
}
PATCHES = (2, 4, 8)
