"""ADIFF (paper section 3, App. G and J): explain the difference between two audios with a prefix-prompted LM.

    audio1, audio2 --HTSAT--> e1, e2 (d_audio)                  (or embeddings cached by the dataset builder)
    e_i --audio projection--> --L2 normalise--> (d_proj)         one projection shared by both audios
    e_i --audio mapper--> (prefix_len, d_lm)                     ClipCap TransformerMapper, one per audio
    prompt + suffix, padded --wte--> --text mapper--> (prompt_len, d_lm)
    [p1, sep, p2, text] --cross-projection--> (121, d_lm)        a transformer over the whole prefix (App. J)
    LM(inputs_embeds=[prefix, answer]) -> next-token loss on the answer only     GPT-2 in the paper; any causal LM

The defaults build the released network module by module (soham97/ADIFF ``model/adiff.py``, ``model/decoder.py``;
``audiopair.models.reference`` imports its checkpoints): 4 layers per mapper with 8 heads, a 4-layer, 4-head
cross-projection, bias-free query/key/value projections, ReLU MLPs of ratio 2, no dropout, a text mapper that reads
the padded prompt with no mask and no position vector. audiopair's own options (``AdiffModelConfig``:
``attention_bias``, ``activation``, ``text_position``, ``prompt_mask``, ``cross_constant``, ``d_proj=None``) change
only what they name.

The blocks are in ``audiopair.models.mapper``, the LM seam in ``audiopair.models.lm``. Variants (``baseline``: no
separator and no cross-projection, 120 prefix tokens; ``language_only``: a random, frozen encoder) are the switches
of ``audiopair.variants``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import ClapAudioConfig, ClapAudioModel
from transformers.utils import ModelOutput

from audiopair.config import AdiffModelConfig, EncoderConfig
from audiopair.models import lm as causal_lm
from audiopair.models.encoder import AudioEncoder, head_config
from audiopair.models.mapper import AudioMapper, AudioProjection, CrossProjection, TextMapper
from audiopair.variants import variant

WEIGHTS = "model.safetensors"
META = "adiff.json"


@dataclass
class AdiffOutput(ModelOutput):
    loss: torch.Tensor | None = None  # mean cross-entropy over answer tokens (mask 1, eos included)
    logits: torch.Tensor | None = None  # (B, T, V): logits[:, t] predicts answer_ids[:, t]
    labels: torch.Tensor | None = None  # (B, P + T): the LM sequence's labels, -100 on the prefix and padding
    prefix: torch.Tensor | None = None  # (B, P, d_lm)


# ---------------------------------------------------------------------------------------------- the model
def encoder_config_of(cfg: AdiffModelConfig) -> EncoderConfig:
    """The encoder a variant is built with: a ``random_encoder`` variant (``language_only``, Exp. A) gets the same
    network, random and frozen."""
    if variant(cfg.variant).random_encoder:
        return cfg.encoder.model_copy(update={"pretrained": None, "freeze": True})
    return cfg.encoder


class AdiffModel(nn.Module):
    """Build with ``build_model(cfg, tokenizer)``; ``lm_config`` / ``encoder_config`` (dicts) make the architecture
    from a checkpoint's saved configs instead of loading pretrained weights (``load_checkpoint``)."""

    def __init__(self, cfg: AdiffModelConfig, vocab_size: int, separator_id: int, eos_id: int,
                 lm_config: dict | None = None, encoder_config: dict | None = None, pad_id: int | None = None):
        super().__init__()
        self.cfg, self.vocab_size, self.separator_id, self.eos_id = cfg, vocab_size, separator_id, eos_id
        self.pad_id = eos_id if pad_id is None else pad_id  # fills the prompt to prompt_len (model.prompt_pad)
        self.front_end: dict | None = None  # the log-mel settings the model was trained / imported with
        enc_cfg = encoder_config_of(cfg)
        self.encoder_trainable = not enc_cfg.freeze
        # Cached embeddings come from the pretrained encoder, so language_only refuses them unless the caller says
        # they were made by this model's own random encoder (the same for a given encoder.seed).
        self.accept_embeddings = not variant(cfg.variant).random_encoder
        # the event head's class names, when known (hallucination view); model.encoder.class_labels names a CSV
        self.event_labels: list[str] | None = None

        # --- encoder
        if encoder_config is not None:
            head = encoder_config.get("event_head", {})
            backbone = ClapAudioModel(ClapAudioConfig.from_dict(encoder_config["backbone"]))
            self.encoder = AudioEncoder(backbone, head.get("num_classes", enc_cfg.num_classes),
                                        head.get("clip_pool", enc_cfg.clip_pool), encoder_config.get("frames",
                                        enc_cfg.frames), head.get("kind", "linear"))
        else:
            self.encoder = AudioEncoder.from_config(enc_cfg)
            self.event_labels = self.encoder.class_labels

        # --- language model: any causal LM (audiopair.models.lm)
        lm = causal_lm.build_lm(cfg, vocab_size, eos_id, saved=lm_config)
        if lm.config.vocab_size < vocab_size:  # a tokenizer with added tokens
            lm.resize_token_embeddings(vocab_size)
        if not 0 <= separator_id < lm.config.vocab_size:
            raise ValueError(f"separator id {separator_id} is outside the LM vocabulary ({lm.config.vocab_size})")

        # --- projections (registered before the LM so modules list in data-flow order)
        d = causal_lm.width(lm)
        for key, heads in (("mapper_heads", cfg.mapper_heads), ("cross_heads", cfg.cross_heads)):
            if d % heads:
                raise ValueError(f"LM width {d} is not divisible by model.{key}={heads}")
        self.audio_projection = AudioProjection(self.encoder.dim, cfg.d_proj, cfg.projection_dropout) \
            if cfg.d_proj else None
        d_audio = cfg.d_proj or self.encoder.dim
        layer = dict(mlp_ratio=cfg.mapper_mlp_ratio, activation=cfg.activation, bias=cfg.attention_bias,
                     dropout=cfg.dropout)
        mapper = dict(layers=cfg.mapper_layers, heads=cfg.mapper_heads, **layer)
        self.audio_mapper1 = AudioMapper(d_audio, cfg.prefix_len, d, **mapper)
        self.audio_mapper2 = None if cfg.shared_mapper else AudioMapper(d_audio, cfg.prefix_len, d, **mapper)
        self.text_mapper = TextMapper(cfg.prompt_len, d, position=cfg.text_position, **mapper)
        self.cross_projection = None if not variant(cfg.variant).cross_projection else \
            CrossProjection(self.prefix_tokens, d, cfg.cross_heads, cfg.cross_layers, cfg.cross_constant, **layer)
        self.lm = lm
        set_stage(self, 2)  # a fresh model starts where training starts: grounding

    # ---- sizes
    @property
    def uses_separator(self) -> bool:
        return variant(self.cfg.variant).separator

    @property
    def prefix_tokens(self) -> int:
        """121 at paper sizes (40 + 1 + 40 + 40); 120 for the baseline."""
        return prefix_tokens(self.cfg)

    @property
    def separator(self) -> torch.Tensor:
        """The separator is a row of the LM's token embedding, looked up each forward (tied, never a stored copy): it
        trains exactly when the LM's embeddings train (stage 3), and follows them."""
        wte = self.lm.get_input_embeddings()
        # a lookup through the module (not .weight[i]) so DeepSpeed ZeRO-3 gathers the partitioned table first
        return wte(torch.tensor([self.separator_id], device=wte.weight.device))[0]

    # ---- modes
    def train(self, mode: bool = True) -> "AdiffModel":
        """Frozen parts stay in eval mode (as ClipCap keeps its frozen GPT-2): no dropout noise in a frozen LM, and
        the encoder's BatchNorm keeps its pretrained statistics."""
        super().train(mode)
        for part in (self.encoder.backbone, self.encoder.event_head, self.lm):
            if not any(p.requires_grad for p in part.parameters()):
                part.eval()
        return self

    # ---- forward
    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """``(B, d_audio)`` embeddings pass through; ``(B, n_mels, frames)`` log-mels run the encoder."""
        if audio.ndim == 2:
            if not self.accept_embeddings:
                raise ValueError("the language_only variant must not see pretrained audio embeddings; pass log-mel "
                                 "features (batch, n_mels, frames) so its random frozen encoder runs, or embeddings "
                                 "made by this model's own encoder (model.encoder) and set model.accept_embeddings")
            if audio.shape[1] != self.encoder.dim:
                raise ValueError(f"audio embeddings have width {audio.shape[1]}, the encoder's is {self.encoder.dim}")
            return audio
        if audio.ndim != 3:
            raise ValueError(f"audio must be (B, d_audio) embeddings or (B, n_mels, frames) log-mels, got "
                             f"{tuple(audio.shape)}")
        frozen = not any(p.requires_grad for p in self.encoder.backbone.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            return self.encoder(audio).embedding

    def project_audio(self, e: torch.Tensor) -> torch.Tensor:
        """``(B, d_audio)`` -> ``(B, d_proj)``: the audio projection, then L2 normalisation (``normalize_prefix``;
        the reference divides by the norm with no epsilon)."""
        if self.audio_projection is not None:
            e = self.audio_projection(e)
        return e / e.norm(2, -1, keepdim=True) if self.cfg.normalize_prefix else e

    def prefix(self, audio1: torch.Tensor, audio2: torch.Tensor, prompt_ids: torch.Tensor,
               prompt_mask: torch.Tensor, cross: bool = True) -> torch.Tensor:
        """The LM prefix ``(B, prefix_tokens, d_lm)``; ``cross=False`` stops before the cross-projection.

        ``prompt_ids`` / ``prompt_mask`` ``(B, <= prompt_len)`` as ``encode_prompts`` makes them; they are padded
        with ``pad_id`` to ``prompt_len``. The mask is used only with ``model.prompt_mask``."""
        dtype = self.audio_mapper1.linear.weight.dtype
        e1 = self.project_audio(self.embed_audio(audio1).to(dtype))
        e2 = self.project_audio(self.embed_audio(audio2).to(dtype))
        p1 = self.audio_mapper1(e1)
        p2 = (self.audio_mapper1 if self.audio_mapper2 is None else self.audio_mapper2)(e2)
        ids = _fit(prompt_ids, self.cfg.prompt_len, self.pad_id)
        mask = _fit(prompt_mask, self.cfg.prompt_len, 0) if self.cfg.prompt_mask else None
        text = self.text_mapper(self.lm.get_input_embeddings()(ids), mask)
        sep = [self.separator.to(p1.dtype).expand(p1.shape[0], 1, -1)] if self.uses_separator else []
        parts = torch.cat([p1, *sep, p2, text], dim=1)
        return self.cross_projection(parts) if cross and self.cross_projection is not None else parts

    def forward(self, audio1: torch.Tensor, audio2: torch.Tensor, prompt_ids: torch.Tensor,
                prompt_mask: torch.Tensor, answer_ids: torch.Tensor | None = None,
                answer_mask: torch.Tensor | None = None) -> AdiffOutput:
        prefix = self.prefix(audio1, audio2, prompt_ids, prompt_mask)
        if answer_ids is None:
            return AdiffOutput(prefix=prefix)
        if answer_mask is None:
            answer_mask = torch.ones_like(answer_ids)
        b, p = prefix.shape[:2]
        self._check_length(p + answer_ids.shape[1], "answer tokens (train.max_answer_tokens)")
        x = torch.cat([prefix, self.lm.get_input_embeddings()(answer_ids)], dim=1)
        attn = torch.cat([answer_mask.new_ones(b, p), answer_mask], dim=1)
        hidden = self.lm.base_model(inputs_embeds=x, attention_mask=attn, use_cache=False).last_hidden_state
        # Position p-1+t predicts answer token t. The prefix positions before would predict prefix "tokens",
        # whose labels are all -100, so their vocabulary projection is skipped (121 x V logits saved per row).
        logits = self.lm.get_output_embeddings()(hidden[:, p - 1 : -1])
        answer_labels = answer_ids.masked_fill(answer_mask == 0, -100)
        loss = F.cross_entropy(logits.float().flatten(0, 1), answer_labels.flatten(), ignore_index=-100)
        labels = torch.cat([answer_labels.new_full((b, p), -100), answer_labels], dim=1)
        return AdiffOutput(loss=loss, logits=logits, labels=labels, prefix=prefix)

    @torch.no_grad()
    def generate(self, audio1: torch.Tensor, audio2: torch.Tensor, prompt_ids: torch.Tensor,
                 prompt_mask: torch.Tensor, max_new_tokens: int = 64, stop_id: int | None = None,
                 **decoding) -> torch.Tensor:
        """New token ids ``(B * num_return_sequences, <= max_new_tokens)``, eos-padded. ``decoding`` goes to HF
        ``generate`` (KV cache): greedy by default; ``num_beams``; ``do_sample`` with ``top_k`` / ``top_p`` /
        ``temperature`` (the paper decodes with top-k / top-p). Call ``model.eval()`` first.

        ``stop_id`` given: ADIFF's reference loop instead (wrapper.py ``_generate_greedy``): every step recomputes
        GPT-2 over the whole sequence (no KV cache, as the reference), takes the argmax (its top-p 0.8 mask never
        removes the argmax) and stops after emitting ``stop_id``, which is kept; later positions hold eos."""
        prefix = self.prefix(audio1, audio2, prompt_ids, prompt_mask)
        self._check_length(prefix.shape[1] + max_new_tokens, "max_new_tokens")
        if stop_id is not None:
            return self._reference_greedy(prefix, max_new_tokens, stop_id)
        attn = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        decoding.setdefault("do_sample", False)
        return self.lm.generate(inputs_embeds=prefix, attention_mask=attn, max_new_tokens=max_new_tokens,
                                eos_token_id=self.eos_id, pad_token_id=self.eos_id, **decoding)


    def _reference_greedy(self, prefix: torch.Tensor, max_new_tokens: int, stop_id: int) -> torch.Tensor:
        wte = self.lm.get_input_embeddings()
        sequence, tokens = prefix, []
        done = torch.zeros(prefix.shape[0], dtype=torch.bool, device=prefix.device)
        for _ in range(max_new_tokens):
            token = self.lm(inputs_embeds=sequence, use_cache=False).logits[:, -1].argmax(-1)
            tokens.append(token.masked_fill(done, self.eos_id))
            done |= token == stop_id
            if done.all():
                break
            sequence = torch.cat([sequence, wte(token)[:, None]], dim=1)
        return torch.stack(tokens, dim=1)

    def _check_length(self, n: int, what: str) -> None:
        limit = causal_lm.positions(self.lm)
        if n > limit:
            raise ValueError(f"prefix ({self.prefix_tokens} tokens) + {what} = {n} exceeds the LM's {limit} positions; "
                             "shorten the answers or use an LM with more positions (model.lm_positions)")


def prefix_tokens(cfg: AdiffModelConfig) -> int:
    """LM positions the prefix takes, so the answer starts at this position: [p1, sep, p2, text]; no sep in a
    variant without one (the baseline)."""
    return 2 * cfg.prefix_len + cfg.prompt_len + int(variant(cfg.variant).separator)


def _fit(x: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    """Truncate or right-pad the last axis to ``length``."""
    if x.shape[-1] >= length:
        return x[..., :length]
    return F.pad(x, (0, length - x.shape[-1]), value=fill)


# ---------------------------------------------------------------------------------------------- building, stages
def build_model(cfg: AdiffModelConfig, tokenizer) -> AdiffModel:
    """The model for ``cfg`` with ``tokenizer``'s vocabulary; the separator token must be a single token."""
    return AdiffModel(cfg, len(tokenizer), single_token(tokenizer, cfg.separator_token, "model.separator_token"),
                      tokenizer.eos_token_id, pad_id=single_token(tokenizer, cfg.prompt_pad, "model.prompt_pad"))


def single_token(tokenizer, text: str, key: str) -> int:
    """The id of ``text``, which must be one token in ``tokenizer`` (special tokens parsed); ValueError naming
    ``key`` otherwise."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{key} {text!r} is {len(ids)} tokens in this tokenizer; use a single token "
                         "(e.g. '<|endoftext|>')")
    return ids[0]


STAGES = {"unimodal": 1, "grounding": 2, "finetune": 3}


def set_stage(model: AdiffModel, stage: int | str) -> AdiffModel:
    """Which parameters train (ADIFF section 3.3):

    1 ``unimodal``: only the encoder's event head (and its backbone when ``encoder.freeze`` is false).
    2 ``grounding``: audio projection, mappers and cross-projection; encoder and LM frozen.
    3 ``finetune``: as 2 plus the LM; the encoder only when ``encoder.freeze`` is false (never for language_only).
    The separator is a row of the LM's embedding, so it trains in stage 3 only, with the LM.
    """
    stage = STAGES.get(stage, stage) if isinstance(stage, str) else stage
    if stage not in (1, 2, 3):
        raise ValueError(f"unknown stage {stage!r}; use 1/2/3 or {', '.join(STAGES)}")
    model.requires_grad_(False)
    if stage == 1:
        model.encoder.event_head.requires_grad_(True)
        model.encoder.backbone.requires_grad_(model.encoder_trainable)
    else:
        for part in (model.audio_projection, model.audio_mapper1, model.audio_mapper2, model.text_mapper,
                     model.cross_projection):
            if part is not None:
                part.requires_grad_(True)
        if stage == 3:
            model.lm.requires_grad_(True)
            model.encoder.backbone.requires_grad_(model.encoder_trainable)
    model.stage = stage
    return model.train(model.training)  # re-apply eval mode to what is now frozen


# ---------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(model: AdiffModel, folder: str | os.PathLike, tokenizer=None) -> Path:
    """``model.safetensors`` (no pickle; tied LM weights stored once) + ``adiff.json`` (config, vocabulary ids and
    the LM / encoder architectures, so loading needs no hub access). Each file is replaced atomically."""
    from audiopair.atomic import atomic_path, atomic_write_json

    model = getattr(model, "module", model)  # a DeepSpeed engine / DDP wrapper
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(_unshared_state(model), str(tmp))
    atomic_write_json(folder / META, {
        "config": model.cfg.model_dump(mode="json"),
        "vocab_size": model.vocab_size, "separator_id": model.separator_id, "eos_id": model.eos_id,
        "pad_id": model.pad_id, "stage": getattr(model, "stage", 2),
        "event_labels": model.event_labels, "front_end": model.front_end,
        "lm_config": model.lm.config.to_dict(),
        "encoder_config": {"backbone": model.encoder.backbone.config.to_dict(), "frames": model.encoder.frames,
                           "event_head": head_config(model.encoder.event_head)},
    })
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder / "tokenizer"))
    return folder


def _tied_names(model: nn.Module) -> set[str]:
    """State-dict names that alias an earlier tensor (a tied LM head is its token embedding, as in GPT-2)."""
    seen, tied = set(), set()
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
        (tied.add(name) if key in seen else seen.add(key))
    return tied


def _unshared_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied aliases dropped and every tensor made its own contiguous copy: DeepSpeed ZeRO
    flattens parameters into one buffer, and safetensors (rightly) refuses views into shared storage."""
    tied = _tied_names(model)
    return {k: v.detach().clone().contiguous().cpu() for k, v in model.state_dict().items() if k not in tied}


def load_checkpoint(folder: str | os.PathLike, cfg: AdiffModelConfig | None = None,
                    device: str | torch.device = "cpu") -> AdiffModel:
    """The model saved in ``folder``. ``cfg`` (default: the saved one) may change what is not architecture
    (dropout, encoder.freeze); the stage is restored as saved."""
    folder = Path(folder)
    if not (folder / META).is_file() or not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder} is not an ADIFF checkpoint (needs {META} and {WEIGHTS})")
    meta = json.loads((folder / META).read_text())
    cfg = cfg or AdiffModelConfig.model_validate(meta["config"])
    from audiopair.runtime import MODEL_BUILDING

    with MODEL_BUILDING:
        model = AdiffModel(cfg, meta["vocab_size"], meta["separator_id"], meta["eos_id"],
                           lm_config=meta["lm_config"], encoder_config=meta["encoder_config"],
                           pad_id=meta.get("pad_id", meta["eos_id"]))
    state = load_file(str(folder / WEIGHTS), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    untied = set(missing) - _tied_names(model)
    if untied or unexpected:
        raise ValueError(f"{folder / WEIGHTS} does not match the model: missing {sorted(untied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    set_stage(model, meta.get("stage", 2))
    model.event_labels = meta.get("event_labels")
    model.front_end = meta.get("front_end")
    return model.to(device)
