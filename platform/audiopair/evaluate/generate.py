"""Batch generation for test manifests: one model per Ray Data actor, batched decoding with the KV cache.

``Generator`` is the actor: it loads an ADIFF checkpoint folder (the one the training job reports) once, reads the
dataset's cached log-mels, and turns a batch of examples into texts. ``generate`` runs it over a list of examples:
in this process (``num_actors=0``, what tests and small evaluations use) or as a Ray Data ``map_batches`` over an
actor pool (GPU actors when ``num_gpus`` > 0). Decoding (``DecodingConfig``): greedy, beam search, or top-k / top-p /
temperature sampling; sampling is seeded per batch, so a run repeats exactly.

A bad example (no features for a clip, an unreadable record) is skipped and counted, never fatal: its row comes
back with ``error`` set and an empty ``prediction``.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from audiopair.config import DecodingConfig
from audiopair.data.features import FeatureStore

log = logging.getLogger(__name__)


def hf_kwargs(d: DecodingConfig) -> dict:
    """``DecodingConfig`` -> keyword arguments of transformers' ``generate``."""
    if d.strategy == "beam":
        return {"num_beams": d.num_beams, "do_sample": False, "early_stopping": True}
    if d.strategy == "sample":
        return {"do_sample": True, "top_k": d.top_k, "top_p": d.top_p, "temperature": d.temperature}
    return {"do_sample": False}


class Generator:
    """One loaded model; ``__call__`` maps a batch {column: values} of examples to the same batch plus
    ``prediction`` and ``error``. Columns: ``id``, ``clip1``, ``clip2`` (clip ids) and ``eval_prompt``."""

    def __init__(self, checkpoint: str | Path, dataset_dir: str | Path, decoding: DecodingConfig | dict | None = None,
                 device: str | None = None):
        from audiopair.models.adiff import load_checkpoint
        from audiopair.models.tokenizer import load_tokenizer

        folder = Path(checkpoint)
        if not (folder / "tokenizer").is_dir():
            raise FileNotFoundError(f"{folder} is not a generation checkpoint: it has no tokenizer/ folder "
                                    "(checkpoints reported by the training jobs have one)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_checkpoint(folder, device=self.device).eval()
        self.model.accept_embeddings = True  # it gets log-mels; its own encoder runs
        self.tok = load_tokenizer(folder / "tokenizer")
        self.store = FeatureStore(dataset_dir)
        self.decoding = DecodingConfig.model_validate(decoding or {}) if not isinstance(decoding, DecodingConfig) \
            else decoding

    def texts(self, mels1: torch.Tensor, mels2: torch.Tensor, prompts: list[str], first_id: str = "") -> list[str]:
        from audiopair.models.tokenizer import encode_prompts

        ids, mask = encode_prompts(self.tok, prompts, self.model.cfg.prompt_len)
        d = self.decoding
        # sampling repeats run for run: the seed follows the batch's first example, not which actor got the batch
        torch.manual_seed(random.Random(f"{d.seed}|{first_id}").randrange(1 << 63))
        out = self.model.generate(mels1.to(self.device), mels2.to(self.device), ids.to(self.device),
                                  mask.to(self.device), max_new_tokens=d.max_new_tokens, **hf_kwargs(d))
        return [t.strip() for t in self.tok.batch_decode(out, skip_special_tokens=True)]

    def __call__(self, batch: dict) -> dict:
        n = len(batch["id"])
        good, mels1, mels2, errors = [], [], [], [""] * n
        for i in range(n):
            try:
                c1, c2 = str(batch["clip1"][i]), str(batch["clip2"][i])
                m1, m2 = torch.from_numpy(self.store[c1]), torch.from_numpy(self.store[c2])
            except (KeyError, ValueError, TypeError) as e:
                errors[i] = f"{batch['id'][i]}: {e}"
                continue
            good.append(i)
            mels1.append(m1)
            mels2.append(m2)
        preds = [""] * n
        if good:
            texts = self.texts(torch.stack(mels1), torch.stack(mels2), [batch["eval_prompt"][i] for i in good],
                               str(batch["id"][good[0]]))
            for i, t in zip(good, texts):
                preds[i] = t
        return {**batch, "prediction": list(preds), "error": errors}


def generate(checkpoint: str | Path, dataset_dir: str | Path, examples: list[dict],
             decoding: DecodingConfig | None = None, batch_size: int = 16, num_actors: int = 0,
             num_gpus: float = 0) -> list[dict]:
    """``examples`` with ``prediction`` (and ``error``, empty when fine) added, in the input order.

    ``num_actors=0`` generates in this process; otherwise a Ray Data actor pool of that size (one model each)."""
    keys = ("id", "clip1", "clip2", "eval_prompt")
    rows = [{"id": e["id"], "clip1": e["clips"][0], "clip2": e["clips"][1], "eval_prompt": e["eval_prompt"]}
            for e in examples]
    if num_actors <= 0:
        gen = Generator(checkpoint, dataset_dir, decoding)
        out = []
        for k in range(0, len(rows), batch_size):
            chunk = rows[k : k + batch_size]
            res = gen({key: [r[key] for r in chunk] for key in keys})
            out += [{"prediction": p, "error": e} for p, e in zip(res["prediction"], res["error"])]
    else:
        import ray.data

        ds = ray.data.from_items([{**r, "order": i} for i, r in enumerate(rows)])
        ds = ds.map_batches(Generator, fn_constructor_args=(str(checkpoint), str(dataset_dir),
                                                             (decoding or DecodingConfig()).model_dump()),
                            batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=num_actors), num_gpus=num_gpus)
        got = sorted(ds.take_all(), key=lambda r: r["order"])
        out = [{"prediction": r["prediction"], "error": r["error"]} for r in got]
    bad = [o["error"] for o in out if o["error"]]
    if bad:
        log.warning("%d of %d examples skipped: %s", len(bad), len(out), "; ".join(bad[:3]))
    return [{**e, **o} for e, o in zip(examples, out)]
