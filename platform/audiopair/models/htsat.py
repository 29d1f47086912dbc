"""HTSAT checkpoints in the reference layout <-> audiopair's encoder (transformers' ``ClapAudioModel`` + event head).

The reference layout is HTS-AT's own (github.com/RetroCirce/HTS-Audio-Transformer ``htsat.py``), which ADIFF
(``audio_encoder.base.htsat.*``), msclap's CLAP (``audio_encoder.base.htsat.*`` under ``model``) and HTS-AT's
AudioSet Lightning checkpoints (``sed_model.*`` under ``state_dict``) all carry. Its Swin blocks fuse the query, key
and value projections into one ``qkv`` linear (rows: queries, keys, values); ``ClapAudioModel`` keeps three. The rest
is renaming. The token-semantic head (``tscam_conv``) and the unused ``head`` linear go to ``TokenSemanticHead``; the
STFT / mel weights of the front end are returned apart (audiopair computes log-mels in the data pipeline, see
``audiopair.data.features``), as are the buffers HTSAT derives from its sizes (``attn_mask``).
"""

from __future__ import annotations

import csv
import math
import os
import pickle
import re
from pathlib import Path

import torch

HTSAT_PREFIXES = ("audio_encoder.base.htsat.", "sed_model.", "htsat.")
FRONT_END = ("spectrogram_extractor.", "logmel_extractor.")

# name fragments, reference -> ClapAudioModel: inside a Swin block ("layers.i.blocks.j." + ...), at the top level, and
# in the event head. The fused "attn.qkv" is split apart (rows: queries, keys, values).
_BLOCK = {"norm1.": "layernorm_before.", "norm2.": "layernorm_after.",
          "attn.relative_position_bias_table": "attention.self.relative_position_bias_table",
          "attn.relative_position_index": "attention.self.relative_position_index",
          "attn.proj.": "attention.output.dense.", "mlp.fc1.": "intermediate.dense.", "mlp.fc2.": "output.dense."}
_TOP = {"bn0.": "batch_norm.", "patch_embed.": "patch_embed.", "norm.": "norm."}
_HEAD = {"tscam_conv.": "conv.", "head.": "head."}
_IN_BLOCK = re.compile(r"(layers\.\d+\.blocks\.\d+\.)(.+)")
_DOWNSAMPLE = re.compile(r"layers\.\d+\.downsample\..+")


def _rename(key: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old):]
    return None


def _invert(table: dict[str, str]) -> dict[str, str]:
    return {new: old for old, new in table.items()}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or mapped; the message names the file and the keys at fault."""


def read_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, loaded with ``torch.load(weights_only=True)`` (never unpickling code).

    Accepts a raw state dict, a Lightning checkpoint (``state_dict``) or a ``{"model": ...}`` wrapper; strips a
    DataParallel ``module.`` prefix. Raises ``CheckpointError`` for a file that needs arbitrary unpickling or holds
    no tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused: the file is not a plain tensor checkpoint and loading it would run "
                              f"pickled code (torch.load weights_only=True: {str(e).splitlines()[0]})") from None
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def split_htsat(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(htsat, rest)``: the HTSAT tensors with their prefix removed (see ``HTSAT_PREFIXES``) and everything else."""
    for prefix in HTSAT_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            htsat = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            return htsat, {k: v for k, v in state.items() if not k.startswith(prefix)}
    if "patch_embed.proj.weight" in state:  # already bare
        return dict(state), {}
    raise CheckpointError(f"no HTSAT weights found (looked for keys starting with {', '.join(HTSAT_PREFIXES)})")


