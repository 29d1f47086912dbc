"""A small Python API in the shape of ADIFF's ``wrapper.py``, so users of the reference code can switch:

    from audiopair import explain
    model = explain.load("work/models/adiff_base")            # any ADIFF folder: imported or trained here
    texts = model.generate([["a.wav", "b.wav", "explain the difference between the two audio in detail"]],
                           max_len=300)

``generate`` returns one text per ``[audio1, audio2, prompt]`` triple. ``decoding`` is a ``DecodingConfig`` field
dict or strategy name; the default, "reference", is the wrapper's own loop and stop rule (its text keeps the stop
token, a trailing space). Audio goes through the model's own front end (``audiopair.evaluate.generate
.FileGenerator``): any format, rate or channel count that ``audiopair.audio`` reads.
"""

from __future__ import annotations

from pathlib import Path

from audiopair.config import DecodingConfig
from audiopair.evaluate.generate import FileGenerator


class Explainer:
    def __init__(self, folder: str | Path, device: str | None = None, front_end: dict | None = None):
        self.generator = FileGenerator(folder, front_end, DecodingConfig(strategy="reference"), device)

    @property
    def model(self):
        return self.generator.model

    def generate(self, examples: list[list[str]], max_len: int = 300, decoding: str | dict | None = None,
                 batch_size: int = 8) -> list[str]:
        """Texts for ``[[audio1, audio2, prompt], ...]``; ``max_len`` new tokens at most (the wrapper's default 300).
        Raises ``ValueError`` for a malformed triple and ``audiopair.audio.AudioError`` for an unreadable file."""
        for i, ex in enumerate(examples):
            if not isinstance(ex, (list, tuple)) or len(ex) != 3:
                raise ValueError(f"example {i}: expected [audio1, audio2, prompt], got {ex!r}")
        if isinstance(decoding, str):
            decoding = {"strategy": decoding}
        self.generator.decoding = DecodingConfig.model_validate({"strategy": "reference", **(decoding or {}),
                                                                 "max_new_tokens": max_len})
        texts = []
        for k in range(0, len(examples), batch_size):
            chunk = examples[k : k + batch_size]
            mels = [(self.generator.mel(str(a)), self.generator.mel(str(b))) for a, b, _ in chunk]
            texts += self.generator.texts(mels, [str(p) for _, _, p in chunk], [str(k)] * len(chunk))
        return texts


def load(folder: str | Path, device: str | None = None, front_end: dict | None = None) -> Explainer:
    """The ADIFF model in ``folder`` (``save_checkpoint`` / ``jobs/import_adiff.py`` output), ready to explain."""
    return Explainer(folder, device, front_end)
