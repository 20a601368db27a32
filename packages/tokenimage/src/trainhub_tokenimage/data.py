"""``TokenImageDataset``: documents -> token sequences -> images (``clean``, ``mask``, chat ``condition``).

Plain documents become ``<bos> text <eos>``. With ``packing="pack"`` short documents share an image
while they fit whole; a document longer than ``max_tokens`` continues over consecutive images.
``packing="none"`` starts every document on a fresh image. With ``use_chat_template=True`` every
assistant turn is one item: the conversation before it (``<bos> <|role|> text ... <|assistant|>``,
its last ``max_tokens`` tokens) is the condition image and the answer (``text <eos>``) the target. An
answer longer than ``max_tokens`` continues over several items: item ``k`` targets the ``k``-th piece and
its condition is the conversation plus the pieces before (again its last ``max_tokens`` tokens), so a
sampler can write a long answer image by image. Chat documents without the template are flattened into one
sequence with role tokens.

Token ids are kept in one flat numpy array plus offsets (cheap to share with loader workers).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterable, Literal, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from trainhub import UserError
from trainhub_tokenimage.codec import TokenCodec
from trainhub_tokenimage.corpus import Document, read_source, stdlib_docstrings
from trainhub_tokenimage.tokenizer import Tokenizer, load_tokenizer

Packing = Literal["pack", "none"]


def is_val(key: str, val_percent: float) -> bool:
    """Stable split by document key (named relative to its source): the same document lands in the same split
    on every machine, however the source is spelled."""
    return (zlib.crc32(key.encode("utf-8")) % 10000) < val_percent * 100


def chat_pairs(messages: list[dict[str, str]], tok: Tokenizer) -> Iterable[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) for every assistant turn."""
    prompt = [tok.bos_id]
    for m in messages:
        if m["role"] == "assistant":
            yield prompt + [tok.role_id("assistant")], tok.encode(m["content"]) + [tok.eos_id]
        prompt = prompt + [tok.role_id(m["role"])] + tok.encode(m["content"])


def chat_pieces(prompt: list[int], answer: list[int], cap: int) -> Iterable[tuple[list[int], list[int]]]:
    """(condition, target) items of one answer: pieces of at most ``cap`` tokens, each conditioned on the
    last ``cap`` tokens of the prompt plus the pieces before it."""
    for k in range(0, len(answer), cap):
        yield (prompt + answer[:k])[-cap:], answer[k : k + cap]


def flat_sequence(doc: Document, tok: Tokenizer) -> list[int]:
    if doc.messages:
        ids = [tok.bos_id]
        for m in doc.messages:
            ids += [tok.role_id(m["role"])] + tok.encode(m["content"])
        return ids + [tok.eos_id]
    return [tok.bos_id] + tok.encode(doc.text) + [tok.eos_id]


def pack(seqs: Iterable[list[int]], cap: int, packing: Packing) -> list[list[int]]:
    """Token sequences -> per-image token lists of at most ``cap`` tokens."""
    images: list[list[int]] = []
    cur: list[int] = []
    for seq in seqs:
        if packing == "pack" and cur and len(cur) + len(seq) <= cap:
            cur += seq
            continue
        if cur:
            images.append(cur)
        while len(seq) > cap:
            images.append(seq[:cap])
            seq = seq[cap:]
        cur = list(seq)
        if packing == "none" and cur:
            images.append(cur)
            cur = []
    if cur:
        images.append(cur)
    return images


class _Ragged:
    """Lists of ids as one flat int array plus offsets."""

    def __init__(self, rows: Sequence[Sequence[int]]) -> None:
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.flat = np.fromiter((i for r in rows for i in r), dtype=np.int32, count=int(lengths.sum()))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]


