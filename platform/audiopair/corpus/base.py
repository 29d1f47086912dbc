"""What every source of clips gives the builder: clips with captions (``corpus.load_clip`` loads their audio)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

Role = Literal["base", "event", "any"]


@dataclass(frozen=True)
class Clip:
    """One source recording.

    ``id`` is unique across all sources (it is prefixed with the source name), stable between runs, and safe to use
    as a relative file path. ``captions`` are full descriptions (AudioCaps / Clotho sentences, or an event's noun
    phrase such as "a dog barking" for event clips); the first is the primary one.
    """

    id: str
    source: str
    captions: tuple[str, ...]
    path: str | None = None  # absolute path of a file-backed clip; None for synthesised clips
    role: Role = "any"
    labels: tuple[str, ...] = ()  # event kinds / categories, e.g. ("bell",) or ("Animals", "dog_bark")
    split: str | None = None  # a split pinned by the source (e.g. Clotho's development/evaluation)
    meta: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class SourcePair:
    """A ready-made pair with its answer, as in ADIFF's released CSVs."""

    clip1: Clip
    clip2: Clip
    tier: int  # 1 | 2 | 3
    prompt: str  # the CSV's ``input``
    answer: str
    row: int  # 1-based line in the CSV, for error messages
    csv: str


@dataclass(frozen=True)
class Missing:
    """A clip a source names but whose audio is absent; reported in rejected.jsonl, never fatal."""

    clip_id: str
    path: str
    reason: str


class Source(Protocol):
    name: str

    def clips(self) -> list[Clip]: ...

    def missing(self) -> list[Missing]: ...

    def pairs(self) -> list[SourcePair]: ...


class FileSource:
    """Shared behaviour of sources whose clips are audio files on disk."""

    name: str = "files"

    def __init__(self) -> None:
        self._clips: list[Clip] = []
        self._missing: list[Missing] = []
        self._pairs: list[SourcePair] = []

    def clips(self) -> list[Clip]:
        return list(self._clips)

    def missing(self) -> list[Missing]:
        return list(self._missing)

    def pairs(self) -> list[SourcePair]:
        return list(self._pairs)

