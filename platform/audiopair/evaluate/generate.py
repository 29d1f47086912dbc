"""Batch generation for test manifests: one model per Ray Data actor, batched decoding with the KV cache.

``Generator`` is the actor: it loads an ADIFF checkpoint folder (the one the training job reports) once, reads the
dataset's cached log-mels, and turns a batch of examples into texts; ``QwenGenerator`` does the same for a finetuned
Qwen2-Audio folder, reading the audio files. ``generate`` runs it over a list of examples:
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

from audiopair.audio import AudioError
from audiopair.config import DecodingConfig
from audiopair.data.features import FeatureStore
from audiopair.progress import Progress

log = logging.getLogger(__name__)


def is_qwen(checkpoint: str | Path) -> bool:
    """A finetuned Qwen2-Audio folder (``audiopair_qwen.json``), as opposed to an ADIFF one (``adiff.json``)."""
    from audiopair.models.qwen2_audio import META

    return (Path(checkpoint) / META).is_file()


def hf_kwargs(d: DecodingConfig) -> dict:
    """``DecodingConfig`` -> keyword arguments of transformers' ``generate`` (strategy "reference": greedy)."""
    if d.strategy == "beam":
        return {"num_beams": d.num_beams, "do_sample": False, "early_stopping": True}
    if d.strategy == "sample":
        return {"do_sample": True, "top_k": d.top_k, "top_p": d.top_p, "temperature": d.temperature}
    return {"do_sample": False}


SILENCE_DB = -100.0  # the log-mel floor (audiopair.data.features.logmel): what a padded frame holds


def stack_mels(mels: list[torch.Tensor]) -> torch.Tensor:
    """``(B, n_mels, frames)``; clips of different lengths are padded at the end with silence."""
    frames = max(m.shape[-1] for m in mels)
    return torch.stack([torch.nn.functional.pad(m, (0, frames - m.shape[-1]), value=SILENCE_DB) for m in mels])


