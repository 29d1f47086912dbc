"""Tokenizers: load the LM's own (hub id or folder, any ``AutoTokenizer``), or train a small byte-level BPE in
GPT-2's form on the demo's own texts.

The demo trains its tokenizer on its captions and targets so a tiny GPT-2 gets a small vocabulary (and a small
embedding table) while staying byte-level: any text still encodes. ``<|endoftext|>`` is the only special token and
serves as bos / eos / unk / pad, exactly as in GPT-2's own tokenizer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerBase

EOS = "<|endoftext|>"


def load_tokenizer(path_or_id: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a folder or on the hub (GPT-2's, a Llama's, ...), with eos as pad when it has none."""
    tok = AutoTokenizer.from_pretrained(str(path_or_id))
    if tok.pad_token is None:  # GPT-2 ships without one; padding is masked out anyway
        tok.pad_token = tok.eos_token
    return tok


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str], min_frequency: int = 2):
    """A byte-level BPE (GPT-2's and Qwen2's scheme) trained on ``texts``; ``special_tokens`` get the first ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever unknown
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int, folder: str | os.PathLike,
                    min_frequency: int = 2) -> GPT2TokenizerFast:
    """A GPT-2 tokenizer trained on ``texts`` (see ``train_bpe``), saved as a GPT2TokenizerFast folder and returned."""
    tok = train_bpe(texts, vocab_size, [EOS], min_frequency)
    fast = GPT2TokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return fast


def plain_ids(tokenizer, text: str) -> list[int]:
    """Token ids of data text (a prompt, caption or answer) as PLAIN text: a literal ``<|endoftext|>`` (or any
    other special-token string) in user data is spelled out in ordinary tokens, never parsed into the special
    token. Otherwise an answer holding it would teach the model to stop in mid-answer. No bos / eos is added."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def encode_prompts(tokenizer, prompts: list[str], prompt_len: int, suffix: str = "",
                   pad_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of shape ``(B, prompt_len)``: each prompt (``plain_ids``) followed by ``suffix`` (its special
    tokens parsed), truncated, right-padded with ``pad_id`` (default eos), mask 0 on padding.

    ADIFF's reference (wrapper.py ``preprocess_text``) uses suffix " <|endoftext|>" (ids 220, 50256 in GPT-2) and
    pads with "!" (id 0) to 40 tokens; ``AdiffModel`` takes both from its config (``model_prompts``)."""
    pad = tokenizer.eos_token_id if pad_id is None else pad_id
    tail = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    ids = torch.full((len(prompts), prompt_len), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), prompt_len), dtype=torch.long)
    for i, text in enumerate(prompts):
        t = (plain_ids(tokenizer, text) + tail)[:prompt_len]  # the text is data; the suffix is the model's
        ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        mask[i, : len(t)] = 1
    return ids, mask


def encode_answers(tokenizer, answers: list[str], max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of the targets with eos appended (the model learns to stop), right-padded with eos (mask 0).

    An answer longer than ``max_len`` is cut and gets no eos: it did not end there, so the model should not learn to
    stop there."""
    rows = []
    for text in answers:
        t = plain_ids(tokenizer, text) + [tokenizer.eos_token_id]
        rows.append(t[:max_len] if max_len else t)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.eos_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, t in enumerate(rows):
        ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        mask[i, : len(t)] = 1
    return ids, mask


def model_prompts(tokenizer, model, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``encode_prompts`` with ``model``'s (an ``AdiffModel``) prompt length, suffix and pad token."""
    return encode_prompts(tokenizer, prompts, model.cfg.prompt_len, model.cfg.prompt_suffix, model.pad_id)
