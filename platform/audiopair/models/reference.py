"""Import ADIFF's released checkpoints (soham97/ADIFF: ``adiff_base.pth``, ``adiff_base_wavcaps.ckpt``) into ordinary
audiopair model folders (``save_checkpoint``'s safetensors + ``adiff.json`` + tokenizer).

A released checkpoint is a plain state dict of the reference model (``ADiff`` in its ``model/adiff.py``), maybe with
every key prefixed ``module.``. Every key is mapped; one that has no place, or a module that gets no weights,
refuses the import by name:

    audio_encoder.base.htsat.*       -> encoder (``audiopair.models.htsat``: fused qkv split, token-semantic head);
                                        the STFT / mel weights are checked against audiopair's front end, not kept
    audio_encoder.projection.*       -> audio_projection.*
    caption_decoder.audio_project1/2 -> audio_mapper1/2 ; text_project -> text_mapper ; cross_project -> cross_projection
    caption_decoder.gpt.*            -> lm.* (GPT-2's attn.bias / attn.masked_bias buffers of older transformers and
                                        the lm_head tied to wte are dropped)

Sizes come from the tensor shapes. What shapes cannot tell comes from a YAML in the reference's own ``base.yaml``
format (``read_reference_config``; its defaults are the released ones) or is what the reference code hard-codes:
8 mapper heads, a 4-head cross-projection, the 14 kHz mel ceiling. GPT-2's head count comes from ``text_decoder``'s
``config.json`` (a local folder) or, for the hub names, GPT-2's published sizes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import yaml

from audiopair.config import AdiffModelConfig, EncoderConfig, FeatureConfig
from audiopair.models.htsat import CheckpointError, read_state, sizes, split_htsat, to_clap

# the released config/base.yaml (the values a checkpoint was trained with unless a YAML says otherwise)
RELEASED = {
    "data": {"sampling_rate": 32000, "segment_seconds": 10, "ip_text_len": 40},
    "model": {"encoder": {"window_size": 1024, "hop_size": 320, "mel_bins": 64, "fmin": 50, "fmax": 8000,
                          "d_proj": 1024},
              "decoder": {"text_decoder": "gpt2", "prefix_length": 40, "prefix_length_clip": 40, "num_layers": 8,
                          "normalize_prefix": True}},
}
# what the reference code builds regardless of its config (model/config.py of HTSAT; decoder.py)
F_MAX_IN_FORCE = 14000
MAPPER_HEADS, CROSS_HEADS = 8, 4
GPT2_HEADS = {"gpt2": 12, "gpt2-medium": 16, "gpt2-large": 20, "gpt2-xl": 25}
PREFIXES = {"audio_encoder.projection.": "audio_projection.", "caption_decoder.audio_project1.": "audio_mapper1.",
            "caption_decoder.audio_project2.": "audio_mapper2.", "caption_decoder.text_project.": "text_mapper.",
            "caption_decoder.cross_project.": "cross_projection.", "caption_decoder.gpt.": "lm."}
OLD_GPT2_BUFFERS = re.compile(r"lm\.transformer\.h\.\d+\.attn\.(bias|masked_bias)")


def read_reference_config(path: str | Path | None = None) -> dict:
    """The reference settings: the released ``base.yaml`` values, overridden by ``path`` (same format) if given.
    A relative local ``text_decoder`` resolves against the YAML's folder."""
    cfg = json.loads(json.dumps(RELEASED))
    if path is not None:
        path = Path(path)
        try:
            given = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise CheckpointError(f"{path}: not a readable reference config ({e})") from None
        for section in ("data",):
            cfg[section].update(given.get(section) or {})
        for part in ("encoder", "decoder"):
            cfg["model"][part].update((given.get("model") or {}).get(part) or {})
        dec = cfg["model"]["decoder"]
        if dec["text_decoder"].startswith(".") or (path.parent / dec["text_decoder"]).is_dir():
            dec["text_decoder"] = str((path.parent / dec["text_decoder"]).resolve())
    return cfg


def front_end_of_reference(ref: dict) -> dict:
    """The log-mel settings the reference model hears (``audiopair.data.features.front_end`` form)."""
    enc = ref["model"]["encoder"]
    features = FeatureConfig(n_mels=enc["mel_bins"], n_fft=enc["window_size"], hop_length=enc["hop_size"],
                             f_min=enc["fmin"], f_max=F_MAX_IN_FORCE, mel_scale="slaney", mel_norm="slaney")
    from audiopair.data.features import front_end

    return front_end(features, ref["data"]["sampling_rate"])


