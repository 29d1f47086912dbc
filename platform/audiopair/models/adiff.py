"""ADIFF (paper section 3, App. G and J): explain the difference between two audios with a prefix-prompted GPT-2.

    audio1, audio2 --HTSAT--> e1, e2 (d_audio)             (or embeddings cached by the dataset builder)
    e_i --audio mapper--> (prefix_len, d_lm)                ClipCap TransformerMapper, one per audio
    prompt --wte--> --text mapper--> (prompt_len, d_lm)     same, without the first linear
    [p1, sep, p2, text] --cross-projection--> (121, d_lm)   transformer with a learnable constant (App. J)
    GPT-2(inputs_embeds=[prefix, answer]) -> next-token loss on the answer only

Variants: ``baseline`` drops the separator and the cross-projection (prefix [p1, p2, text], 120 tokens, section 5.1);
``language_only`` is ``adiff`` with a randomly initialised, frozen encoder (section 5.1, Exp. A).
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
from transformers import ClapAudioConfig, ClapAudioModel, GPT2Config, GPT2LMHeadModel
from transformers.utils import ModelOutput

from audiopair.config import AdiffModelConfig, EncoderConfig
from audiopair.models.encoder import AudioEncoder

WEIGHTS = "model.safetensors"
META = "adiff.json"


# ---------------------------------------------------------------------------------------------- mapper blocks
class Block(nn.Module):
    """Pre-norm transformer block, bidirectional: every prefix token may look at every other."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, S): True = may attend
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = x + F.dropout(self.proj(y.transpose(1, 2).reshape(b, s, d)), self.dropout, self.training)
        return x + self.mlp(self.ln2(x))


