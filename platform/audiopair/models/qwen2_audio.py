"""Qwen2-Audio (ACC §2.2): load, turn examples with one or two audios into training batches, LoRA / full finetuning,
adapter checkpoints, merging, batched generation.

Conversations number their audios as Qwen2-Audio's chat template does ("Audio 1: <|audio_bos|><|AUDIO|>..."); the
processor expands each ``<|AUDIO|>`` to one token per audio frame the encoder will produce (16 kHz Whisper features,
4 mel frames per token). Labels cover the assistant's answer and its ``<|im_end|>`` only: never the system text,
the prompt or the audio tokens.

A finetuned folder holds ``audiopair_qwen.json`` (method, base model), the processor, and either the LoRA adapter
(``adapter_model.safetensors``, a few MB at r 8) or the whole model (safetensors).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

META = "audiopair_qwen.json"
IGNORE = -100
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]


# ----------------------------------------------------------------------------------------------------- loading
def load_base(ref: str | os.PathLike, dtype: torch.dtype | None = None):
    """``(model, processor)`` from a hub id or a local folder (the real Qwen2-Audio or a tiny one)."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from audiopair.runtime import MODEL_BUILDING

    with MODEL_BUILDING:
        model = Qwen2AudioForConditionalGeneration.from_pretrained(str(ref), dtype=dtype or torch.float32)
    return model, AutoProcessor.from_pretrained(str(ref))


def load_finetuned(folder: str | os.PathLike, dtype: torch.dtype | None = None):
    """``(model, processor)`` of a folder this project wrote: a LoRA adapter on its base, or a full model."""
    from peft import PeftModel

    folder = Path(folder)
    meta_file = folder / META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{folder} is not a finetuned Qwen2-Audio folder (no {META}); give the model/ folder "
                                "inside a training checkpoint, or a merged model folder")
    meta = json.loads(meta_file.read_text())
    from transformers import AutoProcessor

    from audiopair.runtime import MODEL_BUILDING

    if meta["method"] == "lora":
        with MODEL_BUILDING:  # the adapter's layers too: peft builds them while from_pretrained may patch elsewhere
            base, _ = load_base(meta["base"], dtype)
            model = PeftModel.from_pretrained(base, str(folder))
    else:
        model, _ = load_base(folder, dtype)
    return model, AutoProcessor.from_pretrained(str(folder))


def is_finetuned_folder(folder: str | os.PathLike) -> bool:
    return (Path(folder) / META).is_file()


# ----------------------------------------------------------------------------------------------------- finetuning
def lm_target_regex(names: Sequence[str]) -> str:
    """peft ``target_modules`` regex: these projections inside the language model only (not the audio tower, whose
    attention layers share the names, and not lm_head)."""
    return rf".*language_model\..*\.({'|'.join(names)})$"


def prepare_for_training(model, method: str, lora=None, train_audio_tower: bool = False, train_projector: bool = False,
                         gradient_checkpointing: bool = False):
    """Set what trains. LoRA: a peft model with adapters on the LM's linear layers (plus full copies of the audio
    tower / projector when they train). Full: every LM weight, audio tower and projector as asked."""
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        extra = [m for m, on in (("audio_tower", train_audio_tower), ("multi_modal_projector", train_projector)) if on]
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                         target_modules=lm_target_regex(lora.target_modules), modules_to_save=extra or None)
        if gradient_checkpointing:
            model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks need an input that has grad
        return get_peft_model(model, cfg)
    for name, p in model.named_parameters():
        p.requires_grad = (name.startswith("language_model.") or (train_audio_tower and name.startswith("audio_tower."))
                           or (train_projector and name.startswith("multi_modal_projector.")))
    return model


def save_finetuned(model, folder: str | os.PathLike, processor, base: str, method: str,
                   state_dict: dict | None = None) -> Path:
    """Write a finetuned folder: the adapter only for LoRA, the whole model for full finetuning (``state_dict``: the
    weights gathered from ZeRO-3 partitions)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), state_dict=state_dict, safe_serialization=True)
    processor.save_pretrained(str(folder))
    (folder / META).write_text(json.dumps({"method": method, "base": base}, indent=1))
    return folder


def load_weights_into(model, folder: str | os.PathLike, method: str) -> None:
    """Load a finetuned folder's weights into an already prepared model (a resumed run)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if method == "lora":
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        return
    params = list(model.parameters())
    if not any(hasattr(p, "ds_id") for p in params):
        _load_full(model, folder)
        return
    # ZeRO-3 built the model partitioned: gather every weight, let rank 0 load, DeepSpeed re-partitions on exit
    import deepspeed
    import torch.distributed as dist

    with deepspeed.zero.GatheredParameters(params, modifier_rank=0):
        if dist.get_rank() == 0:
            _load_full(model, folder)


def _load_full(model, folder: Path) -> None:
    from safetensors.torch import load_file
    from transformers.modeling_utils import load_sharded_checkpoint

    if (folder / "model.safetensors").is_file():
        missing, unexpected = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
        if unexpected or any("lm_head" not in k for k in missing):  # lm_head may be tied to the embedding
            raise ValueError(f"{folder}: weights do not fit the model (missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]})")
    else:
        load_sharded_checkpoint(model, str(folder))


