"""Prompt banks: many paraphrases per kind, sampled per training example (ADIFF App. H), one canonical per kind.

The banks are composed from parts written for this project, so each kind has well over 50 distinct prompts while
every prompt stays a natural request. Canonical tier prompts match the ``input`` column of ADIFF's released CSVs.
"""

from __future__ import annotations

import itertools
import random

_PAIR = ("the two audios", "both audios", "the two audio clips", "the two recordings", "audio 1 and audio 2",
         "these two sounds", "the pair of audio files")


def _bank(templates: tuple[str, ...], fillers: tuple[str, ...], extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every template with every filler for ``{x}``, capitalised, unique, order kept."""
    out = list(extra)
    for t, f in itertools.product(templates, fillers):
        text = t.format(x=f)
        out.append(text[0].upper() + text[1:])
    return tuple(dict.fromkeys(out))


TIER_PROMPTS: dict[int, tuple[str, ...]] = {
    1: _bank(
        ("Briefly explain the difference between {x}.", "Summarize the differences between {x} briefly.",
         "In a few words, contrast {x}.", "Concisely compare {x}.", "Give a short comparison of {x}.",
         "Point out the main difference between {x}.", "How do {x} differ? Keep it short.",
         "In brief, what separates {x}?"),
        _PAIR,
        extra=("Explain the difference in few words.", "Highlight the main differences between the two audio tracks.",
               "Provide a concise comparison of the two audios."),
    ),
    2: _bank(
        ("In one sentence, explain the difference between {x}.", "Describe in a single long sentence how {x} differ.",
         "Using one detailed sentence, contrast {x}.", "Explain in one elaborate sentence the contrast between {x}.",
         "Write one extended sentence comparing {x}.",
         "Summarize in one sentence the events and scenes that distinguish {x}.",
         "In one sentence, say how {x} differ in events, scene and order.",
         "Contrast {x} in a single sentence."),
        _PAIR,
        extra=("Explain the difference in a sentence.",
               "Describe the variation between the two audio tracks in one extended sentence."),
    ),
    3: _bank(
        ("Explain in detail the difference between {x}.", "Give a detailed comparison of {x}.",
         "Describe thoroughly how {x} differ.", "Analyse in depth the contrast between {x}.",
         "Write a detailed paragraph comparing {x}.", "Elaborate on the distinctions between {x}.",
         "Compare {x} in detail, including their sound sources and how they feel to a listener.",
         "Provide an in-depth analysis of how {x} differ."),
        _PAIR,
        extra=("Explain the difference in detail.", "Could you elaborate on the distinctions between the two audio tracks?",
               "Please provide a detailed comparison of both audio files."),
    ),
}

_FIRST = ("the first audio", "audio 1", "the first clip", "the first recording", "the audio that comes first",
          "the first sound", "the opening audio", "the first of the two audios")
_SECOND = ("the second audio", "audio 2", "the second clip", "the second recording", "the audio that comes second",
           "the second sound", "the latter audio", "the second of the two audios")
_BOTH = ("both audios", "each of the two audios", "the two audios", "both clips", "each recording",
         "both recordings", "the two clips one by one", "each of the two sounds")
_CAPTIONS = ("Caption {x}.", "Describe {x}.", "Write a caption for {x}.", "Tell me what you hear in {x}.",
             "Describe the sounds in {x}.", "Give a short description of {x}.", "What happens in {x}?",
             "Summarize the content of {x}.")

POSITION_PROMPTS: dict[str, tuple[str, ...]] = {
    kind: _bank(_CAPTIONS, objs) for kind, objs in (("first", _FIRST), ("second", _SECOND), ("both", _BOTH))
}

AC_PROMPTS = _bank(
    _CAPTIONS + ("What sounds are in {x}?", "Explain what happens in {x}."),
    ("the audio", "this audio", "the clip", "this recording", "the sound", "this sound clip", "the recording"),
)
ADC_PROMPTS = _bank(
    ("What edit turns the first of {x} into the second?", "Describe the change between {x}.",
     "What is the difference between {x}?", "State the edit that separates {x}.",
     "Which sound was added, removed or replaced between {x}?", "Give the editing instruction relating {x}.",
     "What changed between {x}?"),
    _PAIR,
)
ACC_PROMPTS = _bank(
    ("What do {x} have in common?", "Describe what is shared by {x}.", "Caption the content common to {x}.",
     "What sounds are present in both of {x}?", "Describe the commonality of {x}.",
     "What remains the same across {x}?", "Summarize what is common to {x}."),
    _PAIR,
)

CANONICAL: dict[str, str] = {
    "tier1": "Explain the difference in few words.",
    "tier2": "Explain the difference in a sentence.",
    "tier3": "Explain the difference in detail.",
    "first": "Caption the first audio.",
    "second": "Caption the second audio.",
    "both": "Caption both audios.",
    "ac": "Describe the audio.",
    "adc": "What is the difference between the two audios?",
    "acc": "What do the two audios have in common?",
}


def bank_for(task: str, tier: int | None = None, position: str | None = None) -> tuple[str, ...]:
    if task == "adiff":
        return TIER_PROMPTS[int(tier)]  # type: ignore[arg-type]
    if task == "position":
        return POSITION_PROMPTS[str(position)]
    return {"ac": AC_PROMPTS, "adc": ADC_PROMPTS, "acc": ACC_PROMPTS}[task]


def canonical(task: str, tier: int | None = None, position: str | None = None) -> str:
    if task == "adiff":
        return CANONICAL[f"tier{tier}"]
    if task == "position":
        return CANONICAL[str(position)]
    return CANONICAL[task]


def sample(task: str, rng: random.Random, tier: int | None = None, position: str | None = None) -> str:
    """A training prompt: drawn from the bank with ``rng`` (seeded per example, so builds are reproducible)."""
    return rng.choice(bank_for(task, tier, position))
