"""The demo bank: a procedurally synthesised corpus of sound events and background scenes with captions.

Nothing is downloaded. Every clip is a pure function of (bank seed, clip id, sample rate, length), so it can be
rendered again anywhere, bit for bit. Event kinds differ audibly (pitch, noise colour, rhythm, envelope, sweeps,
harmonics) so that a small model can learn to tell them apart; scenes are continuous backgrounds.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from audiopair.config import DemoBankConfig
from audiopair.corpus.base import Clip

Synth = Callable[[np.random.Generator, int], np.ndarray]


# ----------------------------------------------------------------------------------------- DSP helpers
def _t(n: int, sr: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) / sr


def _noise(rng: np.random.Generator, n: int, colour: float = 0.0) -> np.ndarray:
    """Noise with a 1/f^colour power spectrum (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    spec /= f ** (colour / 2.0)
    x = np.fft.irfft(spec, n)
    return x / (np.std(x) + 1e-12)


def _band(x: np.ndarray, sr: int, lo: float, hi: float) -> np.ndarray:
    """Brick-wall band-pass in the frequency domain (deterministic, no filter state)."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1.0 / sr)
    spec[(f < lo) | (f > hi)] = 0
    y = np.fft.irfft(spec, len(x))
    return y / (np.std(y) + 1e-12)


def _env(n: int, sr: int, attack: float, decay: float) -> np.ndarray:
    """Linear attack then exponential decay (time constant ``decay`` seconds)."""
    t = _t(n, sr)
    a = np.clip(t / max(attack, 1e-4), 0, 1)
    return a * np.exp(-np.maximum(t - attack, 0) / decay)


def _fade(x: np.ndarray, sr: int, seconds: float = 0.01) -> np.ndarray:
    k = min(len(x) // 2, int(seconds * sr))
    if k > 0:
        ramp = np.linspace(0, 1, k)
        x[:k] *= ramp
        x[-k:] *= ramp[::-1]
    return x


def _place(total: int, pieces: list[tuple[int, np.ndarray]]) -> np.ndarray:
    out = np.zeros(total)
    for start, piece in pieces:
        end = min(total, start + len(piece))
        if start < total:
            out[start:end] += piece[: end - start]
    return out


def _tone(freq: float | np.ndarray, n: int, sr: int, harmonics: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """A (possibly gliding) tone with the given harmonic amplitudes."""
    f = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    phase = 2 * np.pi * np.cumsum(f) / sr
    return sum(a * np.sin((k + 1) * phase) for k, a in enumerate(harmonics))


def _chirp(f0: float, f1: float, n: int, sr: int, harmonics: tuple[float, ...] = (1.0,)) -> np.ndarray:
    return _tone(np.geomspace(f0, f1, n), n, sr, harmonics)


def _sec(sr: int, s: float) -> int:
    return max(1, int(round(s * sr)))


# ----------------------------------------------------------------------------------------- events
def _beep(r, sr):
    f, k = r.uniform(1700, 2400), int(r.integers(2, 5))
    p = _fade(_tone(f, _sec(sr, 0.09), sr), sr, 0.005)
    gap = _sec(sr, r.uniform(0.12, 0.2))
    return _place(k * gap + len(p), [(i * gap, p) for i in range(k)])


def _car_horn(r, sr):
    f = r.uniform(380, 450)
    n = _sec(sr, r.uniform(0.35, 0.55))
    honk = _fade(_tone(f, n, sr, (1, 0.6, 0.4, 0.3)) + _tone(f * 1.26, n, sr, (1, 0.5, 0.3)), sr, 0.02)
    gap = n + _sec(sr, 0.12)
    return _place(gap + n, [(0, honk), (gap, honk)])


def _bell(r, sr):
    f, n = r.uniform(420, 800), _sec(sr, r.uniform(1.2, 1.8))
    partials = sum(a * np.sin(2 * np.pi * f * m * _t(n, sr)) for m, a in ((1, 1), (2.76, 0.6), (5.4, 0.35), (8.93, 0.2)))
    return partials * _env(n, sr, 0.003, 0.45)


def _siren(r, sr):
    n = _sec(sr, r.uniform(1.6, 2.2))
    lfo = np.sin(2 * np.pi * r.uniform(0.8, 1.5) * _t(n, sr))
    return _fade(_tone(850 + 300 * lfo, n, sr, (1, 0.3)), sr, 0.05)


def _rising_whistle(r, sr):
    return _fade(_chirp(r.uniform(500, 800), r.uniform(2500, 3400), _sec(sr, r.uniform(0.6, 1.0)), sr), sr, 0.03)


def _falling_whistle(r, sr):
    return _fade(_chirp(r.uniform(2500, 3400), r.uniform(500, 800), _sec(sr, r.uniform(0.6, 1.0)), sr), sr, 0.03)


def _steam_hiss(r, sr):
    n = _sec(sr, r.uniform(0.9, 1.5))
    return _fade(_band(_noise(r, n), sr, 3500, sr / 2) * _env(n, sr, 0.05, 0.8), sr, 0.03)


def _thunder(r, sr):
    n = _sec(sr, r.uniform(1.6, 2.2))
    return _fade(_noise(r, n, 2.0) * _env(n, sr, 0.15, 0.7), sr, 0.05)


def _clock(r, sr):
    rate, n = r.uniform(2.5, 4.0), _sec(sr, r.uniform(1.6, 2.2))
    click = _band(_noise(r, _sec(sr, 0.012)), sr, 2000, 6000) * _env(_sec(sr, 0.012), sr, 0.0005, 0.003)
    return _place(n, [(int(i * sr / rate), click * (1.0 if i % 2 else 0.7)) for i in range(int(n / sr * rate))])


def _drum(r, sr):
    rate, k = r.uniform(2.0, 3.0), int(r.integers(3, 6))
    hit_n = _sec(sr, 0.25)
    hit = _chirp(r.uniform(110, 140), 50, hit_n, sr) * _env(hit_n, sr, 0.002, 0.06)
    return _place(int(k * sr / rate), [(int(i * sr / rate), hit) for i in range(k)])


def _insect(r, sr):
    n = _sec(sr, r.uniform(1.0, 1.6))
    saw = _tone(r.uniform(170, 260), n, sr, tuple(1 / k for k in range(1, 12)))
    am = 0.6 + 0.4 * np.sin(2 * np.pi * r.uniform(18, 30) * _t(n, sr))
    return _fade(saw * am, sr, 0.05)


def _bird(r, sr):
    k, base = int(r.integers(3, 6)), r.uniform(3000, 4200)
    pieces, pos = [], 0
    for _ in range(k):
        m = _sec(sr, r.uniform(0.05, 0.09))
        pieces.append((pos, _fade(_chirp(base, base * 1.5, m, sr), sr, 0.005)))
        pos += m + _sec(sr, r.uniform(0.06, 0.15))
    return _place(pos, pieces)


def _engine(r, sr):
    n, f = _sec(sr, r.uniform(1.5, 2.0)), r.uniform(28, 40)
    pulses = np.maximum(np.sin(2 * np.pi * f * _t(n, sr)), 0) ** 8
    return _fade(_band(pulses + 0.3 * _noise(r, n, 1.0), sr, 20, 1200), sr, 0.1)


def _doorbell(r, sr):
    hi = r.uniform(640, 680)
    n = _sec(sr, 0.7)
    ding = _tone(hi, n, sr, (1, 0.2)) * _env(n, sr, 0.002, 0.3)
    dong = _tone(hi * 0.794, n, sr, (1, 0.2)) * _env(n, sr, 0.002, 0.35)
    return _place(2 * n, [(0, ding), (_sec(sr, 0.45), dong)])


def _phone(r, sr):
    n = _sec(sr, 0.4)
    ring = _fade(_tone(440, n, sr) + _tone(480, n, sr), sr, 0.01) * (0.7 + 0.3 * np.sin(2 * np.pi * 20 * _t(n, sr)))
    gap = n + _sec(sr, r.uniform(0.15, 0.25))
    return _place(gap + n, [(0, ring), (gap, ring)])


def _knock(r, sr):
    k = int(r.integers(2, 5))
    m = _sec(sr, 0.08)
    pieces = []
    for i in range(k):
        hit = _band(_noise(r, m), sr, 200, 900) * _env(m, sr, 0.001, 0.015)
        pieces.append((i * _sec(sr, r.uniform(0.14, 0.2)), hit))
    return _place(pieces[-1][0] + m, pieces)


def _flute(r, sr):
    scale = np.array([523.3, 587.3, 659.3, 784.0, 880.0])
    notes = r.choice(scale, size=int(r.integers(3, 6)))
    m = _sec(sr, r.uniform(0.18, 0.26))
    pieces = []
    for i, f in enumerate(notes):
        vib = f * (1 + 0.006 * np.sin(2 * np.pi * 5.5 * _t(m, sr)))
        pieces.append((i * m, _fade(_tone(vib, m, sr, (1, 0.15, 0.05)) + 0.03 * _noise(r, m), sr, 0.02)))
    return _place(len(notes) * m, pieces)


def _laser(r, sr):
    m = _sec(sr, r.uniform(0.12, 0.18))
    zap = _fade(_chirp(4200, 250, m, sr, (1, 0.5)), sr, 0.003)
    return _place(3 * m, [(0, zap), (int(1.6 * m), zap)])


def _drip(r, sr):
    k, pieces, pos = int(r.integers(4, 7)), [], 0
    for _ in range(k):
        m = _sec(sr, 0.05)
        f0 = r.uniform(700, 1100)
        pieces.append((pos, _chirp(f0, f0 * 1.8, m, sr) * _env(m, sr, 0.001, 0.012)))
        pos += _sec(sr, r.uniform(0.15, 0.35))
    return _place(pos + _sec(sr, 0.05), pieces)


def _applause(r, sr):
    n = _sec(sr, r.uniform(1.4, 2.0))
    clicks = (r.random(n) < 300 / sr) * r.uniform(0.3, 1.0, n)
    body = np.convolve(clicks, _band(_noise(r, _sec(sr, 0.01)), sr, 800, 5000), mode="same")
    return _fade(body, sr, 0.15)


@dataclass(frozen=True)
class Kind:
    name: str
    phrases: tuple[str, ...]  # noun phrases, several phrasings
    synth: Synth


EVENTS: tuple[Kind, ...] = (
    Kind("beep", ("a high-pitched beep", "electronic beeping", "a series of short beeps"), _beep),
    Kind("car_horn", ("a car horn honking", "a honking car horn", "the blare of a car horn"), _car_horn),
    Kind("bell", ("a bell ringing", "a ringing bell", "the chime of a bell"), _bell),
    Kind("siren", ("a siren wailing", "a wailing siren", "an emergency siren"), _siren),
    Kind("rising_whistle", ("a rising whistle", "a whistle sweeping upward", "an upward whistle"), _rising_whistle),
    Kind("falling_whistle", ("a falling whistle", "a whistle sliding down", "a descending whistle"), _falling_whistle),
    Kind("steam_hiss", ("steam hissing", "a hiss of steam", "a sharp hiss"), _steam_hiss),
    Kind("thunder", ("thunder rumbling", "a rumble of thunder", "distant thunder"), _thunder),
    Kind("clock", ("a clock ticking", "the ticking of a clock", "a ticking clock"), _clock),
    Kind("drum", ("a drum beating", "drum beats", "a deep drum"), _drum),
    Kind("insect", ("an insect buzzing", "a buzzing insect", "the buzz of a fly"), _insect),
    Kind("bird", ("a bird chirping", "birdsong", "a chirping bird"), _bird),
    Kind("engine", ("an engine idling", "an idling engine", "a motor running"), _engine),
    Kind("doorbell", ("a doorbell ringing", "a doorbell chime", "the ding-dong of a doorbell"), _doorbell),
    Kind("phone", ("a telephone ringing", "a ringing phone", "a phone ring"), _phone),
    Kind("knock", ("knocking on a door", "someone knocking", "a knock at the door"), _knock),
    Kind("flute", ("a flute playing a melody", "a short flute tune", "a flute melody"), _flute),
    Kind("laser", ("a laser zap", "zapping sounds", "a sci-fi laser"), _laser),
    Kind("drip", ("water dripping", "drops of water falling", "a dripping tap"), _drip),
    Kind("applause", ("hands clapping", "applause", "a round of clapping"), _applause),
)


# ----------------------------------------------------------------------------------------- scenes
def _rain(r, sr, n):
    drops = (r.random(n) < 40 / sr) * r.uniform(0.5, 2.0, n)
    return _band(_noise(r, n, 1.0), sr, 400, 8000) + 0.5 * np.convolve(drops, np.hanning(_sec(sr, 0.004)), "same")


def _wind(r, sr, n):
    gust = 0.55 + 0.45 * np.sin(2 * np.pi * r.uniform(0.2, 0.5) * _t(n, sr) + r.uniform(0, 6.28))
    return _band(_noise(r, n, 1.0), sr, 80, 1500) * gust


def _traffic(r, sr, n):
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * r.uniform(0.1, 0.25) * _t(n, sr)) ** 2
    return _band(_noise(r, n, 2.0), sr, 30, 700) * swell


def _room_hum(r, sr, n):
    mains = r.choice([50.0, 60.0])
    return _tone(mains, n, sr, (1, 0.5, 0.3, 0.2)) + 0.1 * _noise(r, n, 1.0)


def _crowd(r, sr, n):
    voices = sum(
        _band(_noise(r, n), sr, lo, lo * 2.5) * (0.5 + 0.5 * np.sin(2 * np.pi * r.uniform(3, 5) * _t(n, sr) + r.uniform(0, 6.28)))
        for lo in (250, 400, 650)
    )
    return voices


def _waves(r, sr, n):
    swell = 0.3 + 0.7 * np.sin(np.pi * r.uniform(0.12, 0.2) * _t(n, sr) + r.uniform(0, 3.14)) ** 2
    return _band(_noise(r, n, 1.0), sr, 100, 5000) * swell


def _crickets(r, sr, n):
    f = r.uniform(4200, 5200)
    trill = (np.sin(2 * np.pi * r.uniform(12, 18) * _t(n, sr)) > 0.3).astype(float)
    return _tone(f, n, sr) * trill + 0.05 * _noise(r, n, 1.0)


@dataclass(frozen=True)
class Scene:
    name: str
    clauses: tuple[str, ...]  # sentences without the final stop, several phrasings
    synth: Callable[[np.random.Generator, int, int], np.ndarray]


SCENES: tuple[Scene, ...] = (
    Scene("rain", ("rain falls steadily", "rain is pouring down", "steady rain patters"), _rain),
    Scene("wind", ("wind blows in gusts", "a gusty wind is blowing", "the wind howls"), _wind),
    Scene("traffic", ("traffic rumbles in the distance", "cars pass on a distant road", "distant traffic drones"), _traffic),
    Scene("room_hum", ("an electric hum fills a quiet room", "a machine hums in a quiet room", "mains hum drones in a room"), _room_hum),
    Scene("crowd", ("a crowd murmurs", "people chatter in a busy hall", "many voices murmur"), _crowd),
    Scene("waves", ("waves wash onto a shore", "ocean waves roll in", "the sea surges on a beach"), _waves),
    Scene("crickets", ("crickets chirp at night", "crickets are trilling", "a chorus of crickets sings"), _crickets),
)

EVENT_KINDS = {k.name: k for k in EVENTS}
SCENE_KINDS = {s.name: s for s in SCENES}


# ----------------------------------------------------------------------------------------- clips
def _rng(seed: int, clip_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(clip_id.encode())])


def synthesise(meta: dict, clip_id: str, sample_rate: int, seconds: float | None) -> np.ndarray:
    """Render a demo clip from its id and synth meta. Pure: same inputs give the same samples."""
    rng = _rng(meta["seed"], clip_id)
    if meta["type"] == "event":
        x = EVENT_KINDS[meta["kind"]].synth(rng, sample_rate)
        x = x / (np.max(np.abs(x)) + 1e-12) * 0.9
    else:
        n = int(round((seconds or meta["seconds"]) * sample_rate))
        parts = [SCENE_KINDS[name].synth(rng, sample_rate, n) for name in meta["scenes"]]
        levels = meta["levels_db"]
        x = sum(p / (np.std(p) + 1e-12) * 10 ** (lv / 20) for p, lv in zip(parts, levels))
        x = _fade(x, sample_rate, 0.02)
    x = x.astype(np.float32)
    if seconds is not None and meta["type"] != "event":
        n = int(round(seconds * sample_rate))
        x = np.pad(x, (0, max(0, n - len(x))))[:n]
    return x


class DemoSource:
    """Event clips (role ``event``) and base scenes of one or two backgrounds (role ``base``)."""

    def __init__(self, cfg: DemoBankConfig, name: str = "demo"):
        self.name = name
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        clips: list[Clip] = []
        for kind in EVENTS if cfg.events else ():
            for i in range(cfg.event_clips_per_kind):
                cid = f"{name}/event/{kind.name}/{i:03d}"
                # Rotate the primary phrasing so every phrasing is a target somewhere.
                phrases = kind.phrases[i % len(kind.phrases) :] + kind.phrases[: i % len(kind.phrases)]
                clips.append(
                    Clip(cid, name, phrases, role="event", labels=(kind.name,),
                         meta={"synth": {"type": "event", "kind": kind.name, "seed": cfg.seed}})
                )
        for i in range(cfg.base_clips):
            k = 1 if cfg.max_backgrounds == 1 else int(rng.integers(1, cfg.max_backgrounds + 1))
            scenes = [SCENES[j] for j in rng.choice(len(SCENES), size=k, replace=False)]
            # Background level varies by clip so loudness differences are real facts to describe.
            levels = [float(rng.uniform(-30, -18))] + [float(rng.uniform(-34, -24)) for _ in scenes[1:]]
            variant = int(rng.integers(0, 3))
            captions = tuple(
                " and ".join(s.clauses[(variant + v + j) % len(s.clauses)] for j, s in enumerate(scenes))
                for v in range(3)
            )
            cid = f"{name}/base/{i:04d}"
            synth = {"type": "scene", "scenes": [s.name for s in scenes], "levels_db": levels,
                     "seed": cfg.seed, "seconds": cfg.clip_seconds}
            clips.append(Clip(cid, name, captions, role="base", labels=tuple(s.name for s in scenes),
                              meta={"synth": synth}))
        self._clips = clips

    def clips(self) -> list[Clip]:
        return list(self._clips)

    def missing(self) -> list:
        return []

    def pairs(self) -> list:
        return []
