"""ACC Table 2's trainings in miniature (ACC §3.2): the pretrained stand-in ("stage 1") and one LoRA row per task
mixture, each row on the same number of training examples.

- ``train_base``: a random ``finetune.tiny`` Qwen2-Audio fully finetuned (language model, audio tower, projector)
  on the examples it is given (the build's AC captions plus label questions), on Ray Train like any finetuning run.
  Its ``model/`` folder is copied to ``<work_dir>/models/acc-base-<fingerprint>``: a ``save_pretrained`` folder that
  ``load_base`` (``from_pretrained``) opens exactly as it opens ``Qwen/Qwen2-Audio-7B-Instruct``. The fingerprint
  hashes the base's config and its training data, so a second job finds it and trains nothing.
- ``base_share``: the base learns only a seeded share (``acc_table.base.ac_share``, half) of the AC training clips,
  so the AC and ACC rows (whose targets are those clips' captions) meet captions new to it, as a finetuning set's
  captions are new to a pretrained model; trained on all of them, the base has nothing left to learn from the AC
  row, and the row's validation loss rises (RESULTS.md, ACC in miniature).
- ``budget_examples``: a row's ``budget`` training examples, shared equally by its tasks (a task with fewer records
  is cycled, in a seeded order), so AC, ADC, ACC, AC + ADC and AC + ACC see equally many.
- ``train_row``: LoRA (``finetune.lora``, ``finetune.lr``) from the base on those examples, one Ray Train worker.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

from audiopair.atomic import atomic_write_json
from audiopair.config import Config
from audiopair.data.fingerprint import json_digest
from audiopair.data.manifest import load_examples


def digest(obj) -> str:
    """A short stable hash of a JSON-able object (config sections, example lists)."""
    return json_digest(obj, 12)


def slug(row: str) -> str:
    """A row name as a file / run name: ``AC+ACC`` -> ``ac-acc``."""
    return re.sub(r"[^a-z0-9]+", "-", row.lower()).strip("-") or "row"


def examples_digest(examples: list[dict]) -> str:
    """Hash of examples' ids, texts and audio files' sizes (a rebuilt dataset gets a new fingerprint)."""
    return digest([(e["id"], e["prompt"], e["target"], [(Path(a).name, Path(a).stat().st_size) for a in e["audio"]])
                   for e in examples])


def budget_examples(dataset_dir: str | Path, tasks: list[str], budget: int, seed: int) -> list[dict]:
    """``budget`` training examples shared equally by ``tasks`` (the first tasks take the remainder). Each task's
    records are taken in a seeded shuffled order and cycled when the task has fewer than its share; the whole list
    is shuffled once more. Raises ``ValueError`` when a task has no training records."""
    if not tasks:
        raise ValueError("acc_table.rows: a row needs at least one task")
    out: list[dict] = []
    for i, task in enumerate(tasks):
        share = budget // len(tasks) + (1 if i < budget % len(tasks) else 0)
        recs = load_examples(dataset_dir, "train", {task: 1.0}, seed)
        if not recs:
            raise ValueError(f"acc_table.rows: task {task!r} has no training records in {dataset_dir}")
        rng, taken = random.Random(f"{seed}/{task}"), []
        while len(taken) < share:
            order = list(recs)
            rng.shuffle(order)
            taken += order
        out += taken[:share]
    random.Random(seed).shuffle(out)
    return out


def base_share(examples: list[dict], share: float, seed: int) -> list[dict]:
    """The base's seeded ``share`` of ``examples`` (AC training records, one per clip), at least one; the rest are
    never shown to the base. Chosen by a seeded order of the sorted ids, so it does not depend on the list's order."""
    ids = sorted(e["id"] for e in examples)
    random.Random(f"{seed}/base-share").shuffle(ids)
    keep = set(ids[: max(1, round(share * len(ids)))])
    return [e for e in examples if e["id"] in keep]


