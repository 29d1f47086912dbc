"""The hallucination view of ADIFF §6 / Figure 5.

The audio encoder stays frozen, so its event head still says which sound events are present, and when. One PNG puts
the generated difference explanation on top and, for each of the two audios, its log-mel spectrogram with the top-k
event presence probabilities over time below it, on the same time axis. A reader can then spot an event the
explanation invents or misses (ADIFF's example: a whip in audio 2 that the explanation leaves out).

- ``event_probabilities(encoder, mel)``: frame-level probabilities ``(T', K)`` for one clip covering exactly the
  clip's duration (see its docstring for clips shorter or longer than the encoder's ``frames``).
- ``top_events(probs, class_names, k)``: the k classes with the highest peak probability.
- ``hallucination_figure(...)``: draws and writes the PNG atomically; returns a ``HallucinationFigure`` (path-like)
  with the panel titles and legend entries, so callers and tests can check what was drawn.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from audiopair.evaluate.classify import save_figure

TEXT_TITLE = "Generated explanation"


# ----------------------------------------------------------------------------------------- probabilities
def event_probabilities(encoder, mel: np.ndarray) -> np.ndarray:
    """Frame-level event probabilities ``(T', K)`` of one ``(n_mels, T)`` dB log-mel clip from the frozen encoder.

    Runs in eval mode under ``torch.no_grad`` (the encoder's train/eval mode is restored afterwards). The encoder
    crops or repeat-pads its input to ``encoder.frames``; so that the returned frames span exactly the clip:

    - a clip shorter than ``frames`` is repeat-padded as the encoder would, and only the output frames covering the
      real clip are kept (``round(T' * T / frames)``, at least one);
    - a clip longer than ``frames`` is run as consecutive windows of ``frames`` (one batch) and the windows' frames
      concatenated, the last window trimmed as above.

    With ``encoder.frames = None`` the whole clip is resized into the encoder at once.
    """
    import torch

    x = np.asarray(mel, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"event_probabilities expects one (n_mels, frames) log-mel, got shape {x.shape}")
    if x.shape[1] < 1:
        raise ValueError("event_probabilities got a log-mel with no frames")
    frames = encoder.frames
    t = x.shape[1]
    if frames is None:
        windows, lengths = [x], [t]
    else:
        windows, lengths = [], []
        for s in range(0, t, frames):
            w = x[:, s : s + frames]
            lengths.append(w.shape[1])
            if w.shape[1] < frames:
                w = np.tile(w, (1, -(-frames // w.shape[1])))[:, :frames]  # the encoder's own repeat padding
            windows.append(w)
    param = next(encoder.parameters())
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            batch = torch.from_numpy(np.stack(windows)).to(device=param.device)
            probs = encoder(batch).frame_probs.float().cpu().numpy()  # (W, T', K)
    finally:
        encoder.train(was_training)
    if frames is None:
        return probs[0]
    n = probs.shape[1]
    keep = [max(1, min(n, round(n * length / frames))) for length in lengths]
    return np.concatenate([p[:k] for p, k in zip(probs, keep)], axis=0)


def top_events(probs: np.ndarray, class_names: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` classes with the highest maximum probability over time, highest first (ties: lower class index)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"top_events expects (frames, classes) probabilities, got shape {p.shape}")
    if p.shape[1] != len(class_names):
        raise ValueError(f"probabilities have {p.shape[1]} classes but {len(class_names)} class names were given")
    peak = p.max(axis=0) if p.shape[0] else np.zeros(p.shape[1])
    order = np.argsort(-peak, kind="stable")[: max(0, k)]
    return [(class_names[i], float(peak[i])) for i in order]


# ----------------------------------------------------------------------------------------- figure
@dataclass
class HallucinationFigure:
    """What ``hallucination_figure`` drew. Path-like (``open(fig)``, ``Path(fig)`` work)."""

    path: Path
    panels: list[str] = field(default_factory=list)  # axes titles, top to bottom
    legends: list[list[str]] = field(default_factory=list)  # class names in each probability panel's legend
    top: list[list[tuple[str, float]]] = field(default_factory=list)  # (class, peak probability) per audio

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)


def _legend_label(name: str, peak: float, width: int = 22, max_lines: int = 3) -> str:
    """``name (0.87)`` wrapped to fit the right margin (long AudioSet names span up to three lines)."""
    lines = textwrap.wrap(name, width) or [""]
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [textwrap.shorten(" ".join(lines[max_lines - 1 :]), width, placeholder="…")]
    tail = f"({peak:.2f})"
    if len(lines[-1]) + 1 + len(tail) <= width + 4:
        lines[-1] += " " + tail
    else:
        lines.append(tail)
    return "\n".join(lines)


def hallucination_figure(
    explanation: str,
    audio1_mel: np.ndarray,
    audio2_mel: np.ndarray,
    probs1: np.ndarray,
    probs2: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    sample_rate: int,
    hop_length: int,
    top_k: int = 3,
    title: str | None = None,
    dpi: int = 100,
) -> HallucinationFigure:
    """Write the ADIFF Figure 5 style view to ``path`` (PNG, atomically) and return what was drawn.

    Layout, top to bottom: the explanation (wrapped); audio 1's log-mel spectrogram (seconds x mel bin, dB colour
    bar on the right); its ``top_k`` event probabilities over time (classes with the highest peak, legend on the
    right, y 0..1); the same two panels for audio 2. Each audio's probability frames are spread evenly over its
    spectrogram's duration (``frames * hop_length / sample_rate``) and the two panels share that time axis.
    """
    from matplotlib.figure import Figure

    mels = [np.asarray(m, dtype=np.float32) for m in (audio1_mel, audio2_mel)]
    probs = [np.asarray(p, dtype=np.float32) for p in (probs1, probs2)]
    for i, (m, p) in enumerate(zip(mels, probs), 1):
        if m.ndim != 2 or m.shape[1] < 1:
            raise ValueError(f"audio{i}_mel must be (n_mels, frames), got shape {m.shape}")
        if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] != len(class_names):
            raise ValueError(f"probs{i} must be (frames, {len(class_names)}) for {len(class_names)} class names, "
                             f"got shape {p.shape}")
    if sample_rate <= 0 or hop_length <= 0:
        raise ValueError(f"sample_rate ({sample_rate}) and hop_length ({hop_length}) must be positive")

    text = " ".join(str(explanation or "").split()) or "(empty explanation)"
    lines = textwrap.wrap(text, width=120)
    if len(lines) > 8:
        lines = lines[:7] + [textwrap.shorten(" ".join(lines[7:]), width=116, placeholder=" …")]
    # Explicit layout in inches (top to bottom) so panel sizes and gaps do not depend on the text length.
    line_h = 11 * 1.4 / 72  # font size x line spacing, in inches
    text_h = 0.1 + line_h * len(lines)
    spec_h, prob_h = 2.3, 1.4
    head = 0.2 + (0.35 if title else 0.0)  # margin (+ suptitle)
    title_gap, inner_gap, audio_gap, foot = 0.35, 0.35, 0.8, 0.55
    height = head + title_gap + text_h + 2 * (audio_gap + spec_h + inner_gap + prob_h) + foot - 0.4
    width, left, right = 12.0, 0.85, 2.5  # right margin holds the colour bars and legends
    fig = Figure(figsize=(width, height))
    cursor = head + title_gap

    def axes(h: float):
        nonlocal cursor
        rect = (left / width, 1 - (cursor + h) / height, (width - left - right) / width, h / height)
        cursor += h
        return fig.add_axes(rect)

    if title:
        fig.suptitle(title, fontsize=14, fontweight="bold", y=1 - 0.15 / height, va="top")

    panels, legends, tops = [], [], []
    ax_text = axes(text_h)
    ax_text.set_axis_off()
    ax_text.set_title(TEXT_TITLE, loc="left", fontsize=12, fontweight="bold")
    ax_text.text(0.0, 1.0, "\n".join(lines), transform=ax_text.transAxes, va="top", ha="left", fontsize=11,
                 linespacing=1.4)
    panels.append(TEXT_TITLE)

    colours = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
               "tab:cyan", "tab:gray"]
    for a, (m, p) in enumerate(zip(mels, probs), 1):
        duration = m.shape[1] * hop_length / sample_rate
        cursor += audio_gap - (0.4 if a == 1 else 0.0)  # audio 2 sits below audio 1's time axis label
        ax_s = axes(spec_h)
        im = ax_s.imshow(m, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                         extent=(0.0, duration, 0.0, m.shape[0]))
        t_spec = f"Audio {a}: log-mel spectrogram"
        ax_s.set_title(t_spec, loc="left", fontsize=11)
        ax_s.set_ylabel("Mel bin")
        ax_s.tick_params(labelbottom=False)
        cax = ax_s.inset_axes((1.01, 0.0, 0.015, 1.0))
        fig.colorbar(im, cax=cax).set_label("dB", fontsize=9)
        panels.append(t_spec)

        cursor += inner_gap
        ax_p = axes(prob_h)
        ax_p.sharex(ax_s)
        chosen = top_events(p, class_names, top_k)
        idx = {n: i for i, n in enumerate(class_names)}
        edges = np.linspace(0.0, duration, p.shape[0] + 1)  # each encoder frame covers an equal slice of the clip
        for c, (name, peak) in enumerate(chosen):
            ax_p.stairs(p[:, idx[name]], edges, baseline=None, color=colours[c % len(colours)], lw=1.8,
                        label=_legend_label(name, peak))
        ax_p.set_ylim(0.0, 1.02)
        ax_p.set_xlim(0.0, duration)
        ax_p.set_yticks([0.0, 0.5, 1.0])
        ax_p.grid(True, alpha=0.3)
        ax_p.set_ylabel("Probability")
        ax_p.set_xlabel("Time (s)")
        t_prob = f"Audio {a}: top-{len(chosen)} event probabilities"
        ax_p.set_title(t_prob, loc="left", fontsize=11)
        if chosen:
            ax_p.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False,
                        title="event (peak)", title_fontsize=8, alignment="left")
        panels.append(t_prob)
        legends.append([n for n, _ in chosen])
        tops.append(chosen)

    out = save_figure(fig, path, dpi)
    return HallucinationFigure(path=out, panels=panels, legends=legends, top=tops)
