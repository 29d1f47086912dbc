"""The manifest record (DESIGN.md "Manifest schema"): one example of one task, from the builder that makes it
(``tasks/examples.py``) to the trainers and the evaluation that read it (``data/manifest.py`` stores it).

It sits at the package root, beside ``variants.py``, because both ends import it: ``tasks`` (left of ``data``)
creates records, ``data``/``train``/``evaluate`` read them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TaskName = Literal["ac", "adc", "acc", "adiff", "position"]
SplitName = Literal["train", "val", "test"]
TASKS: tuple[str, ...] = ("ac", "adc", "acc", "adiff", "position")
SPLITS: tuple[str, ...] = ("train", "val", "test")
AUDIO_COUNT = {"ac": 1, "adc": 2, "acc": 2, "adiff": 2, "position": 2}


class RenderRecipe(BaseModel):
    """How to render an example's audio on the fly instead of reading files (see data/render.py)."""

    model_config = ConfigDict(extra="forbid")
    clips: list[dict] = Field(min_length=1, max_length=2)


class Record(BaseModel):
    """One example. ``audio``: the files, relative to the manifest's folder (``../audio/<clip id>.flac``), or a
    render recipe; ``meta``: provenance (``clip`` / ``clips``, recipes, measured facts, ``eval_prompt``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    task: TaskName
    audio: list[str] | RenderRecipe
    prompt: str = Field(min_length=1)
    target: str = Field(min_length=1)
    references: list[str] = Field(min_length=1)
    tier: Literal[1, 2, 3] | None = None
    split: SplitName
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("references")
    @classmethod
    def _no_empty_reference(cls, refs: list[str]) -> list[str]:
        if any(not r.strip() for r in refs):
            raise ValueError("references must not contain empty texts")
        return refs

    @model_validator(mode="after")
    def _consistent(self) -> "Record":
        if (self.task == "adiff") != (self.tier is not None):
            raise ValueError("tier is required for task 'adiff' and must be null for other tasks")
        n = len(self.audio) if isinstance(self.audio, list) else len(self.audio.clips)
        if n != AUDIO_COUNT[self.task]:
            raise ValueError(f"task {self.task!r} takes {AUDIO_COUNT[self.task]} audio, got {n}")
        ids = self._clip_ids()
        if ids and len(ids) != n:
            raise ValueError(f"meta names {len(ids)} clip ids (meta.clips / meta.clip) for {n} audio")
        return self

    def _clip_ids(self) -> list:
        return self.meta.get("clips") or ([self.meta["clip"]] if self.meta.get("clip") else [])

    @property
    def clips(self) -> list[str]:
        """The ids of the rendered clips this record hears, in order (one for AC, two for pairs): the keys of the
        dataset's feature cache (``data/features.FeatureStore``). ``[]`` when ``meta`` names none (a manifest
        written by hand: models reading the files still can); a wrong number fails validation, so a manifest line
        with one is refused (or skipped) naming its file and line."""
        return [str(c) for c in self._clip_ids()]

    @property
    def eval_prompt(self) -> str:
        """The canonical prompt evaluation asks (``meta.eval_prompt``; the training prompt is drawn from a bank)."""
        return self.meta.get("eval_prompt", self.prompt)

    def files(self, manifest: str | os.PathLike) -> list[Path]:
        """Absolute audio paths of a file-backed record read from ``manifest`` (its paths are relative to the
        manifest's folder). Raises ``ValueError`` for a record holding a render recipe."""
        if not isinstance(self.audio, list):
            raise ValueError(f"record {self.id} holds a recipe, not files")
        base = Path(manifest).resolve().parent
        return [(base / a).resolve() for a in self.audio]
