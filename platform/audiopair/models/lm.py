"""The language-model seam: ADIFF's decoder is any Hugging Face causal LM.

The model reads only what every ``AutoModelForCausalLM`` has: ``get_input_embeddings`` (prompt, separator and answer
embeddings), ``base_model`` (hidden states from ``inputs_embeds``), ``get_output_embeddings`` (the vocabulary
projection), ``generate`` and its config's ``hidden_size`` / ``max_position_embeddings``. Each LM keeps its own
position scheme (GPT-2's learned table, RoPE in Llama / Qwen2) and its tokenizer's eos / pad.

Three ways to get one, all through the Auto classes:
- ``model.lm_pretrained``: a hub id or folder (``from_pretrained``), GPT-2 by default as in the paper;
- ``model.lm_type`` with ``lm_layers`` / ``lm_dim`` / ``lm_heads`` / ``lm_kv_heads`` / ``lm_positions``: a random LM of
  that ``model_type`` (gpt2, llama, qwen2, ...) at those sizes, for stage 1 or tests;
- a checkpoint's saved config dict (``adiff.json`` ``lm_config``), which rebuilds the architecture offline.
"""

from __future__ import annotations

from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel


def lm_config(cfg, vocab_size: int, eos_id: int) -> PretrainedConfig:
    """A ``cfg.lm_type`` config of ``cfg``'s sizes (an ``AdiffModelConfig``). The sizes go by transformers' standard
    names (``hidden_size``, ``num_hidden_layers``, ...; GPT-2 maps them onto ``n_embd`` etc.), each only where the
    family has it: GPT-2's MLP is 4 x wide and it has no grouped-query heads, so those two are left to it.
    ValueError when transformers does not know ``lm_type``."""
    if cfg.lm_type not in CONFIG_MAPPING:
        raise ValueError(f"model.lm_type={cfg.lm_type!r} is not a transformers model_type "
                         "(e.g. gpt2, llama, qwen2, mistral)")
    config_class = CONFIG_MAPPING[cfg.lm_type]
    defaults = config_class()
    sizes = {"hidden_size": cfg.lm_dim, "num_hidden_layers": cfg.lm_layers, "num_attention_heads": cfg.lm_heads,
             "num_key_value_heads": cfg.lm_kv_heads or cfg.lm_heads, "intermediate_size": 4 * cfg.lm_dim,
             "max_position_embeddings": cfg.lm_positions}
    return config_class(vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id,
                        **{k: v for k, v in sizes.items() if hasattr(defaults, k)})


def build_lm(cfg, vocab_size: int, eos_id: int, saved: dict | None = None) -> PreTrainedModel:
    """The LM of an ``AdiffModelConfig``: from ``saved`` (a config dict, weights loaded later), else
    ``cfg.lm_pretrained``, else random of ``lm_config``. Random weights come from torch's global generator."""
    if saved is not None:
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**saved))
    if cfg.lm_pretrained:
        return AutoModelForCausalLM.from_pretrained(cfg.lm_pretrained)
    return AutoModelForCausalLM.from_config(lm_config(cfg, vocab_size, eos_id))


def positions(lm: PreTrainedModel) -> int:
    """How many positions the LM takes (GPT-2's ``n_positions``, others' ``max_position_embeddings``)."""
    return lm.config.max_position_embeddings


def width(lm: PreTrainedModel) -> int:
    """The LM's hidden size (``d_lm``): the width of the prefix the mappers make."""
    return lm.config.hidden_size