def val_examples(dataset_dir: str | Path, task: str, limit: int | None, seed: int) -> list[dict]:
    """A task's validation examples, a seeded sample of at most ``limit``."""
    recs = load_examples(dataset_dir, "val", {task: 1.0}, seed)
    return random.Random(seed).sample(recs, limit) if limit and len(recs) > limit else recs


def base_config(cfg: Config, start: Path, run_name: str, epochs: int) -> Config:
    """``cfg`` with ``finetune`` set for the stand-in's full finetuning (``acc_table.base``) from ``start``."""
    b = cfg.acc_table.base
    ft = cfg.finetune.model_copy(update={
        "model": str(start.resolve()), "method": "full", "train_audio_tower": True, "train_projector": True,
        "epochs": epochs, "lr": b.lr, "weight_decay": b.weight_decay, "warmup_steps": b.warmup_steps,
        "micro_batch": b.micro_batch, "grad_accum": 1, "zero_stage": b.zero_stage, "run_name": run_name})
    return cfg.model_copy(update={"finetune": ft})


def row_config(cfg: Config, base_dir: Path, run_name: str) -> Config:
    """``cfg`` with ``finetune`` set for one LoRA row from ``base_dir``: one pass over the row's examples."""
    ft = cfg.finetune.model_copy(update={"model": str(Path(base_dir).resolve()), "method": "lora", "epochs": 1,
                                         "run_name": run_name})
    return cfg.model_copy(update={"finetune": ft})


def _fit(cfg: Config, examples: dict, parent: str | None, label: str, say) -> Path:
    """One logged finetuning run (an MLflow child run ``label`` of ``parent``); returns its ``model/`` folder."""
    from audiopair.train.adiff import logged_stage
    from audiopair.train.engine import local_dir
    from audiopair.train.qwen import finetune_stage, make_recipe

    tc, stage = finetune_stage(cfg)
    ckpt = logged_stage(make_recipe, tc, "finetune", tc.run_name, {"cfg": cfg.for_workers(), "examples": examples},
                        stage, parent, label, say)
    return local_dir(ckpt) / "model"


def train_base(cfg: Config, examples: dict, texts: list[str], folder: Path, parent: str | None = None,
               say=print, warmup: dict | None = None) -> Path:
    """The stand-in base in ``folder`` (made here unless it is there already): a random ``finetune.tiny`` model
    with a tokenizer trained on ``texts`` (``<folder>-random``), fully finetuned on ``examples`` ({"train": [...],
    "val": [...]}). With ``warmup`` (examples of the same shape) and ``acc_table.base.warmup_epochs``, those epochs
    on ``warmup`` come first: label questions, whose answers only the audio can give, so the audio tower starts
    to learn before the captions' text alone can lower the loss. Returns ``folder``."""
    from audiopair.models.qwen2_audio import META, make_tiny

    folder = Path(folder)
    if (folder / "config.json").is_file():
        say(f"[base] {folder} exists (same fingerprint): reused, nothing trained")
        return folder
    random_dir = folder.with_name(folder.name + "-random")
    if not (random_dir / META).is_file():
        make_tiny(random_dir, texts, cfg.finetune.tiny)
        # marked as a full model folder, so the random starting point can be scored like any finetuned one
        atomic_write_json(random_dir / META, {"method": "full", "base": str(random_dir.resolve())})
    b, start = cfg.acc_table.base, random_dir
    if warmup and b.warmup_epochs:
        start = _fit(base_config(cfg, random_dir, folder.name + "-warmup", b.warmup_epochs), warmup, parent,
                     "base-warmup", say)
    model_dir = _fit(base_config(cfg, start, folder.name, b.epochs), examples, parent, "base", say)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp)
    tmp.replace(folder)  # all or nothing: a half-copied base is never taken for a finished one
    return folder


def train_row(cfg: Config, base_dir: Path, run_name: str, examples: dict, parent: str | None, say=print) -> Path:
    """One Table 2 row: LoRA from ``base_dir`` on ``examples``; returns the adapter folder (a finished run with
    the same ``run_name`` is reused by the engine)."""
    return _fit(row_config(cfg, base_dir, run_name), examples, parent, "train", say)