def gpt2_config(text_decoder: str, state: dict[str, torch.Tensor], layers: int) -> dict:
    """GPT-2's config: ``text_decoder``'s ``config.json`` when it is a folder (checked against the shapes), else the
    shapes plus the published head count of the named hub model."""
    from transformers import GPT2Config

    wte, wpe = state["lm.transformer.wte.weight"], state["lm.transformer.wpe.weight"]
    shapes = {"vocab_size": wte.shape[0], "n_embd": wte.shape[1], "n_positions": wpe.shape[0], "n_layer": layers}
    folder = Path(text_decoder)
    if (folder / "config.json").is_file():
        cfg = GPT2Config.from_pretrained(str(folder))
        wrong = {k: (getattr(cfg, k), v) for k, v in shapes.items() if getattr(cfg, k) != v}
        if wrong:
            raise CheckpointError(f"{folder / 'config.json'} does not match the checkpoint's GPT-2: "
                                  + ", ".join(f"{k} {a} vs {b} in the checkpoint" for k, (a, b) in wrong.items()))
        return cfg.to_dict()
    name = text_decoder.rsplit("/", 1)[-1]
    if name not in GPT2_HEADS:
        raise CheckpointError(f"text_decoder {text_decoder!r}: not a folder with config.json nor one of "
                              f"{', '.join(GPT2_HEADS)}; point it at the GPT-2 folder the checkpoint was trained on")
    return GPT2Config(n_head=GPT2_HEADS[name], **shapes).to_dict()