class Generator:
    """One loaded model; ``__call__`` maps a batch {column: values} of examples to the same batch plus
    ``prediction`` and ``error``. Columns: ``id``, ``clip1``, ``clip2`` (clip ids) and ``eval_prompt``.

    Subclasses that get their log-mels elsewhere override ``columns``, ``skip_errors``, ``__init__`` (calling
    ``load_model``) and ``mels`` (see ``audiopair.evaluate.downstream.AudioGenerator``)."""

    columns: tuple[str, ...] = ("id", "clip1", "clip2", "eval_prompt")
    skip_errors: tuple[type[Exception], ...] = (KeyError, ValueError, TypeError)  # a bad example, not a bad run

    def __init__(self, checkpoint: str | Path, dataset_dir: str | Path, decoding: DecodingConfig | dict | None = None,
                 device: str | None = None):
        from audiopair.data.features import check_front_end, front_end_of

        self.load_model(checkpoint, decoding, device)
        check_front_end(self.model.front_end, front_end_of(dataset_dir), f"{checkpoint} on dataset {dataset_dir}")
        self.store = FeatureStore(dataset_dir)

    def load_model(self, checkpoint: str | Path, decoding: DecodingConfig | dict | None = None,
                   device: str | None = None) -> None:
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
        self.decoding = DecodingConfig.model_validate(decoding or {}) if not isinstance(decoding, DecodingConfig) \
            else decoding

    def mels(self, batch: dict, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The two log-mels of example ``i``; raising one of ``skip_errors`` skips the example."""
        c1, c2 = str(batch["clip1"][i]), str(batch["clip2"][i])
        return torch.from_numpy(self.store[c1]), torch.from_numpy(self.store[c2])

    def inputs(self, batch: dict, i: int):
        """Example ``i``'s model input (here its two log-mels)."""
        return self.mels(batch, i)

    def seed(self, first_id: str) -> None:
        # sampling repeats run for run: the seed follows the batch's first example, not which actor got the batch
        torch.manual_seed(random.Random(f"{self.decoding.seed}|{first_id}").randrange(1 << 63))

    def texts(self, inputs: list, prompts: list[str], ids: list[str]) -> list[str]:
        mels1, mels2 = (stack_mels(list(m)).to(self.device) for m in zip(*inputs))
        return [self.decode(row) for row in self.raw(mels1, mels2, prompts, ids[0])]

    def raw(self, audio1: torch.Tensor, audio2: torch.Tensor, prompts: list[str], seed_id: str = "") -> torch.Tensor:
        """Generated ids ``(B, <= max_new_tokens)`` for batched log-mels ``(B, n_mels, frames)`` and prompts."""
        from audiopair.models.tokenizer import model_prompts

        tok_ids, mask = model_prompts(self.tok, self.model, prompts)
        d = self.decoding
        self.seed(seed_id)
        return self.model.generate(audio1, audio2, tok_ids.to(self.device), mask.to(self.device),
                                   max_new_tokens=d.max_new_tokens, stop_id=self.stop_id, **hf_kwargs(d))

    @property
    def stop_id(self) -> int | None:
        """The reference loop's stop token: the first id of ``decoding.stop_token`` (220, a lone space, for
        " <|endoftext|>" in GPT-2: the wrapper's own rule); None for the other strategies."""
        if self.decoding.strategy != "reference":
            return None
        return self.tok(self.decoding.stop_token, add_special_tokens=False)["input_ids"][0]

    def decode(self, ids: torch.Tensor) -> str:
        """One row of ``raw``'s ids as text. The reference loop's text is the wrapper's: every id up to and
        including the stop token, special tokens kept; the others drop special tokens and surrounding space."""
        if self.stop_id is None:
            return self.tok.decode(ids, skip_special_tokens=True).strip()
        ids = ids.tolist()
        return self.tok.decode(ids[: ids.index(self.stop_id) + 1] if self.stop_id in ids else ids)

    def __call__(self, batch: dict) -> dict:
        n = len(batch["id"])
        good, inputs, errors = [], [], [""] * n
        for i in range(n):
            try:
                inputs.append(self.inputs(batch, i))
            except self.skip_errors as e:
                errors[i] = f"{batch['id'][i]}: {e}"
                continue
            good.append(i)
        preds = [""] * n
        if good:
            texts = self.texts(inputs, [str(batch["eval_prompt"][i]) for i in good], [str(batch["id"][i]) for i in good])
            for i, t in zip(good, texts):
                preds[i] = t
        return {**batch, "prediction": list(preds), "error": errors}


class FileGenerator(Generator):
    """``Generator`` over audio files (columns ``id``, ``audio1``, ``audio2``, ``eval_prompt``): each file becomes
    the log-mels of the model's own front end (``model.front_end``, recorded at training or import; ``front_end``
    for models saved without one), fitted as ADIFF's loader does: mono, resampled, repeat-padded to ``seconds``,
    cropped from the start (the reference crops at random) at inference."""

    columns = ("id", "audio1", "audio2", "eval_prompt")
    skip_errors = Generator.skip_errors + (AudioError, OSError)

    def __init__(self, checkpoint: str | Path, front_end: dict | None = None, decoding: DecodingConfig | dict | None = None,
                 device: str | None = None, seconds: float | None = None):
        from audiopair.config import FeatureConfig

        self.load_model(checkpoint, decoding, device)
        fe = dict(self.model.front_end or front_end or {})
        if not fe:
            raise ValueError(f"{checkpoint} records no front end (saved before front ends were recorded): pass "
                             "front_end, e.g. audiopair.data.features.front_end(dataset.features, sample_rate)")
        self.sample_rate = int(fe.pop("sample_rate"))
        self.features = FeatureConfig.model_validate(fe)
        frames = self.model.encoder.frames
        if seconds is None and frames:  # the encoder's window: 1001 frames = 10 s at 32 kHz, hop 320
            seconds = (frames - 1) * self.features.hop_length / self.sample_rate
        self.seconds = seconds

    def mel(self, path: str) -> torch.Tensor:
        from audiopair.audio import load_audio
        from audiopair.data.features import logmel

        x = load_audio(path, self.sample_rate, self.seconds, pad="repeat")
        return torch.from_numpy(logmel(x, self.sample_rate, self.features))

    def mels(self, batch: dict, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mel(str(batch["audio1"][i])), self.mel(str(batch["audio2"][i]))


class QwenGenerator(Generator):
    """``Generator`` for finetuned Qwen2-Audio folders (LoRA adapter or full): audio from the files (columns
    ``audio1``, ``audio2``; an empty ``audio2`` means one audio), resampled to the processor's 16 kHz."""

    columns = ("id", "audio1", "audio2", "eval_prompt")
    skip_errors = Generator.skip_errors + (AudioError, OSError)  # one unreadable file skips its example

    def __init__(self, checkpoint: str | Path, audio: dict | None = None, decoding: DecodingConfig | dict | None = None,
                 device: str | None = None):
        """``audio``: ``max_seconds`` (crop; None: the encoder's window) and ``system`` (the system prompt)."""
        from audiopair.models.qwen2_audio import load_finetuned

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model, self.processor = load_finetuned(checkpoint, dtype)
        self.model.to(self.device).eval()
        self.audio = audio or {}
        self.decoding = DecodingConfig.model_validate(decoding or {}) if not isinstance(decoding, DecodingConfig) \
            else decoding

    def paths(self, batch: dict, i: int) -> list[str]:
        return [str(p) for p in (batch["audio1"][i], batch["audio2"][i]) if str(p)]

    def inputs(self, batch: dict, i: int) -> list:
        from audiopair.audio import load_audio
        from audiopair.models.qwen2_audio import fit_window

        sr = self.processor.feature_extractor.sampling_rate
        return [fit_window(load_audio(p, sr), self.processor, self.audio.get("max_seconds"), f"{batch['id'][i]} ({p})")
                for p in self.paths(batch, i)]

    def texts(self, inputs: list, prompts: list[str], ids: list[str]) -> list[str]:
        from audiopair.models.qwen2_audio import generate_texts

        self.seed(ids[0])
        rows = [{"id": i, "prompt": p} for i, p in zip(ids, prompts)]
        return generate_texts(self.model, self.processor, rows, inputs, self.audio.get("system"),
                              max_new_tokens=self.decoding.max_new_tokens, **hf_kwargs(self.decoding))


class QwenClipGenerator(QwenGenerator):
    """``QwenGenerator`` over single clips (column ``path``): classification's label questions."""

    columns = ("id", "path", "eval_prompt")

    def paths(self, batch: dict, i: int) -> list[str]:
        return [str(batch["path"][i])]


def run_generator(cls: type[Generator], args: tuple, rows: list[dict], batch_size: int = 16, num_actors: int = 0,
                  num_gpus: float = 0) -> list[dict]:
    """``{"prediction", "error"}`` per row of ``rows`` (dicts with ``cls.columns``), in order: ``cls(*args)`` in this
    process (``num_actors=0``) or a Ray Data actor pool of ``num_actors`` such objects (``args`` must pickle)."""
    keys = cls.columns
    # examples done, examples/s and ETA in the log at most every 15 s (audiopair.progress), and a last line
    with Progress(len(rows), "generate", "examples", emit=log.info, heartbeat=True) as bar:
        if num_actors <= 0:
            gen = cls(*args)  # its model loader holds audiopair.runtime.MODEL_BUILDING
            out = []
            for k in range(0, len(rows), batch_size):
                chunk = rows[k : k + batch_size]
                res = gen({key: [r[key] for r in chunk] for key in keys})
                out += [{"prediction": p, "error": e} for p, e in zip(res["prediction"], res["error"])]
                bar.update(len(chunk))
        else:
            import ray.data

            ds = ray.data.from_items([{**{key: r[key] for key in keys}, "order": i} for i, r in enumerate(rows)])
            ds = ds.map_batches(cls, fn_constructor_args=args, batch_size=batch_size, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=num_actors), num_gpus=num_gpus)
            got = []
            for r in ds.iter_rows():
                got.append(r)
                bar.update()
            got.sort(key=lambda r: r["order"])
            out = [{"prediction": str(r["prediction"]), "error": str(r["error"])} for r in got]
    bad = [o["error"] for o in out if o["error"]]
    if bad:
        log.warning("%d of %d examples skipped: %s", len(bad), len(out), "; ".join(bad[:3]))
    return out


def generate(checkpoint: str | Path, dataset_dir: str | Path, examples: list[dict],
             decoding: DecodingConfig | None = None, batch_size: int = 16, num_actors: int = 0,
             num_gpus: float = 0, qwen_audio: dict | None = None) -> list[dict]:
    """``examples`` with ``prediction`` (and ``error``, empty when fine) added, in the input order.

    ``checkpoint`` is an ADIFF model folder or a finetuned Qwen2-Audio folder (``qwen_audio``: ``QwenGenerator``'s
    ``audio`` settings). ``num_actors=0`` generates in this process; otherwise a Ray Data actor pool of that size
    (one model each)."""
    dec = (decoding or DecodingConfig()).model_dump()
    if is_qwen(checkpoint):
        rows = [{"id": e["id"], "audio1": e["audio"][0], "audio2": e["audio"][1] if len(e["audio"]) > 1 else "",
                 "eval_prompt": e["eval_prompt"]} for e in examples]
        out = run_generator(QwenGenerator, (str(checkpoint), qwen_audio or {}, dec), rows, batch_size, num_actors,
                            num_gpus)
    else:  # ADIFF always hears two audios: a one-audio task (AC) gives it the clip twice
        rows = [{"id": e["id"], "clip1": (e["clips"] or [""])[0], "clip2": (e["clips"] or [""])[-1],
                 "eval_prompt": e["eval_prompt"]} for e in examples]  # no clip ids: a KeyError skips the example
        out = run_generator(Generator, (str(checkpoint), str(dataset_dir), dec), rows, batch_size, num_actors,
                            num_gpus)
    return [{**e, **o} for e, o in zip(examples, out)]
