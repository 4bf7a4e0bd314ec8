"""Normalization every corpus gets: Unicode NFC, newlines to \\n, control characters dropped."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..vocab import Vocab, codepoints

# C0 and C1 controls, DEL; tab and newline are kept.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class Policy(BaseModel):
    """How raw text becomes training text, and how the vocabulary is chosen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unicode: Literal["NFC", "none"] = "NFC"
    max_vocab: Annotated[int, Field(ge=2)] | None = None
    min_count: Annotated[int, Field(ge=1)] = 1
    replacement: Annotated[str, Field(min_length=1, max_length=1)] = "\ufffd"


def normalize(text: str, policy: Policy) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if policy.unicode == "NFC":
        text = unicodedata.normalize("NFC", text)
    return _CONTROL.sub("", text)


def count(text: str, into: Counter) -> None:
    """Add a text's character counts to a counter (vectorized: fast on large texts)."""
    if not text:
        return
    points, counts = np.unique(codepoints(text), return_counts=True)
    for p, c in zip(points.tolist(), counts.tolist(), strict=True):
        into[chr(p)] += c


def choose_vocab(counts: Counter, policy: Policy) -> tuple[Vocab, int]:
    """The kept symbols (most frequent first under the caps) and how many characters they replace."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = [s for s, c in ranked if c >= policy.min_count]
    if policy.max_vocab is not None and len(kept) > policy.max_vocab:
        kept = kept[: policy.max_vocab - 1]
    dropped = sum(c for s, c in counts.items() if s not in set(kept))
    replacement = None
    if dropped:
        replacement = policy.replacement
        if replacement not in kept:
            kept.append(replacement)
    return Vocab(tuple(sorted(kept)), replacement), dropped
