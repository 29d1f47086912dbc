"""Config of the ADIFF model: the HTSAT encoder and the mappers, cross-projection and LM."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from audiopair.config.base import Section
from audiopair.variants import VariantName


# ---- models
class EncoderConfig(Section):
    """The HTSAT audio encoder (transformers' ClapAudioModel). Defaults are the paper's (ADIFF App. G).

    ``pretrained`` is a hub id or local folder holding a ClapAudioModel (or a whole ClapModel, whose audio tower is
    taken); ``None`` builds a random encoder from the size fields below (seeded by ``seed``). ``n_mels`` must equal
    ``dataset.features.n_mels``.
    """

    pretrained: str | None = "laion/clap-htsat-unfused"
    n_mels: int = Field(64, ge=8)
    frames: int | None = Field(1001, ge=8)  # crop / repeat-pad time to this (1001 = 10 s at a 10 ms hop); None: as is
    spec_size: int = Field(256, ge=16)  # Swin image side; time is resized to spec_size * (spec_size // n_mels)
    patch_size: int = Field(4, ge=1)
    patch_stride: int = Field(4, ge=1)
    window_size: int = Field(8, ge=1)
    embed_dim: int = Field(96, ge=4)  # first stage width; the embedding is embed_dim * 2 ** (len(depths) - 1)
    depths: list[int] = [2, 2, 6, 2]
    heads: list[int] = [4, 8, 16, 32]
    num_classes: int = Field(527, ge=1)  # event head classes (AudioSet: 527; demo: the bank's event kinds)
    # frame logits -> clip logits for stage-1 event training. "max" keeps the frame probabilities calibrated (an absent
    # event must be low in every frame), which the hallucination view reads; "attention" fits clips a bit faster.
    clip_pool: Literal["max", "attention"] = "max"
    # "token_semantic": HTSAT's own head, a (2 x 3) convolution over the last feature map whose clip output is the
    # mean of its frame outputs (what HTSAT's AudioSet checkpoints and ADIFF carry); "linear": a per-frame linear
    # with clip_pool pooling (trains faster from scratch on the demo)
    event_head: Literal["token_semantic", "linear"] = "token_semantic"
    # AudioSet's class_labels_indices.csv (index,mid,display_name) naming the event head's classes; None: numbered
    class_labels: str | None = None
    freeze: bool = True  # ADIFF App. G: frozen in every stage; False lets stage 3 train it
    seed: int = 0  # random init (pretrained=None, language_only) is reproducible

    @model_validator(mode="after")
    def _shapes(self) -> "EncoderConfig":
        if len(self.depths) != len(self.heads) or not self.depths:
            raise ValueError(f"depths {self.depths} and heads {self.heads} must be non-empty and of equal length")
        if self.spec_size % self.n_mels:
            raise ValueError(f"spec_size ({self.spec_size}) must be a multiple of n_mels ({self.n_mels})")
        ratio = self.spec_size // self.n_mels
        grid = self.spec_size // self.patch_stride
        final = grid // 2 ** (len(self.depths) - 1)
        if grid % 2 ** (len(self.depths) - 1) or final < 1 or final % ratio:
            raise ValueError(
                f"spec_size {self.spec_size} / patch_stride {self.patch_stride} / 2^{len(self.depths) - 1} = {final} "
                f"must be a positive multiple of spec_size // n_mels = {ratio}"
            )
        for i, h in enumerate(self.heads):
            if (self.embed_dim * 2**i) % h:
                raise ValueError(f"stage {i} width {self.embed_dim * 2**i} is not divisible by heads[{i}] = {h}")
        return self


class AdiffModelConfig(Section):
    """ADIFF (paper section 3, App. G/J): encoder -> per-audio mappers -> separator -> text mapper -> cross-projection
    -> a causal LM (GPT-2 in the paper; any other through ``audiopair.models.lm``). Defaults are the paper's sizes;
    the demo overrides them with tiny ones."""

    variant: VariantName = "adiff"  # audiopair.variants: what each one changes
    prefix_len: int = Field(40, ge=1)  # tokens per audio
    prompt_len: int = Field(40, ge=1)  # prompt tokens (padded / truncated), also the text prefix length
    # The defaults below are the released network (soham97/ADIFF model/adiff.py, model/decoder.py): base.yaml says
    # num_layers 8, and the code builds int(8 / 2) = 4 layers per mapper; mapper heads are hard-coded to 8.
    mapper_layers: int = Field(4, ge=1)
    mapper_heads: int = Field(8, ge=1)
    mapper_mlp_ratio: float = Field(2.0, gt=0)  # ClipCap's TransformerMapper uses 2
    cross_layers: int = Field(4, ge=1)
    cross_heads: int = Field(4, ge=1)
    shared_mapper: bool = False  # paper: a mapper per audio
    dropout: float = Field(0.0, ge=0, lt=1)  # in the mappers and cross-projection (the reference's is 0)
    # audio projection: d_audio -> d_proj (two bias-free linears, GELU, dropout, residual, LayerNorm); None: none
    d_proj: int | None = Field(1024, ge=1)
    projection_dropout: float = Field(0.5, ge=0, lt=1)
    normalize_prefix: bool = True  # L2-normalise the (projected) audio embedding before the mappers
    # audiopair's own options, each measured on the demo (benchmarks/RESULTS.md); the defaults are the reference's
    activation: Literal["relu", "gelu"] = "relu"  # in the mapper / cross-projection MLPs
    attention_bias: bool = False  # biases on the queries / keys / values projections
    text_position: bool = False  # a learned position vector added to the prompt embeddings in the text mapper
    prompt_mask: bool = False  # the text mapper ignores prompt padding (the reference attends to the pad tokens)
    cross_constant: bool = False  # a learned per-position constant added before the cross-projection
    # how a prompt becomes the text mapper's input: text + prompt_suffix, right-padded with prompt_pad to
    # prompt_len (the reference: " <|endoftext|>" and "!"); "<|endoftext|>" as pad is the tokenizer's eos
    prompt_suffix: str = " <|endoftext|>"
    prompt_pad: str = "!"
    # the LM (audiopair.models.lm): any Hugging Face causal LM, a hub id or folder (gpt2 / gpt2-medium / ... as in
    # the paper, or e.g. a Llama / Qwen2); None: a random one of lm_type at the sizes below (stage 1, tests)
    lm_pretrained: str | None = "gpt2"
    lm_type: str = "gpt2"  # a transformers model_type: gpt2, llama, qwen2, mistral, ...
    lm_layers: int = Field(12, ge=1)  # sizes of the random LM; defaults = GPT-2 base
    lm_dim: int = Field(768, ge=8)
    lm_heads: int = Field(12, ge=1)
    lm_kv_heads: int | None = Field(None, ge=1)  # grouped-query attention (llama, qwen2, ...); None: lm_heads
    lm_positions: int = Field(1024, ge=16)
    # in every GPT-2 vocabulary, so no embedding resize is needed; another LM's tokenizer names its own (e.g. "</s>")
    separator_token: str = "<|endoftext|>"
    encoder: EncoderConfig = EncoderConfig()

    @model_validator(mode="after")
    def _dims(self) -> "AdiffModelConfig":
        if self.lm_pretrained is None and self.lm_dim % self.lm_heads:
            raise ValueError(f"lm_dim ({self.lm_dim}) must be divisible by lm_heads ({self.lm_heads})")
        if self.lm_pretrained is None and self.lm_kv_heads and self.lm_heads % self.lm_kv_heads:
            raise ValueError(f"lm_heads ({self.lm_heads}) must be divisible by lm_kv_heads ({self.lm_kv_heads})")
        return self