class PrefixTransformer(nn.Module):
    """ClipCap's mapper core: append a learnable constant of ``n_out`` tokens to the inputs, run the transformer,
    keep the outputs at the constant's positions. The constant also gives the outputs their positions."""

    def __init__(self, n_out: int, dim: int, layers: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.const = nn.Parameter(torch.randn(n_out, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n_in, _ = x.shape
        x = torch.cat([x, self.const.expand(b, -1, -1)], dim=1)
        if key_mask is not None:  # the constant's tokens are always visible
            key_mask = torch.cat([key_mask.bool(), key_mask.new_ones(b, self.const.shape[0], dtype=torch.bool)], 1)
        for block in self.blocks:
            x = block(x, key_mask)
        return x[:, n_in:]


class AudioMapper(nn.Module):
    """One audio embedding -> ``prefix_len`` LM tokens: expand with a linear, split into tokens, PrefixTransformer."""

    def __init__(self, d_audio: int, prefix_len: int, dim: int, layers: int, heads: int, mlp_ratio: float,
                 dropout: float):
        super().__init__()
        self.prefix_len, self.dim = prefix_len, dim
        self.linear = nn.Linear(d_audio, prefix_len * dim)
        self.transformer = PrefixTransformer(prefix_len, dim, layers, heads, mlp_ratio, dropout)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.linear(e).view(-1, self.prefix_len, self.dim))


class TextMapper(nn.Module):
    """Prompt token embeddings -> ``prompt_len`` prefix tokens. The mapper's attention is order-blind, so (unlike
    the audio mapper, whose linear gives each slot its own meaning) the prompt tokens get a learned position."""

    def __init__(self, prompt_len: int, dim: int, layers: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(prompt_len, dim))
        self.transformer = PrefixTransformer(prompt_len, dim, layers, heads, mlp_ratio, dropout)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.transformer(tokens + self.pos, mask)


class CrossProjection(nn.Module):
    """App. J: a transformer over the whole prefix [p1, sep, p2, text] with a learnable constant, same length out.

    The constant is added (one vector per position) rather than appended as in the mappers: the in and out lengths
    are equal, and the residual path keeps each output token on its input token, which is what App. J observes
    (after cross-projection the audio-1 tokens still describe audio 1, the text tokens gather the differences).
    It also trains much faster than the appended form (an identity start instead of a re-routing of everything)."""

    def __init__(self, n: int, dim: int, layers: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.const = nn.Parameter(torch.zeros(n, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.const
        for block in self.blocks:
            x = block(x)
        return x


@dataclass
class AdiffOutput(ModelOutput):
    loss: torch.Tensor | None = None  # mean cross-entropy over answer tokens (mask 1, eos included)
    logits: torch.Tensor | None = None  # (B, T, V): logits[:, t] predicts answer_ids[:, t]
    labels: torch.Tensor | None = None  # (B, P + T): the LM sequence's labels, -100 on the prefix and padding
    prefix: torch.Tensor | None = None  # (B, P, d_lm)


# ---------------------------------------------------------------------------------------------- the model
def encoder_config_of(cfg: AdiffModelConfig) -> EncoderConfig:
    """The encoder a variant is built with: ``language_only`` (Exp. A) gets the same network, random and frozen."""
    if cfg.variant == "language_only":
        return cfg.encoder.model_copy(update={"pretrained": None, "freeze": True})
    return cfg.encoder


class AdiffModel(nn.Module):
    """Build with ``build_model(cfg, tokenizer)``; ``lm_config`` / ``encoder_config`` (dicts) make the architecture
    from a checkpoint's saved configs instead of loading pretrained weights (``load_checkpoint``)."""

    def __init__(self, cfg: AdiffModelConfig, vocab_size: int, separator_id: int, eos_id: int,
                 lm_config: dict | None = None, encoder_config: dict | None = None):
        super().__init__()
        self.cfg, self.vocab_size, self.separator_id, self.eos_id = cfg, vocab_size, separator_id, eos_id
        enc_cfg = encoder_config_of(cfg)
        self.encoder_trainable = not enc_cfg.freeze
        # Cached embeddings come from the pretrained encoder, so language_only refuses them unless the caller says
        # they were made by this model's own random encoder (the same for a given encoder.seed).
        self.accept_embeddings = cfg.variant != "language_only"
        self.event_labels: list[str] | None = None  # the event head's class names, when known (hallucination view)

        # --- encoder
        if encoder_config is not None:
            head = encoder_config.get("event_head", {})
            backbone = ClapAudioModel(ClapAudioConfig.from_dict(encoder_config["backbone"]))
            self.encoder = AudioEncoder(backbone, head.get("num_classes", enc_cfg.num_classes),
                                        head.get("clip_pool", enc_cfg.clip_pool), enc_cfg.frames)
        else:
            self.encoder = AudioEncoder.from_config(enc_cfg)

        # --- language model
        if lm_config is not None:
            lm = GPT2LMHeadModel(GPT2Config.from_dict(lm_config))
        elif cfg.lm_pretrained:
            lm = GPT2LMHeadModel.from_pretrained(cfg.lm_pretrained)
        else:
            lm = GPT2LMHeadModel(GPT2Config(
                vocab_size=vocab_size, n_positions=cfg.lm_positions, n_embd=cfg.lm_dim, n_layer=cfg.lm_layers,
                n_head=cfg.lm_heads, bos_token_id=eos_id, eos_token_id=eos_id,
            ))
        if lm.config.vocab_size < vocab_size:  # a tokenizer with added tokens
            lm.resize_token_embeddings(vocab_size)
        if not 0 <= separator_id < lm.config.vocab_size:
            raise ValueError(f"separator id {separator_id} is outside the LM vocabulary ({lm.config.vocab_size})")

        # --- projections (registered before the LM so modules list in data-flow order)
        d = lm.config.n_embd
        if d % cfg.mapper_heads:
            raise ValueError(f"LM width {d} is not divisible by model.mapper_heads={cfg.mapper_heads}")
        arch = dict(heads=cfg.mapper_heads, mlp_ratio=cfg.mapper_mlp_ratio, dropout=cfg.dropout)
        self.audio_mapper1 = AudioMapper(self.encoder.dim, cfg.prefix_len, d, cfg.mapper_layers, **arch)
        self.audio_mapper2 = None if cfg.shared_mapper else \
            AudioMapper(self.encoder.dim, cfg.prefix_len, d, cfg.mapper_layers, **arch)
        self.text_mapper = TextMapper(cfg.prompt_len, d, cfg.mapper_layers, **arch)
        self.cross_projection = None if cfg.variant == "baseline" else \
            CrossProjection(self.prefix_tokens, d, cfg.cross_layers, **arch)
        self.lm = lm
        set_stage(self, 2)  # a fresh model starts where training starts: grounding

    # ---- sizes
    @property
    def uses_separator(self) -> bool:
        return self.cfg.variant != "baseline"

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

    def prefix(self, audio1: torch.Tensor, audio2: torch.Tensor, prompt_ids: torch.Tensor,
               prompt_mask: torch.Tensor) -> torch.Tensor:
        """The LM prefix ``(B, prefix_tokens, d_lm)``."""
        dtype = self.audio_mapper1.linear.weight.dtype
        e1, e2 = self.embed_audio(audio1).to(dtype), self.embed_audio(audio2).to(dtype)
        p1 = self.audio_mapper1(e1)
        p2 = (self.audio_mapper1 if self.audio_mapper2 is None else self.audio_mapper2)(e2)
        ids, mask = _fit(prompt_ids, self.cfg.prompt_len, self.eos_id), _fit(prompt_mask, self.cfg.prompt_len, 0)
        text = self.text_mapper(self.lm.get_input_embeddings()(ids), mask)
        if self.cross_projection is None:
            return torch.cat([p1, p2, text], dim=1)
        sep = self.separator.to(p1.dtype).expand(p1.shape[0], 1, -1)
        return self.cross_projection(torch.cat([p1, sep, p2, text], dim=1))

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
        hidden = self.lm.transformer(inputs_embeds=x, attention_mask=attn, use_cache=False).last_hidden_state
        # Position p-1+t predicts answer token t. The prefix positions before would predict prefix "tokens",
        # whose labels are all -100, so their vocabulary projection is skipped (121 x V logits saved per row).
        logits = self.lm.lm_head(hidden[:, p - 1 : -1])
        answer_labels = answer_ids.masked_fill(answer_mask == 0, -100)
        loss = F.cross_entropy(logits.float().flatten(0, 1), answer_labels.flatten(), ignore_index=-100)
        labels = torch.cat([answer_labels.new_full((b, p), -100), answer_labels], dim=1)
        return AdiffOutput(loss=loss, logits=logits, labels=labels, prefix=prefix)

    @torch.no_grad()
    def generate(self, audio1: torch.Tensor, audio2: torch.Tensor, prompt_ids: torch.Tensor,
                 prompt_mask: torch.Tensor, max_new_tokens: int = 64, **decoding) -> torch.Tensor:
        """New token ids ``(B * num_return_sequences, <= max_new_tokens)``, eos-padded. ``decoding`` goes to HF
        ``generate`` (KV cache): greedy by default; ``num_beams``; ``do_sample`` with ``top_k`` / ``top_p`` /
        ``temperature`` (the paper decodes with top-k / top-p). Call ``model.eval()`` first."""
        prefix = self.prefix(audio1, audio2, prompt_ids, prompt_mask)
        self._check_length(prefix.shape[1] + max_new_tokens, "max_new_tokens")
        attn = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)
        decoding.setdefault("do_sample", False)
        return self.lm.generate(inputs_embeds=prefix, attention_mask=attn, max_new_tokens=max_new_tokens,
                                eos_token_id=self.eos_id, pad_token_id=self.eos_id, **decoding)


    def _check_length(self, n: int, what: str) -> None:
        limit = self.lm.config.n_positions
        if n > limit:
            raise ValueError(f"prefix ({self.prefix_tokens} tokens) + {what} = {n} exceeds the LM's {limit} positions; "
                             "shorten the answers or use an LM with more positions (model.lm_positions)")


def prefix_tokens(cfg: AdiffModelConfig) -> int:
    """LM positions the prefix takes, so the answer starts at this position: [p1, sep, p2, text]; no sep for the
    baseline."""
    return 2 * cfg.prefix_len + cfg.prompt_len + int(cfg.variant != "baseline")


def _fit(x: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    """Truncate or right-pad the last axis to ``length``."""
    if x.shape[-1] >= length:
        return x[..., :length]
    return F.pad(x, (0, length - x.shape[-1]), value=fill)


# ---------------------------------------------------------------------------------------------- building, stages
def build_model(cfg: AdiffModelConfig, tokenizer) -> AdiffModel:
    """The model for ``cfg`` with ``tokenizer``'s vocabulary; the separator token must be a single token."""
    sep = tokenizer(cfg.separator_token, add_special_tokens=False)["input_ids"]
    if len(sep) != 1:
        raise ValueError(f"model.separator_token {cfg.separator_token!r} is {len(sep)} tokens in this tokenizer; "
                         "use a single token (e.g. '<|endoftext|>')")
    return AdiffModel(cfg, len(tokenizer), sep[0], tokenizer.eos_token_id)


STAGES = {"unimodal": 1, "grounding": 2, "finetune": 3}


def set_stage(model: AdiffModel, stage: int | str) -> AdiffModel:
    """Which parameters train (ADIFF section 3.3):

    1 ``unimodal``: only the encoder's event head (and its backbone when ``encoder.freeze`` is false).
    2 ``grounding``: mappers and cross-projection; encoder and LM frozen.
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
        for part in (model.audio_mapper1, model.audio_mapper2, model.text_mapper, model.cross_projection):
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
    from audiopair.data.io import atomic_write_json

    model = getattr(model, "module", model)  # a DeepSpeed engine / DDP wrapper
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{WEIGHTS}.tmp"
    save_file(_unshared_state(model), str(tmp))
    os.replace(tmp, folder / WEIGHTS)
    head = model.encoder.event_head
    atomic_write_json(folder / META, {
        "config": model.cfg.model_dump(mode="json"),
        "vocab_size": model.vocab_size, "separator_id": model.separator_id, "eos_id": model.eos_id,
        "stage": getattr(model, "stage", 2),
        "event_labels": model.event_labels,
        "lm_config": model.lm.config.to_dict(),
        "encoder_config": {"backbone": model.encoder.backbone.config.to_dict(),
                           "event_head": {"num_classes": head.num_classes, "clip_pool": head.pool}},
    })
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder / "tokenizer"))
    return folder


def _tied_names(model: nn.Module) -> set[str]:
    """State-dict names that alias an earlier tensor (GPT-2's lm_head is its token embedding)."""
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
    model = AdiffModel(cfg, meta["vocab_size"], meta["separator_id"], meta["eos_id"],
                       lm_config=meta["lm_config"], encoder_config=meta["encoder_config"])
    state = load_file(str(folder / WEIGHTS), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    untied = set(missing) - _tied_names(model)
    if untied or unexpected:
        raise ValueError(f"{folder / WEIGHTS} does not match the model: missing {sorted(untied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    set_stage(model, meta.get("stage", 2))
    model.event_labels = meta.get("event_labels")
    return model.to(device)
