from __future__ import annotations

import sys

import pytest

from trainhub import UserError
from trainhub_tokenimage.tokenizer import SPECIALS, ByteTokenizer, HFTokenizer, load_tokenizer

TEXTS = ["plain ascii", "Grüße, naïve café — 世界 🐍\n\ttabs", ""]


@pytest.mark.parametrize("text", TEXTS)
def test_bytes_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text


def test_byte_specials_are_distinct_and_rendered():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 + len(SPECIALS) and len(set(tok.special.values())) == len(SPECIALS)
    ids = [tok.bos_id, tok.role_id("user")] + tok.encode("hi") + [tok.eos_id]
    assert tok.decode(ids) == "hi"
    assert tok.decode(ids, skip_special=False) == "<|bos|><|user|>hi<|eos|>"
    with pytest.raises(UserError, match="role"):
        tok.role_id("robot")


def test_hf_tokenizer_file(hf_tokenizer_file):
    tok = load_tokenizer(str(hf_tokenizer_file))
    assert isinstance(tok, HFTokenizer)
    base = tok.hf.get_vocab_size(with_added_tokens=True)
    # <pad> and </s> exist in the file and keep their ids; bos and the roles are appended after the vocabulary
    assert tok.pad_id == tok.hf.token_to_id("<pad>") and tok.eos_id == tok.hf.token_to_id("</s>")
    assert sorted(tok.special[n] for n in ("bos", "system", "user", "assistant")) == list(range(base, base + 4))
    assert tok.vocab_size == base + 4
    for text in TEXTS[:2]:
        ids = tok.encode(text)
        assert tok.decode(ids + [tok.eos_id]) == text
    assert tok.decode([tok.role_id("assistant")] + tok.encode("ok"), skip_special=False) == "<|assistant|>ok"


def test_bad_tokenizer_paths(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_tokenizer(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    pytest.importorskip("tokenizers")
    with pytest.raises(UserError, match="not a readable"):
        load_tokenizer(str(bad))


def test_tokenizer_file_without_the_extra(tmp_path, monkeypatch):
    """Without the ``tokenizers`` package (the ``[hf]`` extra) an existing file gets the one-line install hint."""
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers -> ImportError
    path = tmp_path / "tokenizer.json"
    path.write_text("{}")
    with pytest.raises(UserError, match=r"needs the 'tokenizers' package \(pip install 'trainhub-tokenimage\[hf\]'\)"):
        load_tokenizer(str(path))
    with pytest.raises(UserError, match="no such file"):
        load_tokenizer(str(tmp_path / "missing.json"))
