"""``trainhub tokenimage info | encode | decode | layout``: look at the codec without training.

Token images are stored as PNG: 3 channels -> RGBA (alpha = the valid-pixel mask), 1 channel -> LA.
The ``base`` levels map to evenly spaced uint8 values, so a PNG round trip is exact.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from trainhub import UserError
from trainhub_tokenimage.codec import TokenCodec
from trainhub_tokenimage.tokenizer import Tokenizer, load_tokenizer


def _codec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", default="bytes", help="bytes or a tokenizers JSON file (default: bytes)")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--block", type=int, nargs=2, default=(4, 4), metavar=("H", "W"), help="pixels per token (default 4 4)")
    p.add_argument("--base", type=int, default=4, help="levels per cell (default 4)")


def _codec(a: argparse.Namespace) -> tuple[Tokenizer, TokenCodec]:
    tok = load_tokenizer(a.tokenizer)
    return tok, TokenCodec(tok.vocab_size, a.img_size, a.channels, a.block, a.base)


def save_token_png(path: Path, image: torch.Tensor, mask: torch.Tensor) -> None:
    """``C x H x W`` in [-1, 1] plus ``1 x H x W`` mask -> RGBA (C=3) or LA (C=1) PNG."""
    from trainhub.kit.media import save_png

    if image.shape[0] not in (1, 3):
        raise UserError(f"PNG holds 1 or 3 channels; this codec has {image.shape[0]}")
    pix = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte()
    alpha = (mask.float() * 255).round().byte()
    save_png(path, torch.cat([pix, alpha]).permute(1, 2, 0).numpy())


def load_token_png(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image

    try:
        img = Image.open(path)
        img.load()
    except OSError as e:
        raise UserError(f"{path}: not a readable image ({e})") from None
    has_alpha = img.mode in ("RGBA", "LA")
    arr = torch.from_numpy(np.array(img.convert("RGBA" if img.mode not in ("L", "LA") else "LA"))).permute(2, 0, 1).float()
    image, alpha = arr[:-1] / 127.5 - 1.0, arr[-1:] / 255.0
    return image, (alpha > 0.5).float() if has_alpha else torch.ones_like(alpha)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="trainhub tokenimage", description="Token <-> image codec tools.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    i = sub.add_parser("info", help="print the layout and capacity")
    _codec_args(i)
    e = sub.add_parser("encode", help="write text as token image(s); long text goes to consecutive images")
    e.add_argument("text", nargs="?", help="the text (or --file)")
    e.add_argument("--file", help="read the text from this UTF-8 file")
    e.add_argument("--out", required=True, help="output PNG; several images are numbered NAME-0.png, NAME-1.png, ...")
    _codec_args(e)
    d = sub.add_parser("decode", help="print the text in token image(s)")
    d.add_argument("images", nargs="+")
    d.add_argument("--specials", action="store_true", help="show special tokens such as <|eos|>")
    _codec_args(d)
    lay = sub.add_parser("layout", help="draw the layout picture (matplotlib)")
    lay.add_argument("--out", required=True)
    lay.add_argument("--text", default=None, help="example text (default: a sentence about the layout)")
    _codec_args(lay)
    a = p.parse_args(argv)
    tok, codec = _codec(a)
    if a.cmd == "info":
        print(codec.describe())
        print(f"tokenizer {tok.name}: vocab {tok.vocab_size}; specials " + ", ".join(f"{k}={v}" for k, v in tok.special.items()))
    elif a.cmd == "encode":
        if (a.text is None) == (a.file is None):
            raise UserError("give the text or --file FILE (one of them)")
        text = a.text if a.text is not None else Path(a.file).read_text(encoding="utf-8")
        ids = [tok.bos_id] + tok.encode(text) + [tok.eos_id]
        chunks = [ids[k : k + codec.capacity] for k in range(0, len(ids), codec.capacity)]
        out = Path(a.out)
        for k, chunk in enumerate(chunks):
            path = out if len(chunks) == 1 else out.with_name(f"{out.stem}-{k}{out.suffix}")
            save_token_png(path, *codec.encode(chunk))
            print(f"{path}: {len(chunk)} of {codec.capacity} tokens")
    elif a.cmd == "decode":
        for path in a.images:
            image, mask = load_token_png(Path(path))
            if tuple(image.shape) != (codec.channels, codec.img_size, codec.img_size):
                raise UserError(f"{path}: {tuple(image.shape)} does not match the codec ({codec.channels}x{codec.img_size}x{codec.img_size})")
            print(tok.decode(codec.decode(image, mask), skip_special=not a.specials))
    else:
        from trainhub_tokenimage.layout import draw_layout

        draw_layout(Path(a.out), tok, codec, a.text)
        print(f"wrote {a.out}")
