"""Stage 1, unimodal pretraining (ADIFF §3.3), for corpora without pretrained models: the demo.

At real scale this stage is skipped: HTSAT (AudioSet-pretrained) and GPT-2 are loaded. The demo has no weights to
download, so it makes its own:

- ``make_encoder_recipe``: the tiny HTSAT learns the bank's event labels (every clip's scene and event kinds, read
  from the builder's AC manifests), multi-label BCE on the event head's clip logits, backbone trained too; with
  ``train.unimodal.encoder_event_clips`` / ``encoder_extra_mixes`` also on the training split's event clips alone
  and on extra mixes of its bases and events (``extra_examples``);
- ``make_lm_recipe``: a tiny GPT-2 learns the training split's text (captions, explanations, instructions: every
  target of every task) with a byte-level BPE tokenizer trained on the same text (``train_corpus``).

Both write ordinary ``from_pretrained`` folders, which stage 2 loads through ``model.encoder.pretrained`` and
``model.lm_pretrained`` exactly as it loads ``laion/clap-htsat-unfused`` and ``gpt2``.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.utils import ModelOutput

from audiopair.config import Config
from audiopair.data.features import FeatureStore
from audiopair.data.manifest import manifest_path, read_manifest
from audiopair.models.adiff import prefix_tokens
from audiopair.models.encoder import AudioEncoder
from audiopair.models.lm import lm_config
from audiopair.models.tokenizer import load_tokenizer, plain_ids, train_tokenizer
from audiopair.train.engine import Recipe

LABELS = "labels.json"  # the event head's class names, beside the encoder's weights


def clip_labels(dataset_dir: str | Path, split: str) -> dict[str, list[str]]:
    """Every rendered clip of ``split`` -> its event labels (the AC manifest has one record per clip)."""
    path = manifest_path(dataset_dir, "ac", split)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the encoder's stage 1 reads clip labels from the AC task")
    out = {}
    for r in read_manifest(path):
        if not r.meta.get("labels"):
            raise ValueError(f"{path}: record {r.id} has no meta.labels to pretrain the encoder on")
        out[r.clips[0]] = list(r.meta["labels"])
    return out


def label_names(dataset_dir: str | Path) -> list[str]:
    """The sorted label vocabulary of the training split."""
    return sorted({label for labels in clip_labels(dataset_dir, "train").values() for label in labels})


def train_corpus(dataset_dir: str | Path, tasks: list[str] | None = None) -> list[str]:
    """The training split's texts (targets and prompts of every task), deduplicated in first-seen order."""
    tasks = tasks or sorted({p.name.rsplit("_", 1)[0] for p in (Path(dataset_dir) / "manifests").glob("*_train.jsonl")})
    texts: dict[str, None] = {}
    for task in tasks:
        for r in read_manifest(manifest_path(dataset_dir, task, "train")):
            texts[r.target] = None
            texts[r.prompt] = None
    return list(texts)


