"""Tokenizers: byte-level UTF-8 (default, no files) or a HuggingFace ``tokenizers`` JSON file.

Both expose the same special tokens: ``pad``, ``bos``, ``eos`` and the chat roles ``system``,
``user``, ``assistant``. Ids are plain ints in ``[0, vocab_size)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from trainhub import UserError

SPECIALS: tuple[str, ...] = ("pad", "bos", "eos", "system", "user", "assistant")
ROLES: tuple[str, ...] = ("system", "user", "assistant")


class Tokenizer:
    """Interface: ``encode``/``decode`` text, ``vocab_size``, and ``special[name] -> id`` for :data:`SPECIALS`."""

    name: str = ""
    vocab_size: int = 0
    special: dict[str, int]

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        raise NotImplementedError

    @property
    def pad_id(self) -> int:
        return self.special["pad"]

    @property
    def bos_id(self) -> int:
        return self.special["bos"]

    @property
    def eos_id(self) -> int:
        return self.special["eos"]

    def role_id(self, role: str) -> int:
        if role not in ROLES:
            raise UserError(f"unknown chat role {role!r}; allowed: {', '.join(ROLES)}")
        return self.special[role]

    def special_text(self, i: int) -> Optional[str]:
        """``<|name|>`` if ``i`` is a special token id, else None."""
        for name, sid in self.special.items():
            if sid == i:
                return f"<|{name}|>"
        return None


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes are ids 0..255; the special tokens follow (256 = pad, 257 = bos, ...): vocab 262."""

    name = "bytes"

    def __init__(self) -> None:
        self.special = {name: 256 + i for i, name in enumerate(SPECIALS)}
        self.vocab_size = 256 + len(SPECIALS)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        out: list[str] = []
        run = bytearray()
        for i in ids:
            i = int(i)
            if i < 256:
                run.append(i)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            if not skip_special:
                out.append(self.special_text(i) or f"<|{i}|>")
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


# names a tokenizer file may already use for each special token (first found wins)
_KNOWN_NAMES: dict[str, tuple[str, ...]] = {
    "pad": ("<|pad|>", "<pad>", "[PAD]"),
    "bos": ("<|bos|>", "<s>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]"),
    "eos": ("<|eos|>", "</s>", "<|end_of_text|>", "<|endoftext|>", "[SEP]"),
    "system": ("<|system|>",),
    "user": ("<|user|>",),
    "assistant": ("<|assistant|>",),
}


class HFTokenizer(Tokenizer):
    """A HuggingFace ``tokenizers`` JSON file (``tokenizer.json``). Needs the optional ``tokenizers`` package.

    Special tokens the file already has (``<pad>``, ``</s>``, ``<|user|>``, ...) keep their ids; missing
    ones get new ids after the file's vocabulary.
    """

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        if not p.is_file():  # checked first: a mistyped path is named as such, with or without the extra
            raise UserError(f"data.tokenizer={path}: no such file (expected a tokenizers JSON file, or 'bytes')")
        try:
            from tokenizers import Tokenizer as _HF
        except ImportError:
            raise UserError(f"data.tokenizer={path}: reading tokenizer files needs the 'tokenizers' package "
                            "(pip install 'trainhub-tokenimage[hf]'); or use data.tokenizer=bytes") from None
        try:
            self.hf = _HF.from_file(str(p))
        except Exception as e:  # the Rust library raises plain Exceptions for malformed files
            raise UserError(f"data.tokenizer={path}: not a readable tokenizers JSON file ({e})") from None
        self.name = str(p)
        base = self.hf.get_vocab_size(with_added_tokens=True)
        self.base_vocab = base
        self.special = {}
        for name in SPECIALS:
            found = next((i for t in _KNOWN_NAMES[name] if (i := self.hf.token_to_id(t)) is not None), None)
            if found is None:
                found, base = base, base + 1
            self.special[name] = found
        self.vocab_size = base

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        specials = set(self.special.values())
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i not in specials and i < self.base_vocab:
                run.append(i)
                continue
            out.append(self.hf.decode(run, skip_special_tokens=False))
            run = []
            if not skip_special:
                out.append(self.special_text(i) or f"<|{i}|>")
        out.append(self.hf.decode(run, skip_special_tokens=False))
        return "".join(out)


def load_tokenizer(spec: str | None) -> Tokenizer:
    """``None``/``"bytes"``: :class:`ByteTokenizer`; anything else: a path to a ``tokenizers`` JSON file."""
    if spec in (None, "", "bytes"):
        return ByteTokenizer()
    return HFTokenizer(spec)
