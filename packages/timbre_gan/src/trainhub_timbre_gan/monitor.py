"""GAN health checks over the logged metrics: loss spikes and a discriminator that collapses or explodes."""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

#: Loss terms watched for spikes (as logged: ``loss_g``/``loss_d`` are the phases' totals).
LOSS_TERMS = ("loss_g", "loss_d", "l1", "stft_sc", "stft_mag", "adv_g", "fm")


class GANWatch:
    """Feed it every logged metrics dict; it returns ``(kind, message, data)`` warnings, once per excursion.

    - ``loss_spike``: a loss term above ``spike_factor`` x the median of its last ``history`` logged values;
    - ``discriminator_collapse``: ``|D_real|`` and ``|D_fake|`` both below ``collapse_eps`` for
      ``collapse_patience`` logs in a row (the discriminator outputs are stuck at 0 and give no signal);
    - ``discriminator_explode``: ``|D_real|`` or ``|D_fake|`` above ``explode_limit`` (LSGAN targets are 0 and 1)
      or not finite.
    """

    def __init__(self, spike_factor: float = 10.0, collapse_eps: float = 0.01, collapse_patience: int = 3,
                 explode_limit: float = 50.0, history: int = 20, min_history: int = 3) -> None:
        self.spike_factor, self.collapse_eps, self.collapse_patience = spike_factor, collapse_eps, collapse_patience
        self.explode_limit, self.min_history = explode_limit, min_history
        self.history: dict[str, deque[float]] = {t: deque(maxlen=history) for t in LOSS_TERMS}
        self.spiking: set[str] = set()
        self.stuck = 0
        self.exploded = False

    def check(self, step: int, metrics: dict[str, float]) -> list[tuple[str, str, dict[str, Any]]]:
        out: list[tuple[str, str, dict[str, Any]]] = []
        for term in LOSS_TERMS:
            if term not in metrics or not math.isfinite(metrics[term]):
                continue
            v, hist = metrics[term], self.history[term]
            if len(hist) >= self.min_history:
                base = statistics.median(hist)
                if base > 0 and v > self.spike_factor * base:
                    if term not in self.spiking:
                        self.spiking.add(term)
                        out.append(("loss_spike", f"{term}={v:.4g} at step {step} is {v / base:.1f}x its recent median "
                                    f"{base:.4g}: lower train.lr or check the batch", {"term": term, "value": v, "median": base}))
                    continue  # a spike does not become the new normal
                self.spiking.discard(term)
            hist.append(v)
        if "D_real" in metrics and "D_fake" in metrics:
            real, fake = metrics["D_real"], metrics["D_fake"]
            size = max(abs(real), abs(fake)) if math.isfinite(real) and math.isfinite(fake) else math.inf
            if size > self.explode_limit:
                if not self.exploded:
                    self.exploded = True
                    out.append(("discriminator_explode", f"discriminator outputs exploded at step {step}: D_real={real:.4g}, "
                                f"D_fake={fake:.4g} (LSGAN targets are 1 and 0): lower the discriminator lr or raise "
                                "gan.gan_start_epoch", {"D_real": real, "D_fake": fake}))
            else:
                self.exploded = False
            self.stuck = self.stuck + 1 if size < self.collapse_eps else 0
            if self.stuck == self.collapse_patience:
                out.append(("discriminator_collapse", f"discriminator outputs stuck at 0 for {self.stuck} logs (step {step}): "
                            f"D_real={real:.3g}, D_fake={fake:.3g}; the generator gets no adversarial signal",
                            {"D_real": real, "D_fake": fake}))
        return out