def merge_lora(adapter_folder: str | os.PathLike, out_folder: str | os.PathLike) -> Path:
    """Base + adapter folded into plain weights: a standalone model folder that loads without peft."""
    model, processor = load_finetuned(adapter_folder)
    merged = model.merge_and_unload()
    out = Path(out_folder)
    base = json.loads((Path(adapter_folder) / META).read_text())["base"]
    return save_finetuned(merged, out, processor, base=base, method="full")


# ----------------------------------------------------------------------------------------------------- batches
def messages(prompt: str, n_audio: int, system: str | None = None) -> list[dict]:
    """One user turn: the audios (numbered by the template) then the prompt."""
    content = [{"type": "audio", "audio_url": f"audio{i + 1}"} for i in range(n_audio)] + [{"type": "text",
                                                                                           "text": prompt}]
    out = [{"role": "system", "content": system}] if system else []
    return out + [{"role": "user", "content": content}]


def prompt_text(processor, prompt: str, n_audio: int, system: str | None = None) -> str:
    return processor.apply_chat_template(messages(prompt, n_audio, system), add_generation_prompt=True,
                                         tokenize=False)


def window_seconds(processor) -> float:
    fe = processor.feature_extractor
    return fe.n_samples / fe.sampling_rate


def fit_window(wave: np.ndarray, processor, max_seconds: float | None, name: str) -> np.ndarray:
    """Crop audio longer than the encoder's window (30 s for Whisper features) with a warning naming it."""
    limit = min(max_seconds or 1e9, window_seconds(processor))
    n = int(limit * processor.feature_extractor.sampling_rate)
    if len(wave) > n:
        log.warning("%s: %.1f s of audio cropped to %.1f s (the encoder's window)",
                    name, len(wave) / processor.feature_extractor.sampling_rate, limit)
        wave = wave[:n]
    return wave


def audio_token_counts(feature_attention_mask: torch.Tensor) -> torch.Tensor:
    """Tokens each audio becomes: Whisper's conv stride 2, then Qwen2-Audio's pooling by 2."""
    frames = feature_attention_mask.sum(-1)
    return ((frames - 1) // 2 + 1 - 2) // 2 + 1


def check_audio_tokens(input_ids: torch.Tensor, feature_attention_mask: torch.Tensor, audios_per_row: list[int],
                       audio_token_id: int, ids: Sequence[str]) -> None:
    """Every row's ``<|AUDIO|>`` count must equal the tokens its audios' features give; name the record if not."""
    counts = audio_token_counts(feature_attention_mask).tolist()
    k = 0
    for row, n in enumerate(audios_per_row):
        want, have = sum(counts[k : k + n]), int((input_ids[row] == audio_token_id).sum())
        k += n
        if want != have:
            raise ValueError(f"record {ids[row]}: {have} audio tokens in the text but its {n} audio(s) make {want}; "
                             "a prompt must not contain <|AUDIO|> itself")


def special_strings(tok) -> list[str]:
    """The texts the tokenizer turns into special tokens when it parses a string (``<|im_end|>``, ``<|AUDIO|>`` ...)."""
    return sorted({t.content for t in tok.added_tokens_decoder.values()} | set(tok.all_special_tokens), key=len,
                  reverse=True)


def refuse_special_text(tok, rows: list[dict], system: str | None) -> None:
    """Prompts go through the chat template, where special-token strings are parsed: a prompt or system prompt
    holding one (``<|im_end|>`` would end the user turn, ``<|AUDIO|>`` add an audio slot) is refused, naming the
    record. Answers need no check: they are encoded as plain text (``split_special_tokens``)."""
    specials = special_strings(tok)
    for r in rows:
        for field, text in (("prompt", r["prompt"]), ("system prompt", system or "")):
            hit = next((s for s in specials if s in text), None)
            if hit:
                raise ValueError(f"record {r['id']}: its {field} holds the special-token text {hit!r}, which the chat "
                                 f"template would turn into a real token; remove it from the {field}")


def _process(processor, texts: list[str], audio: list[np.ndarray], ids: list[str], **kw):
    """The processor's expansion of ``<|AUDIO|>``, with the records named when it refuses them."""
    try:
        return processor(text=texts, audio=audio, sampling_rate=processor.feature_extractor.sampling_rate,
                         return_tensors="pt", **kw)
    except ValueError as e:
        raise ValueError(f"record(s) {', '.join(ids)}: {e}") from e


def encode_batch(processor, rows: list[dict], waves: list[list[np.ndarray]], max_answer_tokens: int | None = None,
                 system: str | None = None, train: bool = True) -> dict:
    """Examples (``id``, ``prompt``, ``target`` when training) and their audios -> model keyword arguments.

    Training: right-padded ``input_ids = prompt + answer + <|im_end|>`` with ``labels`` on the answer part only.
    Generation (``train=False``): left-padded prompts, ready for ``generate``."""
    tok = processor.tokenizer
    refuse_special_text(tok, rows, system)
    texts = [prompt_text(processor, r["prompt"], len(w), system) for r, w in zip(rows, waves)]
    flat = [a for w in waves for a in w]
    if not train:
        tok.padding_side = "left"
        enc = _process(processor, texts, flat, [r["id"] for r in rows], padding=True)
        check_audio_tokens(enc["input_ids"], enc["feature_attention_mask"], [len(w) for w in waves],
                           processor.audio_token_id, [r["id"] for r in rows])
        return dict(enc)
    seqs, labels, feats, masks = [], [], [], []
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for r, text, w in zip(rows, texts, waves):
        enc = _process(processor, [text], w, [r["id"]])
        check_audio_tokens(enc["input_ids"], enc["feature_attention_mask"], [len(w)], processor.audio_token_id,
                           [r["id"]])
        # The answer is user data: plain text, so a literal "<|im_end|>" in it is spelled out, not an end of turn.
        answer = tok(r["target"], add_special_tokens=False, split_special_tokens=True)["input_ids"] + [end]
        if max_answer_tokens and len(answer) > max_answer_tokens:
            answer = answer[:max_answer_tokens]  # cut, so no <|im_end|>: the answer did not end there
        prompt_ids = enc["input_ids"][0].tolist()
        seqs.append(prompt_ids + answer)
        labels.append([IGNORE] * len(prompt_ids) + answer)
        feats.append(enc["input_features"])
        masks.append(enc["feature_attention_mask"])
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    label_t = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, labels)):
        input_ids[i, : len(s)] = torch.tensor(s)
        label_t[i, : len(lab)] = torch.tensor(lab)
        attention[i, : len(s)] = 1
    feature_mask = torch.cat(masks)
    # The whole sequence (prompt + answer) must hold exactly the audio tokens its features give; the forward pass
    # would otherwise fail with a mismatch naming no record.
    check_audio_tokens(input_ids, feature_mask, [len(w) for w in waves], processor.audio_token_id,
                       [r["id"] for r in rows])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": label_t,
            "input_features": torch.cat(feats), "feature_attention_mask": feature_mask}


