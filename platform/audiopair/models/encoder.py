"""The HTSAT audio encoder: transformers' ``ClapAudioModel`` (a Swin transformer over the log-mel "image") plus a small
event head.

Input is what the data pipeline caches (``audiopair.data.features.logmel``): ``(batch, n_mels, frames)`` float32 log-mel
power in dB, floored at -100 dB. That is the same scale ``ClapFeatureExtractor`` produces (``log_mel="dB"``); the
backbone normalises it itself with a BatchNorm over mel bins, so no further scaling is done here.

Outputs: the pooled embedding ``(batch, d_audio)`` (768 for HTSAT), frame-level event probabilities
``(batch, frames', num_classes)`` from the time axis of the last hidden state (frames' = 32 for HTSAT, each covering
1/32 of the fitted input), and clip-level logits pooled from the frame logits (max by default, so frame probabilities
stay calibrated), used to train the event head on event labels: ADIFF's unimodal stage.

Mel front end: by default the features are HTSAT's / ADIFF's own (Slaney mel filters, 32 kHz, hop 320; see
``audiopair.data.features``). laion CLAP checkpoints were trained at 48 kHz / hop 480: same frame rate and bins.

HTSAT's reference checkpoints (HTS-AT, msclap, ADIFF) convert through ``audiopair.models.htsat``; their
token-semantic head becomes ``TokenSemanticHead``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import ClapAudioConfig, ClapAudioModel, ClapConfig, ClapModel, PretrainedConfig
from transformers.utils import ModelOutput

from audiopair.config import EncoderConfig
from audiopair.models.htsat import read_class_labels, read_state, sizes, split_htsat, to_clap

HEAD_WEIGHTS = "event_head.safetensors"
HEAD_CONFIG = "event_head.json"


def clap_audio_config(cfg: EncoderConfig) -> ClapAudioConfig:
    """A ClapAudioConfig from our size fields (HTSAT defaults reproduce laion/clap-htsat-unfused's audio tower)."""
    width = cfg.embed_dim * 2 ** (len(cfg.depths) - 1)
    return ClapAudioConfig(
        num_mel_bins=cfg.n_mels, spec_size=cfg.spec_size, patch_size=cfg.patch_size,
        patch_stride=[cfg.patch_stride, cfg.patch_stride], window_size=cfg.window_size,
        patch_embeds_hidden_size=cfg.embed_dim, depths=list(cfg.depths), num_attention_heads=list(cfg.heads),
        hidden_size=width,  # only used by the init scale; keep it the true output width
        num_hidden_layers=len(cfg.depths), enable_fusion=False, num_classes=cfg.num_classes,
    )


@dataclass
class EncoderOutput(ModelOutput):
    embedding: torch.Tensor | None = None  # (B, d_audio): the backbone's pooled output
    frame_logits: torch.Tensor | None = None  # (B, T', K)
    frame_probs: torch.Tensor | None = None  # (B, T', K): sigmoid(frame_logits), for the hallucination view
    clip_logits: torch.Tensor | None = None  # (B, K): for training the head on clip-level event labels


class EventHead(nn.Module):
    """Per-frame event logits from a linear on the frequency-averaged feature map; clip logits by max or (per-class
    softmax) attention pooling over time. audiopair's own head, quick to train from scratch (the demo)."""

    kind = "linear"

    def __init__(self, dim: int, num_classes: int, pool: str = "max"):
        super().__init__()
        self.num_classes, self.pool = num_classes, pool
        self.frame = nn.Linear(dim, num_classes)
        self.attention = nn.Linear(dim, num_classes) if pool == "attention" else None

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, F', T')`` -> frame logits ``(B, T', K)``, clip logits ``(B, K)``."""
        frames = feature_map.mean(dim=2).transpose(1, 2)  # (B, T', C)
        logits = self.frame(frames)
        if self.attention is None:
            return logits, logits.max(dim=1).values
        weights = self.attention(frames).softmax(dim=1)  # where in time each class is decided
        return logits, (weights * logits).sum(dim=1)


class TokenSemanticHead(nn.Module):
    """HTSAT's token-semantic module (Chen et al. 2022, ``tscam_conv``): a ``(F', 3)`` convolution over the last
    feature map gives one logit per class and time step; the clip logit is their mean over time (HTSAT: clipwise =
    sigmoid(mean), framewise = sigmoid(each step)). ``head``, a K x K linear that HTSAT builds and never calls, is
    kept frozen so that checkpoints map key for key."""

    kind = "token_semantic"
    pool = "mean"

    def __init__(self, dim: int, num_classes: int, freq_bins: int):
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(dim, num_classes, kernel_size=(freq_bins, 3), padding=(0, 1))
        self.head = nn.Linear(num_classes, num_classes)
        self.head.requires_grad_(False)

    def requires_grad_(self, requires_grad: bool = True) -> "TokenSemanticHead":
        super().requires_grad_(requires_grad)
        self.head.requires_grad_(False)  # unused in forward: never handed to an optimiser
        return self

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, F', T')`` -> frame logits ``(B, T', K)``, clip logits ``(B, K)``."""
        logits = self.conv(feature_map).flatten(2).transpose(1, 2)  # (B, T', K): the conv spans all of F'
        return logits, logits.mean(dim=1)


def make_head(kind: str, backbone: ClapAudioModel, num_classes: int, clip_pool: str = "max") -> nn.Module:
    """The event head ``kind`` ("token_semantic" | "linear") for ``backbone``'s feature map."""
    dim = backbone.audio_encoder.num_features
    if kind == "token_semantic":
        c = backbone.config
        freq_bins = c.num_mel_bins // (2 ** (len(c.depths) - 1) * c.patch_stride[0])  # F' of the last feature map
        return TokenSemanticHead(dim, num_classes, freq_bins)
    if kind == "linear":
        return EventHead(dim, num_classes, clip_pool)
    raise ValueError(f"unknown event head {kind!r}; use token_semantic or linear")


def head_config(head: nn.Module) -> dict:
    """What rebuilds ``head`` (saved beside the weights)."""
    return {"kind": head.kind, "num_classes": head.num_classes, "clip_pool": head.pool}


class AudioEncoder(nn.Module):
    """``ClapAudioModel`` + ``EventHead``. Build with ``from_config``; load/save with ``from_pretrained`` /
    ``save_pretrained`` (the backbone through transformers' own format, the head as safetensors beside it)."""

    def __init__(self, backbone: ClapAudioModel, num_classes: int, clip_pool: str = "max",
                 frames: int | None = None, head: str = "linear"):
        super().__init__()
        self.backbone = backbone
        self.frames = frames
        self.event_head = make_head(head, backbone, num_classes, clip_pool)
        self.class_labels: list[str] | None = None  # the event head's class names, when known

    # ---- sizes
    @property
    def dim(self) -> int:
        return self.backbone.audio_encoder.num_features

    @property
    def n_mels(self) -> int:
        return self.backbone.config.num_mel_bins

    @property
    def spec_frames(self) -> int:
        """Time frames the Swin image holds: spec_size * freq_ratio (1024 for HTSAT)."""
        enc = self.backbone.audio_encoder
        return enc.spec_size * enc.freq_ratio

    # ---- input
    def fit(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, n_mels, T)`` dB -> ``(B, 1, spec_frames, n_mels)`` as ClapAudioModel wants.

        Time is first cropped (from the start: random crops are the data loader's job) or repeat-padded to
        ``frames`` (CLAP's "repeat" padding), then resized to the Swin width with the same bicubic interpolation
        ClapAudioModel applies to short inputs (it refuses long ones, so we resize those ourselves). HTSAT
        interpolates after its BatchNorm; in eval mode the two orders agree (the fixture: 7e-7), and in training
        interpolating first trained the linear head's frame outputs better (tests/test_models.py).
        """
        if features.ndim != 3 or features.shape[1] != self.n_mels:
            raise ValueError(
                f"encoder expects log-mel features (batch, {self.n_mels}, frames), got {tuple(features.shape)}; "
                "model.encoder.n_mels must equal dataset.features.n_mels"
            )
        x = features.to(self.backbone.dtype)
        if self.frames is not None:
            t = x.shape[-1]
            if t < self.frames:
                x = x.repeat(1, 1, -(-self.frames // t))
            x = x[..., : self.frames]
        x = x.transpose(1, 2).unsqueeze(1)  # (B, 1, T, n_mels)
        if x.shape[2] != self.spec_frames:
            x = F.interpolate(x, (self.spec_frames, self.n_mels), mode="bicubic", align_corners=True)
        return x

    def forward(self, features: torch.Tensor) -> EncoderOutput:
        out = self.backbone(input_features=self.fit(features), return_dict=True)
        # last_hidden_state is (B, C, freq', T') with time in order (ClapAudioEncoder regroups the Swin's
        # freq_ratio time chunks, as HTSAT does before its token-semantic head)
        frame_logits, clip_logits = self.event_head(out.last_hidden_state)
        return EncoderOutput(embedding=out.pooler_output, frame_logits=frame_logits,
                             frame_probs=frame_logits.sigmoid(), clip_logits=clip_logits)

    # ---- building and I/O
    @classmethod
    def from_config(cls, cfg: EncoderConfig) -> "AudioEncoder":
        """``cfg.pretrained`` loaded, or a random encoder from the size fields, seeded by ``cfg.seed``."""
        if cfg.pretrained:
            enc = (cls.from_htsat_checkpoint(cfg.pretrained, cfg.frames) if _is_torch_file(cfg.pretrained) else
                   cls.from_pretrained(cfg.pretrained, num_classes=cfg.num_classes, clip_pool=cfg.clip_pool,
                                       frames=cfg.frames, head=cfg.event_head))
            if enc.n_mels != cfg.n_mels:
                raise ValueError(f"encoder {cfg.pretrained} takes {enc.n_mels} mel bins but model.encoder.n_mels is "
                                 f"{cfg.n_mels}; set dataset.features.n_mels and model.encoder.n_mels to {enc.n_mels}")
            return enc
        with torch.random.fork_rng(devices=[]):  # a fixed init without disturbing the caller's RNG
            torch.manual_seed(cfg.seed)
            enc = cls(ClapAudioModel(clap_audio_config(cfg)), cfg.num_classes, cfg.clip_pool, cfg.frames,
                      cfg.event_head)
        if cfg.class_labels:
            enc.set_class_labels(read_class_labels(cfg.class_labels))
        return enc

    def set_class_labels(self, labels: list[str]) -> None:
        if len(labels) != self.event_head.num_classes:
            raise ValueError(f"{len(labels)} class labels for an event head of {self.event_head.num_classes} classes")
        self.class_labels = list(labels)

    @classmethod
    def from_htsat_checkpoint(cls, path: str | Path, frames: int | None = 1001) -> "AudioEncoder":
        """The encoder in a reference-layout HTSAT checkpoint (HTS-AT's AudioSet ``.ckpt``, msclap's CLAP, ADIFF):
        sizes from the tensor shapes, the token-semantic head when the checkpoint has one (else a linear head of
        527 classes, untrained). Loaded with ``weights_only=True``; raises ``CheckpointError`` for unmapped keys."""
        htsat, _ = split_htsat(read_state(path))
        backbone_state, head_state, _ = to_clap(htsat)
        cfg = EncoderConfig(pretrained=None, frames=frames, **sizes(htsat),
                            event_head="token_semantic" if head_state else "linear")
        enc = cls(ClapAudioModel(clap_audio_config(cfg)), cfg.num_classes, cfg.clip_pool, frames, cfg.event_head)
        enc.backbone.load_state_dict(backbone_state, strict=True)
        if head_state:
            enc.event_head.load_state_dict(head_state, strict=True)
        return enc

    @classmethod
    def from_pretrained(cls, path: str, num_classes: int | None = None, clip_pool: str = "max",
                        frames: int | None | str = "saved", head: str = "linear") -> "AudioEncoder":
        """A folder or hub id holding a ClapAudioModel (ours, with ``event_head.*`` beside it) or a full ClapModel
        (e.g. ``laion/clap-htsat-unfused``: its audio tower is taken). A saved event head is reused when its class
        count matches ``num_classes`` (or ``num_classes`` is None); otherwise a fresh head is made. ``frames="saved"``
        keeps the time fit saved with the head (else 1001, HTSAT's 10 s)."""
        # AutoConfig does not know "clap_audio_model", so read the raw config to see which of the two it is
        kind = PretrainedConfig.get_config_dict(path)[0].get("model_type")
        if kind == ClapConfig.model_type:
            backbone = ClapModel.from_pretrained(path).audio_model
        elif kind == ClapAudioConfig.model_type:
            backbone = ClapAudioModel.from_pretrained(path)
        else:
            raise ValueError(f"{path} holds a {kind!r} model, not a CLAP / HTSAT audio model")
        folder = Path(path)
        saved = json.loads((folder / HEAD_CONFIG).read_text()) if (folder / HEAD_CONFIG).is_file() else {}
        if frames == "saved":
            frames = saved.get("frames", 1001)
        # reuse the saved head unless another label set is asked for
        reuse = bool(saved) and (folder / HEAD_WEIGHTS).is_file() and num_classes in (None, saved["num_classes"])
        if reuse:
            num_classes, clip_pool, head = saved["num_classes"], saved["clip_pool"], saved.get("kind", "linear")
        enc = cls(backbone, num_classes or backbone.config.num_classes, clip_pool, frames, head)
        if reuse:
            enc.event_head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
        return enc

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.backbone.save_pretrained(folder)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.event_head.state_dict().items()},
                  str(folder / HEAD_WEIGHTS))
        head = {**head_config(self.event_head), "frames": self.frames}
        (folder / HEAD_CONFIG).write_text(json.dumps(head, indent=2) + "\n")


def _is_torch_file(path: str) -> bool:
    """A reference-layout checkpoint file (``.ckpt`` / ``.pth`` / ``.pt``) rather than a folder or hub id."""
    return Path(path).is_file() and Path(path).suffix in (".ckpt", ".pth", ".pt", ".bin")
