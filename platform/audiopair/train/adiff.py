"""The ADIFF recipe (ADIFF §3.3): examples from the builder's manifests, the model at a stage, its checkpoints.

Examples mix tasks by weight (ADIFF tiers + position captioning, §5.4): a weight of 0.5 keeps a seeded half of a
task's records, 2 repeats them. Audio enters as the builder's cached log-mels; the frozen encoder turns them into
embeddings once per worker, so the epochs do not re-run it (the encoder runs every step only when it trains).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from audiopair.config import Config
from audiopair.data.features import FeatureStore
from audiopair.data.manifest import manifest_path, read_manifest
from audiopair.models.adiff import build_model, load_checkpoint, save_checkpoint, set_stage
from audiopair.models.tokenizer import encode_answers, encode_prompts, load_tokenizer
from audiopair.train.engine import Recipe


def load_examples(dataset_dir: str | Path, split: str, weights: dict[str, float], seed: int) -> list[dict]:
    """Records of each weighted task in ``split`` as plain dicts (prompt, target, the two clip ids, task, tier)."""
    rng = random.Random(seed)
    out: list[dict] = []
    for task, w in sorted(weights.items()):
        if w <= 0:
            continue
        path = manifest_path(dataset_dir, task, split)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: build the dataset with these tasks (dataset.tasks.enabled)")
        recs = [{"id": r.id, "task": r.task, "tier": r.tier, "prompt": r.prompt, "target": r.target,
                 "eval_prompt": r.meta.get("eval_prompt", r.prompt), "references": r.references,
                 "clips": list(r.meta["clips"])} for r in read_manifest(path)]
        whole, frac = int(w), w - int(w)
        out += recs * whole + rng.sample(recs, int(round(frac * len(recs))))
    return out


class AudioBank:
    """Per-clip audio inputs for the model: frozen-encoder embeddings computed once, or log-mels when the encoder
    trains (then the model runs it each step)."""

    def __init__(self, dataset_dir: str | Path, clip_ids: set[str], model, batch: int = 32, cache: bool = True):
        store = FeatureStore(dataset_dir)
        self.mels = {c: torch.from_numpy(store[c]) for c in sorted(clip_ids)}
        self.embeddings: dict[str, torch.Tensor] = {}
        encoder_frozen = not any(p.requires_grad for p in model.encoder.backbone.parameters())
        if encoder_frozen and cache:
            ids = sorted(self.mels)
            model.encoder.eval()
            with torch.no_grad():
                for k in range(0, len(ids), batch):
                    chunk = ids[k : k + batch]
                    emb = model.encoder(torch.stack([self.mels[c] for c in chunk])).embedding
                    self.embeddings.update(zip(chunk, emb))
            model.accept_embeddings = True  # made by this model's own encoder (language_only: its random one)

    def __call__(self, clip_id: str) -> torch.Tensor:
        return self.embeddings.get(clip_id, self.mels[clip_id]) if self.embeddings else self.mels[clip_id]


def make_recipe(config: dict) -> Recipe:
    """Recipe factory run on each worker. ``config``: {"app": Config dump, "stage": 2|3 name, "init": folder|None,
    "tokenizer": folder, "cache_embeddings": True (False: the frozen encoder runs every step, for benchmarks)}."""
    cfg = Config.model_validate(config["app"])
    tok = load_tokenizer(config["tokenizer"])
    stage = config["stage"]
    weights = cfg.train.task_weights
    state: dict = {}

    def build():
        model = load_checkpoint(config["init"], cfg.model) if config.get("init") else build_model(cfg.model, tok)
        set_stage(model, stage)
        state["model"] = model
        return model

    def examples(split: str) -> list[dict]:
        ex = load_examples(cfg.dataset.output_dir, split, weights, cfg.train.seed)
        if "bank" not in state:
            clips = {c for s in ("train", "val") for e in load_examples(cfg.dataset.output_dir, s, weights, 0)
                     for c in e["clips"]}
            state["bank"] = AudioBank(cfg.dataset.output_dir, clips, state["model"],
                                      cache=config.get("cache_embeddings", True))
        return ex

    def collate(batch: list[dict]) -> dict:
        bank = state["bank"]
        p_ids, p_mask = encode_prompts(tok, [e["prompt"] for e in batch], cfg.model.prompt_len)
        a_ids, a_mask = encode_answers(tok, [e["target"] for e in batch], cfg.train.max_answer_tokens)
        return {"audio1": torch.stack([bank(e["clips"][0]) for e in batch]),
                "audio2": torch.stack([bank(e["clips"][1]) for e in batch]),
                "prompt_ids": p_ids, "prompt_mask": p_mask, "answer_ids": a_ids, "answer_mask": a_mask}

    def save(model, folder: Path) -> None:
        save_checkpoint(model, folder, tokenizer=tok)

    def load(model, folder: Path) -> None:
        saved = load_checkpoint(folder, cfg.model)
        model.load_state_dict(saved.state_dict())

    return Recipe(build, lambda: examples("train"), lambda: examples("val"), collate, save, load)