class TokenImageDataset(Dataset):
    """Items: ``{"clean": C x H x W in [-1, 1], "mask": 1 x H x W}`` plus ``"condition"`` and
    ``"condition_mask"`` with ``use_chat_template``.

    Args:
        source: a text file, a ``.jsonl`` file (``text`` or ``messages``) or a folder of them; None: the
            standard library's docstrings (chat template: the qualified name is the prompt, the docstring
            the answer).
        tokenizer: ``"bytes"``, a ``tokenizers`` JSON path, or a :class:`Tokenizer`.
        max_tokens: tokens per image; None: the codec's capacity.
        split: ``"train"``, ``"val"`` (``val_percent`` of documents by a hash of their key) or ``"all"``.
        documents: already-read documents (skips reading ``source``); see :meth:`splits`.
    """

    def __init__(self, source: Optional[str | Path] = None, tokenizer: str | Tokenizer | None = "bytes", img_size: int = 64,
                 channels: int = 3, block: Sequence[int] = (4, 4), base: int = 4, use_chat_template: bool = False,
                 max_tokens: Optional[int] = None, packing: Packing = "pack", split: Literal["train", "val", "all"] = "all",
                 val_percent: float = 2.0, max_documents: Optional[int] = None, max_images: Optional[int] = None,
                 documents: Optional[Sequence[Document]] = None) -> None:
        self.tokenizer = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
        self.codec = TokenCodec(self.tokenizer.vocab_size, img_size, channels, block, base)
        cap = self.codec.capacity
        if max_tokens is not None and not 1 <= max_tokens <= cap:
            raise UserError(f"data.max_tokens={max_tokens} must lie in 1..{cap} (the capacity: {self.codec.describe()})")
        self.max_tokens = max_tokens or cap
        self.use_chat_template = use_chat_template
        if documents is None:
            documents = list(read_documents(source, max_documents))
        docs = [d for d in documents if split == "all" or is_val(d.key, val_percent) == (split == "val")]
        tok = self.tokenizer
        if use_chat_template:
            conds, targets = [], []
            for d in docs:
                messages = d.messages or (_name_docstring_chat(d) if source is None else None)
                if not messages:
                    raise UserError(f"data source {source}, document {d.key}: use_chat_template needs chat records "
                                    "('messages' in JSONL); this is plain text")
                for prompt, answer in chat_pairs(messages, tok):
                    for cond, target in chat_pieces(prompt, answer, self.max_tokens):
                        conds.append(cond)
                        targets.append(target)
            self.targets, self.conditions = _Ragged(targets[:max_images]), _Ragged(conds[:max_images])
        else:
            rows = pack((flat_sequence(d, tok) for d in docs), self.max_tokens, packing)
            self.targets, self.conditions = _Ragged(rows[:max_images]), None
        self.num_documents = len(docs)

    @classmethod
    def splits(cls, source: Optional[str | Path] = None, val_source: Optional[str | Path] = None,
               max_documents: Optional[int] = None, val_max_images: Optional[int] = None,
               **kwargs: object) -> tuple["TokenImageDataset", Optional["TokenImageDataset"]]:
        """``(train, val)`` reading the documents once: val is ``val_source`` if given, else a hash split."""
        if val_source is not None:
            train = cls(source, split="all", max_documents=max_documents, **kwargs)  # type: ignore[arg-type]
            val = cls(val_source, split="all", max_images=val_max_images, **kwargs)  # type: ignore[arg-type]
        else:
            docs = list(read_documents(source, max_documents))
            train = cls(source, split="train", documents=docs, **kwargs)  # type: ignore[arg-type]
            val = cls(source, split="val", documents=docs, max_images=val_max_images, **kwargs)  # type: ignore[arg-type]
        if len(train) == 0:
            raise UserError(f"data source {source or 'stdlib docstrings'}: no training images")
        return train, (val if len(val) else None)

    def __len__(self) -> int:
        return len(self.targets)

    def tokens(self, i: int) -> list[int]:
        return self.targets[i].tolist()

    def condition_tokens(self, i: int) -> list[int]:
        return self.conditions[i].tolist() if self.conditions is not None else []

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        clean, mask = self.codec.encode(torch.from_numpy(self.targets[i].astype(np.int64)))
        item = {"clean": clean, "mask": mask}
        if self.conditions is not None:
            cond, cmask = self.codec.encode(torch.from_numpy(self.conditions[i].astype(np.int64)))
            item["condition"], item["condition_mask"] = cond, cmask
        return item


def _name_docstring_chat(doc: Document) -> list[dict[str, str]]:
    return [{"role": "user", "content": doc.key}, {"role": "assistant", "content": doc.text}]


def read_documents(source: Optional[str | Path], max_documents: Optional[int] = None) -> Iterable[Document]:
    if source is None:
        return stdlib_docstrings(max_documents)
    docs = read_source(source)
    return docs if max_documents is None else (d for _, d in zip(range(max_documents), docs))
