"""Render planned clips: load or synthesise sources, mix events at their SNR, measure facts, compute log-mels.

``process_shard`` is the unit of parallel work. It writes the shard's FLAC clips and features, then a done-marker
JSON that lists every clip's facts and every rejection; a re-run skips shards whose marker exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from audiopair.atomic import atomic_write_json
from audiopair.audio import AudioError, mix_at_snr, write_audio
from audiopair.config import DatasetConfig
from audiopair.corpus import load_clip
from audiopair.corpus.base import Clip
from audiopair.data import features as feats
from audiopair.tasks import facts as facts_mod
from audiopair.tasks.edits import RenderItem


def render(recipe: dict, clips: dict[str, Clip], cfg: DatasetConfig, split: str = "test") -> tuple[np.ndarray, dict]:
    """The audio of a recipe, and what rendering measured (onset in seconds, gains). Deterministic. Source clips
    are fitted to ``clip_seconds`` with ``cfg.pad_mode`` and the ``split``'s crop policy."""
    sr, seconds = cfg.sample_rate, cfg.clip_seconds
    fit = {"pad": cfg.pad_mode, "crop": cfg.train_crop if split == "train" else cfg.eval_crop, "seed": cfg.seed}
    if recipe["op"] == "source":
        return load_clip(clips[recipe["clip"]], sr, seconds, **fit), {}
    if recipe["op"] != "mix":
        raise ValueError(f"unknown recipe op {recipe['op']!r}")
    base = load_clip(clips[recipe["base"]], sr, seconds, **fit)
    event = load_clip(clips[recipe["event"]], sr, None)
    min_len = int(cfg.mix.min_event_seconds * sr)
    room = len(base) - min(len(event), len(base))
    onset = int(recipe["onset_u"] * room)
    if len(base) - onset < min_len:
        raise AudioError(clips[recipe["base"]].path, f"base clip too short to hold an event ({len(base) / sr:.2f} s)")
    try:
        out, info = mix_at_snr(base, event, onset, recipe["snr_db"], cfg.mix.peak_dbfs)
    except AudioError as e:  # a silent event: blame its file, so it reaches rejected.jsonl by name
        raise AudioError(e.path or clips[recipe["event"]].path, e.reason) from None
    return out, {"onset_s": round(onset / sr, 4), "event_s": round(info["event_samples"] / sr, 4),
                 "event_gain": info["event_gain"], "scale": info["scale"]}


def _culprit(recipe: dict, clips: dict[str, Clip], err: AudioError) -> str:
    """The source file to blame for a failed render (for "worst files" in the report)."""
    if err.path:
        return err.path
    ids = [recipe.get("clip"), recipe.get("base"), recipe.get("event")]
    return next((clips[i].path or i for i in ids if i in clips), "?")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def process_shard(index: int, items: list[RenderItem], clips: dict[str, Clip], cfg: DatasetConfig, out_dir: str) -> dict:
    """Render, write and featurise one shard; return (and persist) its summary."""
    out = Path(out_dir)
    marker = out / "shards" / f"{shard_name(index)}.json"
    done: dict = {"shard": index, "clips": {}, "rejected": []}
    rows = []
    for item in items:
        try:
            x, info = render(item.recipe, clips, cfg, item.split)
            write_audio(out / "audio" / f"{item.id}.flac", x, cfg.sample_rate)
            done["clips"][item.id] = {"facts": facts_mod.measure(x, cfg.sample_rate), "render": info}
            if cfg.features.logmel:
                rows.append((item.id, feats.logmel(x, cfg.sample_rate, cfg.features)))
        except (AudioError, ValueError) as e:
            culprit = _culprit(item.recipe, clips, e) if isinstance(e, AudioError) else "?"
            done["rejected"].append({"clip_id": item.id, "path": culprit, "reason": str(e), "recipe": item.recipe})
    if rows:
        feats.write_shard(out / "features" / "logmel" / f"{shard_name(index)}.parquet", rows, cfg.features.dtype)
    atomic_write_json(marker, done)
    return done


def set_single_thread() -> None:
    """One thread per worker: with one worker per core, more threads only fight over the cores."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
