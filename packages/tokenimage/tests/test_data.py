from __future__ import annotations

import json
import shutil

import pytest
import torch

from trainhub import UserError
from trainhub_tokenimage.corpus import stdlib_docstrings
from trainhub_tokenimage.data import TokenImageDataset, pack


def decode_item(ds, item, key="clean", mask="mask"):
    return ds.tokenizer.decode(ds.codec.decode(item[key], item[mask]), skip_special=False)


def test_pack_and_split():
    seqs = [[1] * 3, [2] * 4, [3] * 10, [4] * 2]
    assert pack(seqs, 8, "pack") == [[1] * 3 + [2] * 4, [3] * 8, [3] * 2 + [4] * 2]
    assert pack(seqs, 8, "none") == [[1] * 3, [2] * 4, [3] * 8, [3] * 2, [4] * 2]


def test_plain_text_long_document_fills_consecutive_images(tmp_path):
    text = "".join(f"line {i}: Grüße 🐍\n" for i in range(120))  # ~2800 bytes > two 1024-token images (2x2 blocks)
    (tmp_path / "doc.txt").write_text(text, encoding="utf-8")
    ds = TokenImageDataset(str(tmp_path / "doc.txt"), img_size=64, block=(2, 2))
    assert len(ds) == 3 and "clean" in ds[0] and "condition" not in ds[0]
    items = [ds[i] for i in range(len(ds))]
    assert all(x["clean"].shape == (3, 64, 64) and x["mask"].shape == (1, 64, 64) for x in items)
    assert items[0]["mask"].all() and items[1]["mask"].all() and not items[2]["mask"].all()
    ids = sum((ds.codec.decode(x["clean"], x["mask"]) for x in items), [])
    assert ds.tokenizer.decode(ids) == text  # exact, across image boundaries


def test_jsonl_text_and_messages_without_template(tmp_path):
    f = tmp_path / "d.jsonl"
    rows = [{"text": "first document"}, {"messages": [{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "hello"}]}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    ds = TokenImageDataset(str(f), max_tokens=200, packing="none")
    assert len(ds) == 2
    assert decode_item(ds, ds[0]) == "<|bos|>first document<|eos|>"
    assert decode_item(ds, ds[1]) == "<|bos|><|user|>hi?<|assistant|>hello<|eos|>"
    n = len("first document") + 2
    assert int(ds.codec.block_mask(ds[0]["mask"]).sum()) == n and int(ds[0]["mask"].sum()) == 16 * n  # 4x4 pixels each
    packed = TokenImageDataset(str(f), max_tokens=200, packing="pack")
    assert len(packed) == 1


def test_chat_template_condition_and_target(tmp_path):
    f = tmp_path / "chat.jsonl"
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
            {"role": "assistant", "content": "6"}]
    f.write_text(json.dumps({"messages": msgs}) + "\n", encoding="utf-8")
    ds = TokenImageDataset(str(f), use_chat_template=True)
    assert len(ds) == 2  # one item per assistant turn
    x = ds[1]
    assert set(x) == {"clean", "mask", "condition", "condition_mask"}
    assert decode_item(ds, x, "condition", "condition_mask") == \
        "<|bos|><|system|>be brief<|user|>2+2?<|assistant|>4<|user|>and 3+3?<|assistant|>"
    assert decode_item(ds, x) == "6<|eos|>"
    # a long answer continues over several items, each conditioned on the prompt plus the answer so far
    answer = "".join(f"{i:03d} " for i in range(30))  # 120 bytes + eos = 121 tokens -> pieces of 50, 50, 21
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "count"}, {"role": "assistant", "content": answer}]}))
    long = TokenImageDataset(str(f), use_chat_template=True, max_tokens=50)
    assert len(long) == 3
    pieces = [decode_item(long, long[i]) for i in range(3)]
    assert "".join(pieces) == answer + "<|eos|>" and [len(long.tokens(i)) for i in range(3)] == [50, 50, 21]
    assert decode_item(long, long[0], "condition", "condition_mask") == "<|bos|><|user|>count<|assistant|>"
    second = decode_item(long, long[2], "condition", "condition_mask")
    assert second == answer[50:100] == pieces[1]  # the last 50 tokens of prompt + first two pieces
    assert long.condition_tokens(1) == list(answer[:50].encode())  # 8 prompt + 50 answer tokens: last 50
    with pytest.raises(UserError, match="messages"):
        (tmp_path / "plain.txt").write_text("no chat here")
        TokenImageDataset(str(tmp_path / "plain.txt"), use_chat_template=True)


def test_split_is_the_same_however_the_source_is_spelled_or_wherever_it_lies(tmp_path, monkeypatch):
    notes = tmp_path / "work" / "notes"
    (notes / "sub").mkdir(parents=True)
    for i in range(60):
        (notes / ("sub" if i % 3 else "") / f"n{i}.txt").write_text(f"note number {i}\n", encoding="utf-8")
    (notes / "chats.jsonl").write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(30)))
    shutil.copytree(notes, tmp_path / "elsewhere" / "copy")  # the same folder on another machine
    monkeypatch.chdir(tmp_path / "work")

    def val_texts(source):
        val = TokenImageDataset(source, split="val", val_percent=20, packing="none")
        return sorted(decode_item(val, val[i]) for i in range(len(val)))

    seen = val_texts("notes")
    assert 0 < len(seen) < 90 and any("note number" in x for x in seen) and any("line " in x for x in seen)
    for spelling in ("./notes/", str(notes), str(tmp_path / "elsewhere" / "copy")):
        assert val_texts(spelling) == seen, spelling
    # a single file: keyed by its name, wherever it is
    one = val_texts("notes/chats.jsonl")
    assert one and one == val_texts(str(tmp_path / "elsewhere" / "copy" / "chats.jsonl"))


def test_embedded_stdlib_corpus_deterministic_with_and_without_template():
    docs = list(stdlib_docstrings(max_documents=60))
    assert len(docs) == 60 and docs == list(stdlib_docstrings(max_documents=60))
    assert len({d.key for d in docs}) == 60 and all(len(d.text) >= 40 for d in docs)
    train, val = TokenImageDataset.splits(max_documents=60, val_percent=20, max_tokens=256)
    assert val is not None and len(train) > 0
    assert torch.equal(train[0]["clean"], TokenImageDataset.splits(max_documents=60, val_percent=20, max_tokens=256)[0][0]["clean"])
    chat, _ = TokenImageDataset.splits(max_documents=60, val_percent=20, use_chat_template=True, max_tokens=256)
    item = chat[0]
    prompt = decode_item(chat, item, "condition", "condition_mask")
    assert prompt.startswith("<|bos|><|user|>") and prompt.endswith("<|assistant|>")
    name = prompt[len("<|bos|><|user|>") : -len("<|assistant|>")]
    assert any(d.key == name for d in docs)


def test_max_tokens_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("abc " * 100)
    ds = TokenImageDataset(str(tmp_path / "a.txt"), max_tokens=50)
    assert all(int(ds.codec.block_mask(ds[i]["mask"]).sum()) <= 50 for i in range(len(ds)))
    with pytest.raises(UserError, match="max_tokens"):
        TokenImageDataset(str(tmp_path / "a.txt"), max_tokens=5000)
    with pytest.raises(UserError, match="does not exist"):
        TokenImageDataset(str(tmp_path / "missing"))
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(UserError, match="bad.jsonl:1"):
        TokenImageDataset(str(tmp_path / "bad.jsonl"))