# ------------------------------------------------------------------------------------------- the encoder
class EventTagger(nn.Module):
    """The encoder with a multi-label loss on its clip logits, for the training loop."""

    def __init__(self, encoder: AudioEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, mels: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        out = self.encoder(mels)
        loss = None if targets is None else F.binary_cross_entropy_with_logits(out.clip_logits, targets)
        return ModelOutput(loss=loss, clip_logits=out.clip_logits)


def training_clips(cfg: Config) -> tuple[dict, list[str], list[str]]:
    """The corpus' clips by id, and the base and event clip ids the training split's AC mixes use (sorted)."""
    from audiopair.corpus import make_source

    clips = {c.id: c for scfg in cfg.dataset.sources for c in make_source(scfg, cfg.dataset).clips()}
    bases, events = set(), set()
    for r in read_manifest(manifest_path(cfg.dataset.output_dir, "ac", "train")):
        recipe = r.meta.get("recipe", {})
        if recipe.get("op") == "mix":
            bases.add(recipe["base"])
            events.add(recipe["event"])
    return clips, sorted(bases), sorted(events)


def extra_examples(cfg: Config, clips: dict, bases: list[str], events: list[str]) -> list[dict]:
    """``train.unimodal``'s extra encoder examples (seeded by ``train.seed``): each event clip alone
    (``{"event", "offset_u", "labels"}``) and ``encoder_extra_mixes`` mix recipes (``{"mix": recipe, "labels"}``,
    the recipe as ``tasks.edits.mix_item`` writes it). Labels are names."""
    u, rng = cfg.train.unimodal, random.Random(hash_seed("encoder-extra", cfg.train.seed))
    out = []
    if u.encoder_event_clips:
        out += [{"event": e, "offset_u": round(rng.random(), 6), "labels": list(clips[e].labels)} for e in events]
    if u.encoder_extra_mixes and not (bases and events):
        raise ValueError("train.unimodal.encoder_extra_mixes: the training split's AC task has no mixes to take "
                         "bases and events from")
    for _ in range(u.encoder_extra_mixes):
        b, e = rng.choice(bases), rng.choice(events)
        recipe = {"op": "mix", "base": b, "event": e, "onset_u": round(rng.random(), 6),
                  "snr_db": round(rng.uniform(*cfg.dataset.mix.snr_db), 3)}
        out.append({"mix": recipe, "labels": list(clips[b].labels) + list(clips[e].labels)})
    return out


def render_extra(example: dict, clips: dict, cfg: Config) -> np.ndarray:
    """An extra example's ``(n_mels, frames)`` log-mels, made as the builder makes a training clip's: a mix through
    ``data.render.render`` (an onset that leaves the event too little room falls back to the start), an event
    alone zero-padded to ``dataset.clip_seconds`` around its seeded offset."""
    from audiopair.audio import AudioError
    from audiopair.corpus import load_clip
    from audiopair.data.features import logmel
    from audiopair.data.render import render

    d = cfg.dataset
    if "mix" in example:
        try:
            x, _ = render(example["mix"], clips, d, "train")
        except AudioError:
            x, _ = render({**example["mix"], "onset_u": 0.0}, clips, d, "train")
    else:
        n = int(round(d.clip_seconds * d.sample_rate))
        event = load_clip(clips[example["event"]], d.sample_rate, None)[:n]
        x = np.zeros(n, np.float32)
        at = int(example["offset_u"] * (n - len(event)))
        x[at : at + len(event)] = event
    # stored at dataset.features.dtype and read back as float32, as FeatureStore gives the AC clips
    return logmel(x, d.sample_rate, d.features).astype(d.features.dtype).astype(np.float32)


def make_encoder_recipe(config: dict) -> Recipe:
    """``config``: {"cfg": the Config}. The encoder's size comes from ``model.encoder`` (``pretrained`` ignored),
    its classes from the training split's labels; its examples are the AC clips of each split, plus in training
    ``train.unimodal``'s extra event clips and mixes (``extra_examples``)."""
    cfg: Config = config["cfg"]
    ds, u = cfg.dataset.output_dir, cfg.train.unimodal
    names = label_names(ds)
    enc_cfg = cfg.model.encoder.model_copy(update={"pretrained": None, "num_classes": len(names)})
    index = {n: i for i, n in enumerate(names)}
    state: dict = {}

    def examples(split: str) -> list[dict]:
        out = [{"clip": c, "labels": [index[x] for x in labels if x in index]}
               for c, labels in sorted(clip_labels(ds, split).items())]
        if split == "train" and (u.encoder_event_clips or u.encoder_extra_mixes):
            state["clips"], bases, events = training_clips(cfg)
            out += [{**e, "labels": [index[x] for x in e["labels"] if x in index]}
                    for e in extra_examples(cfg, state["clips"], bases, events)]
        return out

    def features(e: dict) -> torch.Tensor:
        if "clip" in e:
            return torch.from_numpy(state.setdefault("store", FeatureStore(ds))[e["clip"]])
        key = json.dumps({k: v for k, v in e.items() if k != "labels"}, sort_keys=True)
        cache = state.setdefault("extra", {})  # rendered once per worker (~100 KB each at the demo's size)
        if key not in cache:
            cache[key] = torch.from_numpy(render_extra(e, state["clips"], cfg))
        return cache[key]

    def collate(batch: list[dict]) -> dict:
        targets = torch.zeros(len(batch), len(names))
        for i, e in enumerate(batch):
            targets[i, e["labels"]] = 1.0
        return {"mels": torch.stack([features(e) for e in batch]), "targets": targets}

    def save(model, folder: Path) -> None:
        model.encoder.save_pretrained(folder)
        (folder / LABELS).write_text(json.dumps(names) + "\n")

    def load(model, folder: Path) -> None:
        model.encoder.load_state_dict(AudioEncoder.from_pretrained(str(folder)).state_dict())

    return Recipe(lambda: EventTagger(AudioEncoder.from_config(enc_cfg)), lambda: examples("train"),
                  lambda: examples("val"), collate, save, load)


# ------------------------------------------------------------------------------------------- the language model
def hash_seed(*parts) -> int:
    return random.Random("|".join(map(str, parts))).randrange(1 << 31)


def make_lm_recipe(config: dict) -> Recipe:
    """``config``: {"cfg": the Config, "tokenizer": folder, or None to train one here}. A random LM of
    ``model.lm_type`` at ``model.lm_*`` sizes (``audiopair.models.lm``), trained on the training split's texts
    (validated on the validation split's), each cut to ``train.unimodal.lm_max_tokens``. The tokenizer is saved with
    the model.

    Every worker trains the same tokenizer itself (BPE training is deterministic and takes a second or two), so no
    file has to travel from the driver to the workers."""
    cfg: Config = config["cfg"]
    m, ds, u = cfg.model, cfg.dataset.output_dir, cfg.train.unimodal
    if config.get("tokenizer"):
        tok = load_tokenizer(config["tokenizer"])
    else:
        tok = train_tokenizer(train_corpus(ds), u.vocab_size, tempfile.mkdtemp(prefix="audiopair_tok_"))
    offset = prefix_tokens(m)  # where an ADIFF answer starts
    max_len = min(m.lm_positions - offset, u.lm_max_tokens)

    def build() -> PreTrainedModel:
        torch.manual_seed(cfg.train.seed)
        return AutoModelForCausalLM.from_config(lm_config(m, len(tok), tok.eos_token_id))

    def examples(split: str) -> list[str]:
        if split == "train":
            return train_corpus(ds)
        return sorted({r.target for p in (Path(ds) / "manifests").glob("*_val.jsonl") for r in read_manifest(p)})

    calls = [0]

    def collate(batch: list[str]) -> dict:
        """Each text as a window of at most ``max_len`` tokens (a random one of a longer text), at the positions
        its tokens will take after the ADIFF prefix: every position embedding the answers use gets trained, at the
        cost of short sequences (tier-3 explanations run to ~230 tokens)."""
        rng = random.Random(hash_seed(cfg.train.seed, calls[0]))
        calls[0] += 1
        rows = [plain_ids(tok, t) + [tok.eos_token_id] for t in batch]  # data text: special tokens not parsed
        width = min(max_len, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), tok.eos_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            r = r[: m.lm_positions - offset]  # an answer never reaches past the LM's last position
            start = rng.randrange(len(r) - max_len + 1) if len(r) > max_len else 0
            window = r[start : start + max_len]
            n = len(window)
            ids[i, :n] = labels[i, :n] = torch.tensor(window)
            mask[i, :n] = 1
            pos[i] = torch.arange(width).add(offset + start)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": pos}

    def save(model, folder: Path) -> None:
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    def load(model, folder: Path) -> None:
        model.load_state_dict(AutoModelForCausalLM.from_pretrained(folder).state_dict())

    return Recipe(build, lambda: examples("train"), lambda: examples("val"), collate, save, load, length=len)