def plan_import(state: dict[str, torch.Tensor], ref: dict) -> tuple[AdiffModelConfig, dict, dict]:
    """``(config, lm_config, tensors)``: the audiopair config and GPT-2 config that rebuild the checkpoint's
    network, and its tensors under audiopair's names (``encoder.*`` included). Raises ``CheckpointError`` naming
    unmapped keys."""
    htsat, rest = split_htsat(state)
    backbone, head, front = to_clap(htsat)
    check_stored_front_end(front, ref)
    tensors = {f"encoder.backbone.{k}": v for k, v in backbone.items()}
    tensors.update({f"encoder.event_head.{k}": v for k, v in head.items()})
    unmapped = []
    for key, t in rest.items():
        new = next((to + key[len(fr):] for fr, to in PREFIXES.items() if key.startswith(fr)), None)
        if new is None:
            unmapped.append(key)
        elif not OLD_GPT2_BUFFERS.fullmatch(new) and new != "lm.lm_head.weight":  # lm_head is tied to wte
            tensors[new] = t
    if unmapped:
        raise CheckpointError(f"{len(unmapped)} keys have no place in audiopair's ADIFF: {', '.join(unmapped[:20])}")
    need = ("audio_projection.linear1.weight", "audio_mapper1.prefix_const", "text_mapper.prefix_const",
            "lm.transformer.wte.weight", "lm.transformer.wpe.weight")
    missing = [k for k in need if k not in tensors]
    if missing:
        raise CheckpointError(f"not an ADIFF checkpoint: no weights for {', '.join(missing)}")

    def count(prefix: str) -> int:
        return len({m.group(1) for k in tensors if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})

    dec, enc = ref["model"]["decoder"], ref["model"]["encoder"]
    d_lm = tensors["lm.transformer.wte.weight"].shape[1]
    cross = count("cross_projection.layers.")
    cfg = AdiffModelConfig(
        variant="adiff" if cross else "baseline",
        prefix_len=tensors["audio_mapper1.prefix_const"].shape[0],
        prompt_len=tensors["text_mapper.prefix_const"].shape[0],
        mapper_layers=count("audio_mapper1.transformer.layers."), mapper_heads=MAPPER_HEADS,
        mapper_mlp_ratio=tensors["audio_mapper1.transformer.layers.0.mlp.fc1.weight"].shape[0] / d_lm,
        cross_layers=max(cross, 1), cross_heads=CROSS_HEADS,
        d_proj=tensors["audio_projection.linear1.weight"].shape[0], normalize_prefix=dec["normalize_prefix"],
        lm_pretrained=None,
        encoder=EncoderConfig(pretrained=None, frames=1 + ref["data"]["segment_seconds"] * ref["data"]["sampling_rate"]
                              // enc["hop_size"], event_head="token_semantic" if head else "linear", **sizes(htsat)),
    )
    return cfg, gpt2_config(dec["text_decoder"], tensors, count("lm.transformer.h.")), tensors


def check_stored_front_end(front: dict[str, torch.Tensor], ref: dict) -> None:
    """The checkpoint's own STFT and mel weights must be what audiopair's front end computes for ``ref``'s settings
    (else the model was trained on other log-mels than an import would feed it); CheckpointError otherwise."""
    from audiopair.data.features import dft_basis, mel_filters

    fe = front_end_of_reference(ref)
    expected = {"spectrogram_extractor.stft.conv_real.weight": dft_basis(fe["n_fft"])[0],
                "spectrogram_extractor.stft.conv_imag.weight": dft_basis(fe["n_fft"])[1],
                "logmel_extractor.melW": torch.from_numpy(mel_filters(fe["sample_rate"], fe["n_fft"], fe["n_mels"],
                                                                      fe["f_min"], fe["f_max"], "slaney", "slaney"))}
    for key, want in expected.items():
        got = front.get(key)
        if got is not None and (got.shape != want.shape or (got.device.type != "meta"
                                                             and not torch.allclose(got, want, atol=1e-6))):
            raise CheckpointError(f"the checkpoint's front end ({key}) differs from the one its settings give "
                                  f"({fe}); pass the reference config it was trained with (--reference-config)")


def build(cfg: AdiffModelConfig, lm_config: dict, tensors: dict[str, torch.Tensor], separator_id: int, pad_id: int,
          device: str | torch.device = "cpu"):
    """The ``AdiffModel`` holding ``tensors`` (strict: every parameter filled, nothing left over). ``device="meta"``
    builds without allocating (for checking a layout); the LM head is re-tied to the token embedding."""
    from audiopair.models.adiff import AdiffModel, set_stage

    backbone = {"backbone": _clap_config(cfg.encoder), "frames": cfg.encoder.frames,
                "event_head": {"kind": cfg.encoder.event_head, "num_classes": cfg.encoder.num_classes,
                               "clip_pool": cfg.encoder.clip_pool}}
    with torch.device(device):
        model = AdiffModel(cfg, lm_config["vocab_size"], separator_id, lm_config["eos_token_id"], lm_config=lm_config,
                           encoder_config=backbone, pad_id=pad_id)
    shapes = {k: t.shape for k, t in model.state_dict().items() if k != "lm.lm_head.weight"}
    expected = set(shapes)
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        raise CheckpointError("the checkpoint does not fill audiopair's ADIFF exactly: "
                              + (f"missing {', '.join(missing[:20])}" if missing else "")
                              + ("; " if missing and extra else "") + (f"unexpected {', '.join(extra[:20])}" if extra else ""))
    for key, t in tensors.items():
        if shapes[key] != t.shape:
            raise CheckpointError(f"{key}: shape {tuple(t.shape)} in the checkpoint, {tuple(shapes[key])}"
                                  " in the model built from its sizes")
    model.load_state_dict(tensors, strict=False, assign=True)
    model.lm.tie_weights()
    set_stage(model, 3)
    return model


def _clap_config(enc: EncoderConfig) -> dict:
    from audiopair.models.encoder import clap_audio_config

    return clap_audio_config(enc).to_dict()


def import_adiff(checkpoint: str | Path, out_dir: str | Path, reference_config: str | Path | None = None,
                 class_labels: str | Path | None = None, say=print) -> Path:
    """Convert a released ADIFF checkpoint into an audiopair model folder at ``out_dir``; returns the folder.

    Loads with ``torch.load(weights_only=True)`` (``read_state``), maps every key (``plan_import``), rebuilds the
    network strictly (``build``), records the reference front end, and saves with GPT-2's tokenizer from
    ``text_decoder``; ``class_labels`` (AudioSet's ``class_labels_indices.csv``) names the event head's classes.
    Raises ``CheckpointError`` naming what does not fit."""
    from audiopair.models.htsat import read_class_labels
    from audiopair.models.adiff import save_checkpoint, single_token
    from audiopair.models.tokenizer import load_tokenizer

    ref = read_reference_config(reference_config)
    state = read_state(checkpoint)
    cfg, lm_config, tensors = plan_import(state, ref)
    try:
        tok = load_tokenizer(ref["model"]["decoder"]["text_decoder"])
    except OSError as e:
        raise CheckpointError(f"text_decoder {ref['model']['decoder']['text_decoder']!r}: no GPT-2 tokenizer there "
                              f"({e}); point it at a folder with vocab.json and merges.txt") from None
    model = build(cfg, lm_config, tensors, single_token(tok, cfg.separator_token, "model.separator_token"),
                  single_token(tok, cfg.prompt_pad, "model.prompt_pad"))
    model.front_end = front_end_of_reference(ref)
    if class_labels:
        labels = read_class_labels(class_labels)
        if len(labels) != model.encoder.event_head.num_classes:
            raise CheckpointError(f"{class_labels}: {len(labels)} classes, the event head has "
                                  f"{model.encoder.event_head.num_classes}")
        model.event_labels = labels
    folder = save_checkpoint(model, out_dir, tokenizer=tok)
    say(f"imported {checkpoint}: {sum(p.numel() for p in model.parameters()):,} parameters -> {folder}")
    return folder
