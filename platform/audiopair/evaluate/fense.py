"""FENSE's files (Zhou et al. 2022; aac-metrics' ``fense``): whether its hub models are on this machine, checked on
disk only, and loading them strictly offline. Neither model is on PyPI: ``metrics.fetch_command("fense")`` gives
the download, and a machine without them reports FENSE unavailable, never 0."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

DEFAULT_SBERT_MODEL = "paraphrase-TinyBERT-L6-v2"  # aac-metrics' FENSE defaults
DEFAULT_ECHECKER = "echecker_clotho_audiocaps_base"
ECHECKERS = ("echecker_clotho_audiocaps_base", "echecker_clotho_audiocaps_tiny")


def fense_missing(sbert_model: str = DEFAULT_SBERT_MODEL, echecker: str = DEFAULT_ECHECKER) -> list[str]:
    """What FENSE still lacks on this machine, checked on disk only (empty list: its files are present).

    The echecker checkpoint lives in $FENSE_DATA or <torch hub dir>/fense_data; the sentence-BERT model in the
    Hugging Face cache ($SENTENCE_TRANSFORMERS_HOME if set) or at a local folder path. The echecker's BERT backbone
    (bert-base-uncased for the base echecker) is found by transformers at load time, still offline."""
    import torch

    missing = []
    data_home = os.path.expanduser(os.getenv("FENSE_DATA", os.path.join(torch.hub.get_dir(), "fense_data")))
    ckpt = Path(data_home) / f"{echecker}.ckpt"
    if not ckpt.is_file():
        missing.append(f"echecker checkpoint {ckpt}")
    if not _sbert_present(sbert_model):
        missing.append(f"sentence-transformers model {_sbert_repo(sbert_model)} (Hugging Face cache)")
    return missing


def _sbert_repo(name: str) -> str:
    return name if "/" in name else f"sentence-transformers/{name}"


def _sbert_present(name: str) -> bool:
    if os.path.isdir(os.path.expanduser(name)):
        return True
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for cache_dir in (os.getenv("SENTENCE_TRANSFORMERS_HOME"), None):
        try:
            hit = try_to_load_from_cache(_sbert_repo(name), "modules.json", cache_dir=cache_dir)
        except Exception:  # malformed repo id etc.
            hit = None
        if isinstance(hit, str):
            return True
    return False


@contextlib.contextmanager
def _hf_offline():
    """Hugging Face libraries may read local files only inside this block (HF_HUB_OFFLINE=1 semantics, applied
    to already-imported huggingface_hub / transformers too). Not thread-safe: it patches process globals."""
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    patched: list[tuple[Any, str, Any]] = []
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hfc

        patched.append((hfc, "HF_HUB_OFFLINE", hfc.HF_HUB_OFFLINE))
        hfc.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    try:
        import transformers.utils.hub as tfh

        if hasattr(tfh, "_is_offline_mode"):
            patched.append((tfh, "_is_offline_mode", tfh._is_offline_mode))
            tfh._is_offline_mode = True
    except ImportError:
        pass
    try:
        yield
    finally:
        for mod, attr, old in patched:
            setattr(mod, attr, old)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
