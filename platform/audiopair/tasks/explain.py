"""ADIFF difference explanations in three tiers (ADIFF §2): concise, one long sentence, detailed paragraph.

The default generator is deterministic: templates over the two captions plus acoustic facts measured from the
audio (loudness, spectral centroid, onset rate, duration) and, when the builder knows them, the scene and the
events with their onsets. The second generator asks a local causal LM with the prompt of ADIFF App. E (see
``llm_prompt``); the builder runs it as Ray Data batch inference.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from audiopair.corpus.events import article
from audiopair.tasks.captions import lower_first, sentence, strip_caption


@dataclass
class AudioInfo:
    caption: str
    facts: dict
    scene: str | None = None  # the base scene's caption, when known
    events: list[tuple[str, float]] = field(default_factory=list)  # (noun phrase, onset seconds)


@dataclass
class PairInfo:
    first: AudioInfo
    second: AudioInfo


# ----------------------------------------------------------------------------------------- descriptors
def brightness(centroid_hz: float) -> str:
    if centroid_hz < 900:
        return "dark, low-pitched"
    if centroid_hz < 2500:
        return "warm, mid-range"
    return "bright, high-pitched"


def density(onset_rate: float) -> str:
    if onset_rate < 0.75:
        return "steady and continuous"
    if onset_rate < 3.0:
        return "intermittent"
    return "busy and rapidly pulsing"


def level(dbfs: float) -> str:
    if dbfs < -30:
        return "quiet"
    if dbfs < -18:
        return "moderately loud"
    return "loud"


_MOODS = (
    (("siren", "alarm", "horn", "thunder", "laser", "explosion", "scream"), "tense and urgent"),
    (("bird", "flute", "wave", "sea", "rain", "cricket", "music", "sing"), "calm and natural"),
    (("crowd", "voices", "people", "chatter", "applause", "clapping", "speak", "laugh"), "social and lively"),
    (("engine", "motor", "traffic", "car", "machine", "hum", "vehicle"), "mechanical and industrial"),
    (("clock", "tick", "knock", "drip", "door", "phone", "bell", "beep"), "domestic and attention-grabbing"),
)


def mood(text: str, facts: dict) -> str:
    low = text.lower()
    for words, feel in _MOODS:
        if any(w in low for w in words):
            return feel
    return "energetic" if facts.get("onset_rate", 0) >= 3 else "calm"


def _when(onset: float, duration: float) -> str:
    frac = onset / duration if duration > 0 else 0
    return "near the start" if frac < 0.25 else "midway through" if frac < 0.6 else "towards the end"


def _compare(a: dict, b: dict) -> list[str]:
    """Clauses about audio 1 relative to audio 2, only where the difference is clear."""
    out = []
    d = a["loudness_dbfs"] - b["loudness_dbfs"]
    if abs(d) >= 2:
        out.append(f"{'louder' if d > 0 else 'quieter'} by about {abs(d):.0f} dB")
    ratio = (a["centroid_hz"] + 1) / (b["centroid_hz"] + 1)
    if ratio >= 1.25 or ratio <= 0.8:
        out.append("brighter" if ratio > 1 else "darker in tone")
    r = a["onset_rate"] - b["onset_rate"]
    if abs(r) >= 1.0:
        out.append("busier" if r > 0 else "more continuous")
    return out


def _a(phrase: str) -> str:
    """``phrase`` with its indefinite article: "an intermittent", "a warm, mid-range". Every descriptor slot after
    an article goes through here, so a new descriptor cannot break agreement."""
    return f"{article(phrase)} {phrase}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _content(info: AudioInfo) -> str:
    """What is in a clip, as a clause: the caption, lower-cased to continue a sentence."""
    return lower_first(strip_caption(info.caption))


def _order(info: AudioInfo) -> str:
    """Scene and event order, as a clause, when the builder knows them; else the caption."""
    if info.scene and info.events:
        evs = [f"{lower_first(p)} {_when(t, info.facts['duration_s'])}" for p, t in sorted(info.events, key=lambda e: e[1])]
        return f"{lower_first(strip_caption(info.scene))}, with {_join(evs)}"
    return _content(info)


def _shared_scene(p: PairInfo) -> str | None:
    s1, s2 = p.first.scene, p.second.scene
    return lower_first(strip_caption(s1)) if s1 and s1 == s2 else None


def _event_contrast(p: PairInfo, timed: bool = False) -> str:
    """For two clips over the same background: which events only one of them holds (an edit, in words).
    ``timed`` says where in its clip each event starts (the order facts of tier 2)."""
    def named(info: AudioInfo) -> list[str]:
        return [lower_first(e) + (f" {_when(t, info.facts['duration_s'])}" if timed else "") for e, t in info.events]

    e1, e2 = named(p.first), named(p.second)
    only1 = [e for e in e1 if e not in e2]
    only2 = [e for e in e2 if e not in e1]
    if only1 and only2:
        return f"Audio 1 has {_join(only1)} where Audio 2 has {_join(only2)}"
    if only2:
        return f"Audio 2 adds {_join(only2)}"
    if only1:
        return f"Audio 1 also has {_join(only1)}, which Audio 2 lacks"
    return "the two hold the same events"


# ----------------------------------------------------------------------------------------- tiers
def tier1(p: PairInfo, rng: random.Random) -> str:
    cmp = _compare(p.first.facts, p.second.facts)
    scene = _shared_scene(p)
    if scene:
        core = rng.choice((f"In both audios {scene}, but {_event_contrast(p)}",
                           f"Both audios share one background ({scene}), but {_event_contrast(p)}"))
    else:
        a, b = _content(p.first), _content(p.second)
        core = rng.choice((
            f"In Audio 1 {a}, while in Audio 2 {b}",
            f"Audio 1: {a}; Audio 2: {b}",
            f"The first audio is where {a}, whereas in the second {b}",
        ))
    tail = f"; the first is {_join(cmp[:2])}" if cmp else ""
    return sentence(core + tail)


def tier2(p: PairInfo, rng: random.Random) -> str:
    f1, f2 = p.first.facts, p.second.facts
    cmp = _compare(f1, f2)
    cmp_text = f", so the first sounds {_join(cmp)}" if cmp else ", and the two sit at a similar level and tone"
    scene = _shared_scene(p)
    if scene:
        opener = rng.choice(("Over the same background, in which", "Both audios share a scene in which"))
        text = f"{opener} {scene}, {_event_contrast(p, timed=True)}, giving the second {_a(density(f2['onset_rate']))} texture{cmp_text}"
        return sentence(text)
    opener = rng.choice(
        ("The two audios differ in that", "The difference between the two audios is that", "Comparing the two audios,")
    )
    contrast = rng.choice(("whereas", "while"))
    text = (
        f"{opener} the first audio presents a scene where {_order(p.first)}, with {_a(density(f1['onset_rate']))} "
        f"texture, {contrast} in the second {_order(p.second)}, with {_a(brightness(f2['centroid_hz']))} character"
        f"{cmp_text}"
    )
    return sentence(text)


def _describe_paragraph(n: int, info: AudioInfo, rng: random.Random) -> str:
    f = info.facts
    which = "first" if n == 1 else "second"
    opener = rng.choice((f"In the {which} audio,", f"Audio {n} is a scene in which", f"The {which} recording captures how"))
    body = f"{opener} {_order(info)}."
    signal = (
        f" It is {level(f['loudness_dbfs'])} at around {f['loudness_dbfs']:.0f} dBFS, its spectral centroid near "
        f"{f['centroid_hz']:.0f} Hz gives it {_a(brightness(f['centroid_hz']))} timbre, and with about "
        f"{f['onset_rate']:.1f} onsets per second over {f['duration_s']:.0f} seconds its texture is "
        f"{density(f['onset_rate'])}."
    )
    feel = rng.choice(("The overall impression is", "To a listener it feels", "It leaves an impression that is"))
    return body + signal + f" {feel} {mood(info.caption, f)}."


def tier3(p: PairInfo, rng: random.Random) -> str:
    intro = rng.choice(
        (
            "As I listen to the two audios, their sound sources, signal characteristics and overall feel differ.",
            "The two recordings present distinct acoustic profiles.",
            "Listening closely, the two audios contrast in content, tone and texture.",
        )
    )
    cmp = _compare(p.first.facts, p.second.facts)
    if cmp:
        closing = f"Overall, the first audio is {_join(cmp)} than the second"
        m1, m2 = mood(p.first.caption, p.first.facts), mood(p.second.caption, p.second.facts)
        closing += f", and both feel {m1}." if m1 == m2 else f", and where the first feels {m1}, the second feels {m2}."
    else:
        closing = (
            "Overall, the two are similar in level and tone, so the difference lies in their sound sources: "
            f"the first feels {mood(p.first.caption, p.first.facts)}, the second {mood(p.second.caption, p.second.facts)}."
        )
    return " ".join((intro, _describe_paragraph(1, p.first, rng), _describe_paragraph(2, p.second, rng), closing))


TIERS = {1: tier1, 2: tier2, 3: tier3}


def explain(pair: PairInfo, tier: int, seed: int | str) -> str:
    """The template explanation of ``tier`` for a pair; ``seed`` picks among phrasings reproducibly."""
    return TIERS[tier](pair, random.Random(f"{seed}"))


# ----------------------------------------------------------------------------------------- LLM generator
SYSTEM_PROMPT = (
    "You are a helpful assistant with expert knowledge about audio, acoustics, and psychoacoustics. You study audio, "
    "which is the study of sound and its properties. You study acoustics, which revolve around the generation, "
    "propagation, and reception of sound waves. You study Psychology which posits that a sound is a complex stimulus "
    "that encompasses a vast range of acoustic properties involving aspects of cognition, psychoacoustics, and "
    "psychomechanics. Your task is to perform audio captioning which consists of describing audio content using "
    "natural language. To describe the acoustic content, you utilize words related to their acoustic properties, "
    "such as their semantic relations, their spectro-temporal characteristics, frequency, loudness, duration, "
    "materials, interactions, and sound sources."
)

# Tiers are set by restricting the sources the LLM may use and the length of the answer (ADIFF App. E).
TIER_INSTRUCTIONS = {
    1: "Explain the difference between the two audios in few words (one short sentence, under 30 words), "
    "naming only the main sound sources and the overall ambience of each.",
    2: "Explain the difference between the two audios in one long sentence (about 50 words) that covers the audio "
    "events, the sound sources, the nature of the sounds, their temporal order and the acoustic scene of each.",
    3: "Explain the difference between the two audios in detail, in one paragraph (about 150 words): analyse the "
    "audio events, acoustic scenes, sound sources, signal characteristics (frequency, loudness, duration, timbre), "
    "tonal differences, and how each audio feels to a listener.",
}


def llm_prompt(caption1: str, caption2: str, tier: int, facts1: dict | None = None, facts2: dict | None = None) -> str:
    """The text given to a causal LM: App. E's system prompt, the two captions (and measured facts), the tier."""

    def facts(f: dict | None) -> str:
        if not f:
            return ""
        return (f" (measured: loudness {f['loudness_dbfs']:.0f} dBFS, spectral centroid {f['centroid_hz']:.0f} Hz, "
                f"{f['onset_rate']:.1f} onsets/s, {f['duration_s']:.0f} s)")

    return (
        f"{SYSTEM_PROMPT}\n\n"
        f"Audio 1 is described as: \"{strip_caption(caption1)}\"{facts(facts1)}.\n"
        f"Audio 2 is described as: \"{strip_caption(caption2)}\"{facts(facts2)}.\n"
        f"{TIER_INSTRUCTIONS[tier]}\n\nAnswer:"
    )
