"""Evaluation of a token-image denoiser: one-shot token accuracy per noise level, masked loss, valid codes.

For each level ``t`` every validation image is noised once (fixed seed) and denoised in one call;
the prediction is decoded to the nearest valid tokens and compared with the clean tokens on valid
blocks. Also reported: the accuracy of reading the noisy image alone (no model: each block's maximum-likelihood
token, the nearest valid code to ``noisy / sqrt(alpha_bar(t))``, which is what the token head's likelihood skip
reads before any training), the fraction of predicted blocks whose digit-wise rounding is a real token id, and
the best constant guess (``acc_chance``: the frequency of the most common token).

Generations from pure noise have no ground truth; :func:`generation_metrics` compares their decoded tokens
with the validation tokens: the total variation distance of the unigram distributions and the fraction of
adjacent generated pairs that occur somewhere in the validation text; and, given a dictionary of the training
text's words, the fraction of generated words found in it beside what a random stream with the validation
tokens' frequencies scores (:func:`word_hit_rate`).
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from trainhub_tokenimage.codec import TokenCodec
from trainhub_tokenimage.diffusion import ScheduleName, add_noise_to_timestep, alpha_bar, masked_mse, token_cross_entropy

WORD = re.compile(r"[A-Za-z]{2,}")


def dictionary_of(text: str, min_count: int = 3) -> frozenset[str]:
    """The words (ASCII letters, at least 2, lowercased) that occur at least ``min_count`` times in ``text``."""
    counts = Counter(w.lower() for w in WORD.findall(text))
    return frozenset(w for w, c in counts.items() if c >= min_count)


def word_hit_rate(texts: Iterable[str], dictionary: frozenset[str]) -> tuple[float, int]:
    """(fraction of the words of ``texts`` that are in ``dictionary``, how many words there were)."""
    words = [w.lower() for text in texts for w in WORD.findall(text)]
    return (sum(w in dictionary for w in words) / len(words) if words else 0.0), len(words)


def level_name(t: float) -> str:
    """0.1 -> "t10" (percent of the diffusion time)."""
    return f"t{round(t * 100):02d}"


@torch.no_grad()
def evaluate_denoiser(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], codec: TokenCodec,
                      levels: Sequence[float], schedule: ScheduleName, device: torch.device,
                      autocast: Callable[[], Any] = contextlib.nullcontext, seed: int = 0,
                      reference: dict[str, torch.Tensor] | None = None, head: str = "pixels") -> dict[str, float]:
    """The one-shot metrics; ``reference`` (a dict, filled here) receives the validation tokens' ``unigram``
    counts and ``bigrams`` (unique codes ``a * vocab + b``) for :func:`generation_metrics`. ``head="tokens"``:
    the model's logits are decoded by argmax and ``val_loss`` is their cross-entropy; ``val_mse`` is always the
    masked MSE of the predicted clean image."""
    ref = reference if reference is not None else {}
    bigrams: list[torch.Tensor] = []
    correct = {t: 0 for t in levels}
    noisy_correct = {t: 0 for t in levels}
    valid = {t: 0 for t in levels}
    loss_sum, mse_sum, loss_n, tokens = 0.0, 0.0, 0, 0
    counts = torch.zeros(codec.vocab_size, dtype=torch.long)
    for bi, batch in enumerate(batches):
        clean, mask = batch["clean"].to(device), batch["mask"].to(device)
        cond, cmask = batch.get("condition"), batch.get("condition_mask")
        cond = cond.to(device) if cond is not None else None
        cmask = cmask.to(device) if cmask is not None else None
        keep = codec.block_mask(mask)
        ids = codec.nearest(clean)
        truth = ids[keep]
        pair = keep[:, 1:] & keep[:, :-1]
        bigrams.append((ids[:, :-1] * codec.vocab_size + ids[:, 1:])[pair].unique().cpu())
        tokens += truth.numel()
        counts += torch.bincount(truth.cpu(), minlength=codec.vocab_size)
        for li, t in enumerate(levels):
            g = torch.Generator().manual_seed(seed * 1_000_003 + bi * 101 + li)
            noise = torch.randn(clean.shape, generator=g).to(device)
            noisy = add_noise_to_timestep(clean, t, schedule, noise=noise)
            tt = torch.full((clean.shape[0],), float(t), device=device)
            signal = float(alpha_bar(torch.tensor(float(t)), schedule).sqrt())  # noising shrinks the code
            with autocast():
                out = model(noisy, tt, condition=cond, mask=mask, condition_mask=cmask, **({"logits": True} if head == "tokens" else {}))
            if head == "tokens":
                logits = out.float()
                pred = codec.expected_image(logits)
                loss_sum += float(token_cross_entropy(logits, ids, keep)) * clean.shape[0]
                guess = logits.argmax(-1)
            else:
                pred = out.float()
                loss_sum += float(masked_mse(pred, clean, mask)) * clean.shape[0]
                guess = codec.nearest(pred)
            mse_sum += float(masked_mse(pred, clean, mask)) * clean.shape[0]
            loss_n += clean.shape[0]
            correct[t] += int((guess[keep] == truth).sum())
            noisy_correct[t] += int((codec.nearest(noisy / signal)[keep] == truth).sum())
            valid[t] += int(codec.is_valid_code(pred)[keep].sum())
    if tokens == 0:
        return {}
    ref["unigram"] = counts
    ref["bigrams"] = torch.cat(bigrams).unique()
    out: dict[str, float] = {"val_loss": loss_sum / loss_n, "val_mse": mse_sum / loss_n,
                             "acc_chance": float(counts.max()) / tokens}
    for t in levels:
        name = level_name(t)
        out[f"token_acc_{name}"] = correct[t] / tokens
        out[f"noisy_acc_{name}"] = noisy_correct[t] / tokens
        out[f"valid_frac_{name}"] = valid[t] / tokens
    out["token_acc"] = sum(correct.values()) / (tokens * len(levels))
    out["valid_frac"] = sum(valid.values()) / (tokens * len(levels))
    return out


def generation_metrics(generated: Sequence[Sequence[int]], reference: dict[str, torch.Tensor], vocab_size: int,
                       decode: Optional[Callable[[list[int]], str]] = None, dictionary: Optional[frozenset[str]] = None,
                       seed: int = 0, random_streams: int = 16) -> dict[str, float]:
    """``gen_unigram_tv``: total variation distance between the generated and the validation token frequencies
    (0 = the same, 1 = disjoint); ``gen_bigram_hit``: fraction of adjacent generated token pairs that occur in
    the validation tokens. With ``decode`` and ``dictionary``: ``gen_word_hit``, the fraction of generated words in
    the dictionary, and ``gen_word_hit_random``, the same for ``random_streams`` streams of the same lengths drawn
    from the validation token frequencies (what letters without words score)."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    pairs: list[torch.Tensor] = []
    for ids in generated:
        x = torch.as_tensor(list(ids), dtype=torch.long)
        counts += torch.bincount(x, minlength=vocab_size).double()
        if x.numel() > 1:
            pairs.append(x[:-1] * vocab_size + x[1:])
    if counts.sum() == 0 or "unigram" not in reference:
        return {}
    ref = reference["unigram"].double()
    tv = 0.5 * (counts / counts.sum() - ref / ref.sum()).abs().sum()
    out = {"gen_unigram_tv": float(tv)}
    if pairs:
        allp = torch.cat(pairs)
        out["gen_bigram_hit"] = float(torch.isin(allp, reference["bigrams"]).double().mean())
    if decode is not None and dictionary:
        out["gen_word_hit"] = word_hit_rate((decode(list(ids)) for ids in generated), dictionary)[0]
        g = torch.Generator().manual_seed(seed)
        streams = [torch.multinomial(ref, len(ids), replacement=True, generator=g).tolist()
                   for _ in range(random_streams) for ids in generated if len(ids)]
        out["gen_word_hit_random"] = word_hit_rate((decode(s) for s in streams), dictionary)[0]
    return out