def to_clap(htsat: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """Reference-layout HTSAT tensors -> ``(backbone, head, front_end)`` state dicts: ``backbone`` loads into
    ``ClapAudioModel``, ``head`` into ``TokenSemanticHead`` (empty if the checkpoint has no ``tscam_conv``),
    ``front_end`` keeps the STFT / mel weights. Derived ``attn_mask`` buffers are dropped. Raises ``CheckpointError``
    naming every key it cannot place."""
    backbone, head, front, unmapped = {}, {}, {}, []
    for key, t in htsat.items():
        block = _IN_BLOCK.fullmatch(key)
        if key.startswith(FRONT_END):
            front[key] = t
        elif block and block.group(2) == "attn_mask":
            continue
        elif block and block.group(2).startswith("attn.qkv."):
            kind = block.group(2).rsplit(".", 1)[1]
            for part, chunk in zip(("query", "key", "value"), t.chunk(3, dim=0)):
                backbone[f"audio_encoder.{block.group(1)}attention.self.{part}.{kind}"] = chunk.clone()
        elif block and _rename(block.group(2), _BLOCK):
            backbone[f"audio_encoder.{block.group(1)}{_rename(block.group(2), _BLOCK)}"] = t
        elif _DOWNSAMPLE.fullmatch(key):
            backbone[f"audio_encoder.{key}"] = t
        elif not block and _rename(key, _TOP):
            backbone[f"audio_encoder.{_rename(key, _TOP)}"] = t
        elif _rename(key, _HEAD):
            head[_rename(key, _HEAD)] = t
        else:
            unmapped.append(key)
    if unmapped:
        raise CheckpointError(f"{len(unmapped)} HTSAT keys have no place in the encoder: {', '.join(unmapped)}")
    return backbone, head, front


def from_clap(backbone: dict[str, torch.Tensor], head: dict[str, torch.Tensor] | None = None) -> dict:
    """The inverse of ``to_clap`` (without the front end and the derived masks): audiopair's encoder tensors in the
    reference layout, e.g. to hand an encoder trained here to code written for HTS-AT."""
    out, qkv = {}, {}
    for key, t in backbone.items():
        key = key.removeprefix("audio_encoder.")
        block = _IN_BLOCK.fullmatch(key)
        split = block and re.fullmatch(r"attention\.self\.(query|key|value)\.(weight|bias)", block.group(2))
        if split:
            qkv.setdefault((block.group(1), split.group(2)), {})[split.group(1)] = t
        elif block and _rename(block.group(2), _invert(_BLOCK)):
            out[block.group(1) + _rename(block.group(2), _invert(_BLOCK))] = t
        elif _DOWNSAMPLE.fullmatch(key):
            out[key] = t
        else:
            out[_rename(key, _invert(_TOP)) or key] = t
    for (where, kind), parts in qkv.items():
        out[f"{where}attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    out.update({_rename(k, _invert(_HEAD)) or k: t for k, t in (head or {}).items()})
    return out


def sizes(htsat: dict[str, torch.Tensor]) -> dict:
    """``EncoderConfig`` fields read off reference-layout tensor shapes: embed_dim, depths, heads, patch size and
    stride, window size, n_mels, num_classes, spec_size (from a shifted block's attention mask; 256 when none)."""
    depths: dict[int, int] = {}
    heads: dict[int, int] = {}
    for key, t in htsat.items():
        m = re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table", key)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            depths[i] = max(depths.get(i, 0), j + 1)
            heads[i] = t.shape[1]
            window = (math.isqrt(t.shape[0]) + 1) // 2
    proj = htsat["patch_embed.proj.weight"]
    out = {"embed_dim": proj.shape[0], "patch_size": proj.shape[-1], "patch_stride": proj.shape[-1],
           "depths": [depths[i] for i in sorted(depths)], "heads": [heads[i] for i in sorted(heads)],
           "window_size": window, "n_mels": htsat["bn0.weight"].shape[0], "spec_size": 256}
    if "tscam_conv.weight" in htsat:
        out["num_classes"] = htsat["tscam_conv.weight"].shape[0]
    for key, t in htsat.items():
        m = re.fullmatch(r"layers\.(\d+)\.blocks\.\d+\.attn_mask", key)
        if m:  # (windows, w*w, w*w) at stage i: the stage's grid side is w * sqrt(windows)
            side = window * math.isqrt(t.shape[0]) * 2 ** int(m.group(1))
            out["spec_size"] = side * out["patch_stride"]
            break
    return out


def read_class_labels(path: str | os.PathLike) -> list[str]:
    """Class names in index order from AudioSet's ``class_labels_indices.csv`` (``index,mid,display_name``)."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"index", "display_name"} <= set(rows[0]):
        raise ValueError(f"{path}: expected the columns index,mid,display_name (AudioSet's class_labels_indices.csv)")
    names: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        try:
            names[int(row["index"])] = row["display_name"]
        except (TypeError, ValueError):
            raise ValueError(f"{path} line {line}: index {row['index']!r} is not an integer") from None
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path}: indices must run 0..{len(names) - 1} without gaps")
    return [names[i] for i in range(len(names))]