@torch.no_grad()
def generate_texts(model, processor, rows: list[dict], waves: list[list[np.ndarray]], system: str | None = None,
                   **generate_kwargs) -> list[str]:
    """Answers to each row's ``prompt`` about its audios, batched (left padding, KV cache)."""
    enc = encode_batch(processor, rows, waves, system=system, train=False)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA layers sit inside it
    device = next(base.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    tok = processor.tokenizer
    out = base.generate(**enc, pad_token_id=tok.pad_token_id, **generate_kwargs)
    return [t.strip() for t in tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]


# ----------------------------------------------------------------------------------------------------- tiny model
def make_tiny(folder: str | os.PathLike, texts: Sequence[str], cfg) -> Path:
    """A random Qwen2-Audio of ``TinyQwenConfig`` sizes with a BPE tokenizer trained on ``texts`` and Qwen's special
    tokens, Whisper features (128 mels, a ``window_seconds`` window): saved like the hub model, so it loads through ``load_base``."""
    from transformers import (Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor,
                              Qwen2TokenizerFast, WhisperFeatureExtractor)

    from audiopair.models.tokenizer import train_bpe

    bpe = train_bpe(list(texts) + ["system user assistant You are a helpful assistant. Audio 1: Audio 2:"],
                    cfg.vocab_size, SPECIAL_TOKENS)
    tok = Qwen2TokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                             unk_token=None, bos_token=None)
    features = WhisperFeatureExtractor(feature_size=128, chunk_length=cfg.window_seconds)
    processor = Qwen2AudioProcessor(feature_extractor=features, tokenizer=tok)
    config = Qwen2AudioConfig(
        audio_config={"d_model": cfg.audio_dim, "encoder_layers": cfg.audio_layers,
                      "encoder_attention_heads": cfg.audio_heads, "encoder_ffn_dim": 2 * cfg.audio_dim,
                      "num_mel_bins": 128,
                      "max_source_positions": features.nb_max_frames // 2},  # 2 frames per encoder position
        text_config={"model_type": "qwen2", "vocab_size": len(tok), "hidden_size": cfg.hidden,
                     "intermediate_size": 2 * cfg.hidden, "num_hidden_layers": cfg.layers,
                     "num_attention_heads": cfg.heads, "num_key_value_heads": cfg.kv_heads,
                     "max_position_embeddings": 4096, "tie_word_embeddings": False},
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"), tie_word_embeddings=False,
    )
    from audiopair.runtime import MODEL_BUILDING

    torch.manual_seed(cfg.seed)
    with MODEL_BUILDING:
        model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    model.generation_config.pad_token_id = tok.pad_token_id
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    model.save_pretrained(str(tmp), safe_serialization=True)
    processor.save_pretrained(str(tmp))
    tmp.replace(folder)  # all or nothing: a half-written base is never mistaken for a model
    return folder
