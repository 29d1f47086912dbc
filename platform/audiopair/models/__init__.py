"""Models: the HTSAT encoder, ADIFF, tokenizers, parameter summaries.

Names are imported lazily, so ``import audiopair.models.tokenizer`` (or a data worker that only needs the encoder)
does not pay for everything else.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AudioEncoder": "encoder", "EncoderOutput": "encoder", "clap_audio_config": "encoder",
    "AdiffModel": "adiff", "AdiffOutput": "adiff", "build_model": "adiff", "set_stage": "adiff",
    "save_checkpoint": "adiff", "load_checkpoint": "adiff",
    "load_tokenizer": "tokenizer", "train_tokenizer": "tokenizer", "encode_prompts": "tokenizer",
    "encode_answers": "tokenizer",
    "summarize": "summary", "format_summary": "summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
