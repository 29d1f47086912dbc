"""ADIFF's model variants, one table: what each changes in the network (ADIFF section 5.1).

A variant is a set of switches the model code reads (``audiopair.models.adiff``); nothing else compares variant
names. Adding one is a row here (and its test): ``config`` takes its valid names from this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Variant:
    """What a variant changes, each switch against the full ADIFF model.

    ``random_encoder``: the audio encoder is randomly initialised and frozen (never pretrained, never trained), and
    cached embeddings of a pretrained encoder are refused. ``separator``: the separator token between the two audio
    prefixes. ``cross_projection``: the transformer over the whole prefix (App. J). Prefix length in LM positions:
    ``2 * prefix_len + prompt_len + separator``."""

    name: str
    source: str  # where the paper defines it
    random_encoder: bool = False
    separator: bool = True
    cross_projection: bool = True


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("adiff", "section 3: [p1, sep, p2, text] -> cross-projection -> LM"),
    Variant("baseline", "section 5.1: [p1, p2, text] -> LM, no separator and no cross-projection",
            separator=False, cross_projection=False),
    Variant("language_only", "section 5.1, Exp. A: adiff with a random, frozen audio encoder", random_encoder=True),
)}

VariantName = Literal[tuple(VARIANTS)]  # type: ignore[valid-type]  # the config's allowed values


def variant(name: str) -> Variant:
    """The registered variant ``name``; ValueError listing the known ones otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown ADIFF variant {name!r}; known: {', '.join(VARIANTS)}") from None
