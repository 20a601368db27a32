from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

# a denoiser and data small enough for CPU tests (first 300 stdlib docstrings, 64-wide DiT, 256 patches)
TINY = ["model.hidden=64", "model.depth=2", "model.heads=2", "model.patch_size=4", "model.eval_levels=[0.1,0.5]",
        "model.sample_steps=3", "data.max_documents=300", "data.val_percent=10", "data.val_images=8",
        "data.eval_samples=2", "train.batch_size=8", "train.lr=1e-3", "train.warmup_steps=0", "train.schedule=constant",
        "train.ema.enabled=false", "train.log_every=10", "loader.num_workers=0", "loggers.console.progress_bar=false"]


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


@pytest.fixture
def hf_tokenizer_file(tmp_path):
    """A small BPE tokenizer trained here with the real ``tokenizers`` library, saved as JSON."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]", "<pad>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["Return the sum of two numbers.", "Grüße aus Köln — naïve café", "def f(x): return x * 2"] * 20
    tok.train_from_iterator(corpus, trainer)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path
