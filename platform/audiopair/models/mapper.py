"""ADIFF's mapper blocks (paper section 3, App. J), in ClipCap's form as the reference builds them
(soham97/ADIFF ``model/decoder.py``): bidirectional attention, pre-norm layers, the audio projection, the audio and
text mappers, and the cross-projection. ``audiopair.models.adiff`` puts them together."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}

class Attention(nn.Module):
    """Bidirectional multi-head self-attention in ClipCap's form (the reference's ``MultiHeadAttention``): queries and
    stacked keys / values from two linears (keys first), scores by einsum, softmax over the keys.

    ``key_mask`` ``(B, S)``, True = may be attended to. Shapes: ``(B, S, dim)`` -> ``(B, S, dim)``."""

    def __init__(self, dim: int, heads: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.scale, self.dropout = heads, (dim // heads) ** -0.5, dropout
        self.to_queries = nn.Linear(dim, dim, bias=bias)
        self.to_keys_values = nn.Linear(dim, 2 * dim, bias=bias)
        self.project = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, s, d = x.shape
        queries = self.to_queries(x).reshape(b, s, self.heads, d // self.heads)
        keys, values = self.to_keys_values(x).reshape(b, s, 2, self.heads, d // self.heads).unbind(2)
        # einsum in the reference's order: SDPA's fused kernel rounds differently (1e-5 on the fixture's prefix)
        scores = torch.einsum("bnhd,bmhd->bnmh", queries, keys) * self.scale
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask.bool()[:, None, :, None], float("-inf"))
        weights = F.dropout(scores.softmax(dim=2), self.dropout, self.training)
        return self.project(torch.einsum("bnmh,bmhd->bnhd", weights, values).reshape(b, s, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.activation, self.dropout = ACTIVATIONS[activation], dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(self.activation(self.fc1(x)), self.dropout, self.training)
        return F.dropout(self.fc2(x), self.dropout, self.training)


class TransformerLayer(nn.Module):
    """Pre-norm: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, activation: str = "relu", bias: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, bias, dropout)
        self.mlp = MLP(dim, int(dim * mlp_ratio), activation, dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int, **layer_options):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(dim, heads, **layer_options) for _ in range(layers))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, key_mask)
        return x


class AudioProjection(nn.Module):
    """The reference's ``Projection`` (d_audio -> d_proj): ``LayerNorm(e + dropout(linear2(gelu(e))))`` with
    ``e = linear1(x)``; both linears bias-free, Xavier-initialised as the reference does."""

    def __init__(self, d_in: int, d_out: int, dropout: float = 0.5):
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.layer_norm = nn.LayerNorm(d_out)
        self.dropout = dropout
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.linear1(x)
        return self.layer_norm(e + F.dropout(self.linear2(F.gelu(e)), self.dropout, self.training))


class AudioMapper(nn.Module):
    """One audio embedding ``(B, d_in)`` -> ``(B, prefix_len, dim)`` (ClipCap's ``TransformerMapper``): a linear
    expands it into ``prefix_len`` tokens, a learnable constant of ``prefix_len`` tokens is appended, and the
    transformer's outputs at the constant's positions are kept."""

    def __init__(self, d_in: int, prefix_len: int, dim: int, layers: int, heads: int, **layer_options):
        super().__init__()
        self.prefix_len = prefix_len
        self.linear = nn.Linear(d_in, prefix_len * dim)
        self.prefix_const = nn.Parameter(torch.randn(prefix_len, dim))
        self.transformer = Transformer(dim, heads, layers, **layer_options)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        x = self.linear(e).view(e.shape[0], self.prefix_len, -1)
        x = torch.cat([x, self.prefix_const.expand(x.shape[0], -1, -1)], dim=1)
        return self.transformer(x)[:, self.prefix_len:]


class TextMapper(nn.Module):
    """Prompt token embeddings ``(B, prompt_len, dim)`` -> ``(B, prompt_len, dim)`` (the reference's
    ``TransformerMapperSeq``): the constant is appended and the outputs at its positions kept, as in ``AudioMapper``.

    Options (audiopair's, off in the reference): ``position`` adds a learned vector per prompt position (the
    attention is order-blind otherwise); ``key_mask`` hides prompt padding."""

    def __init__(self, prompt_len: int, dim: int, layers: int, heads: int, position: bool = False, **layer_options):
        super().__init__()
        self.prompt_len = prompt_len
        self.prefix_const = nn.Parameter(torch.randn(prompt_len, dim))
        self.position = nn.Parameter(torch.zeros(prompt_len, dim)) if position else None
        self.transformer = Transformer(dim, heads, layers, **layer_options)

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.position is not None:
            tokens = tokens + self.position
        b = tokens.shape[0]
        x = torch.cat([tokens, self.prefix_const.expand(b, -1, -1)], dim=1)
        if key_mask is not None:  # the constant's tokens are always visible
            key_mask = torch.cat([key_mask.bool(), key_mask.new_ones(b, self.prompt_len, dtype=torch.bool)], 1)
        return self.transformer(x, key_mask)[:, self.prompt_len:]


class CrossProjection(Transformer):
    """App. J: a transformer over the whole prefix [p1, sep, p2, text], same length out (the reference's
    ``cross_project``). Option ``constant`` (audiopair's): a learned per-position vector added first; with the
    residual path it gives each position an identity start and trained faster on the demo."""

    def __init__(self, n: int, dim: int, heads: int, layers: int, constant: bool = False, **layer_options):
        super().__init__(dim, heads, layers, **layer_options)
        self.const = nn.Parameter(torch.zeros(n, dim)) if constant else None

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x if self.const is None else x + self.const, key_mask)
