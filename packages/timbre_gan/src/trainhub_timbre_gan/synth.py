"""Clean music made from numbers: harmonic instruments with envelopes, several timbres, short pieces.

Each piece is a pure function of ``(seed, index)``, so the embedded default dataset is the same on every
machine and any shard of it can be rebuilt alone.
"""

from __future__ import annotations

import numpy as np

INSTRUMENTS = ("organ", "pluck", "brass", "clarinet", "bell", "strings")

_MAJOR_PENTATONIC = (0, 2, 4, 7, 9)
_MINOR_PENTATONIC = (0, 3, 5, 7, 10)
_ORGAN_DRAWBARS = (1.0, 0.7, 0.45, 0.35, 0.0, 0.25, 0.0, 0.2, 0.0, 0.1)
_BELL_PARTIALS = ((0.56, 1.0), (0.92, 0.67), (1.19, 1.0), (1.71, 1.8), (2.0, 2.67), (2.74, 1.67), (3.0, 1.46),
                  (3.76, 1.33), (4.07, 1.33))  # (frequency ratio, relative amplitude): Risset's bell


def midi_to_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69.0) / 12.0)


def adsr(n: int, sr: int, attack: float, decay: float, sustain: float, release: float) -> np.ndarray:
    """Attack/decay/sustain/release envelope of ``n`` samples (times in seconds, release inside the note)."""
    t = np.arange(n) / sr
    env = np.full(n, sustain, dtype=np.float64)
    a = t < attack
    env[a] = t[a] / max(attack, 1e-6)
    d = (t >= attack) & (t < attack + decay)
    env[d] = 1.0 - (1.0 - sustain) * (t[d] - attack) / max(decay, 1e-6)
    dur = n / sr
    r = t > dur - release
    env[r] *= np.clip((dur - t[r]) / max(release, 1e-6), 0.0, 1.0)
    return env


def _phase(f0: float, t: np.ndarray, vibrato_hz: float, depth: float) -> np.ndarray:
    """Phase (radians) of a tone at ``f0`` with sinusoidal vibrato of relative ``depth``."""
    if depth <= 0.0:
        return 2.0 * np.pi * f0 * t
    return 2.0 * np.pi * f0 * (t - depth / (2.0 * np.pi * vibrato_hz) * (np.cos(2.0 * np.pi * vibrato_hz * t) - 1.0))


def render_note(kind: str, f0: float, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One note of instrument ``kind`` (see :data:`INSTRUMENTS`), peak around 1."""
    n = max(1, int(seconds * sr))
    t = np.arange(n) / sr
    nyquist = 0.45 * sr
    out = np.zeros(n)
    if kind == "bell":
        env_decay = 1.5 + rng.random()
        for ratio, amp in _BELL_PARTIALS:
            f = f0 * ratio
            if f < nyquist:
                out += amp * np.exp(-t * env_decay * ratio) * np.sin(2.0 * np.pi * f * t + rng.random() * 2 * np.pi)
        return out * adsr(n, sr, 0.002, 0.0, 1.0, 0.02) / 4.0
    vib_hz, vib_depth = 5.0 + rng.random(), 0.0
    if kind in ("clarinet", "strings"):
        vib_depth = 0.003 + 0.003 * rng.random()
    phase = _phase(f0, t, vib_hz, vib_depth)
    harmonics = [k for k in range(1, 41) if k * f0 < nyquist]
    if kind == "organ":
        env = adsr(n, sr, 0.01, 0.0, 1.0, 0.04)
        for k in harmonics[: len(_ORGAN_DRAWBARS)]:
            out += _ORGAN_DRAWBARS[k - 1] * np.sin(k * phase)
        return out * env / 2.0
    if kind == "pluck":
        bright = 0.8 + 0.6 * rng.random()
        for k in harmonics:
            out += k ** -bright * np.exp(-t * (2.0 + 1.5 * k)) * np.sin(k * phase)
        return out * adsr(n, sr, 0.002, 0.0, 1.0, 0.03)
    if kind == "brass":  # higher partials follow the loudness envelope more steeply: bright when loud
        env = adsr(n, sr, 0.06, 0.1, 0.75, 0.08)
        for k in harmonics:
            out += (1.0 / k) * env ** (1.0 + 0.35 * (k - 1)) * np.sin(k * phase)
        return out / 1.5
    if kind == "clarinet":  # odd harmonics
        env = adsr(n, sr, 0.04, 0.05, 0.85, 0.06)
        for k in harmonics:
            if k % 2:
                out += (1.0 / k) * np.sin(k * phase)
        return out * env
    if kind == "strings":  # two slightly detuned sawtooth voices, slow attack
        env = adsr(n, sr, 0.15, 0.1, 0.9, 0.12)
        detune = 1.0 + 0.002 + 0.002 * rng.random()
        phase2 = _phase(f0 * detune, t, vib_hz * 1.1, vib_depth)
        for k in harmonics:
            out += (0.5 / k) * (np.sin(k * phase) + np.sin(k * phase2))
        return out * env / 1.5
    raise ValueError(f"unknown instrument {kind!r}; known: {', '.join(INSTRUMENTS)}")


def synth_piece(index: int, seed: int, seconds: float, sample_rate: int) -> np.ndarray:
    """A short piece: a melody, a bass line and sometimes a chord pad, each on its own instrument.

    Returns float32 mono samples with a peak between 0.5 and 0.9.
    """
    rng = np.random.default_rng([seed, 7_340_033, index])
    n = int(seconds * sample_rate)
    out = np.zeros(n)
    beat = 60.0 / rng.uniform(80.0, 140.0)
    root = int(rng.integers(52, 64))
    scale = _MAJOR_PENTATONIC if rng.random() < 0.5 else _MINOR_PENTATONIC
    kinds = list(rng.permutation(INSTRUMENTS))
    voices = [("melody", kinds[0]), ("bass", kinds[1])] + ([("pad", kinds[2])] if rng.random() < 0.6 else [])
    for role, kind in voices:
        voice = np.zeros(n)
        pos = 0.0
        degree = int(rng.integers(0, len(scale)))
        while pos < seconds:
            if role == "melody":
                dur = beat * float(rng.choice([0.5, 0.5, 1.0, 1.0, 1.5, 2.0]))
                degree = int(np.clip(degree + rng.integers(-2, 3), 0, 2 * len(scale) - 1))
                notes = [root + 12 + scale[degree % len(scale)] + 12 * (degree // len(scale))]
                gain = 0.5
            elif role == "bass":
                dur = beat * float(rng.choice([1.0, 2.0]))
                notes = [root - 12 + scale[int(rng.integers(0, 3))]]
                gain = 0.45
            else:
                dur = beat * 4.0
                base = root + scale[int(rng.integers(0, len(scale)))]
                notes = [base, base + (3 if scale is _MINOR_PENTATONIC else 4), base + 7]
                gain = 0.2
            start = int(pos * sample_rate)
            if rng.random() > 0.12 and start < n:  # some rests
                for note in notes:
                    tone = render_note(kind, midi_to_hz(note), dur, sample_rate, rng) * gain * rng.uniform(0.7, 1.0)
                    end = min(n, start + len(tone))
                    voice[start:end] += tone[: end - start]
            pos += dur
        out += voice
    peak = float(np.max(np.abs(out)))
    if peak > 0:
        out *= rng.uniform(0.5, 0.9) / peak
    return out.astype(np.float32)
