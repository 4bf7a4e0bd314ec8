"""Character vocabularies: symbols sorted by code point (as char-rnn and nanoGPT order them)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import UserError


def codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


@dataclass(frozen=True)
class Vocab:
    symbols: tuple[str, ...]
    replacement: str | None = None
    _points: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        points = np.array([ord(s) for s in self.symbols], dtype=np.uint32)
        if len(points) and np.any(np.diff(points.astype(np.int64)) <= 0):
            raise ValueError("vocabulary symbols must be single characters in strictly increasing order")
        object.__setattr__(self, "_points", points)

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if len(self) <= 256 else np.uint16 if len(self) <= 65536 else np.int32)

    def encode(self, text: str, strict: bool = False) -> np.ndarray:
        """Token ids for a text; characters outside the vocabulary become the replacement symbol."""
        points = codepoints(text)
        ids = np.searchsorted(self._points, points)
        ids_clipped = np.minimum(ids, len(self) - 1)
        unknown = self._points[ids_clipped] != points
        if unknown.any():
            if strict or self.replacement is None:
                bad = sorted({chr(p) for p in points[unknown][:1000]})
                shown = "".join(bad[:20])
                raise UserError(
                    f"{int(unknown.sum())} character(s) outside the model's vocabulary: {shown!r}; "
                    "use only characters the corpus had"
                )
            ids_clipped[unknown] = self.symbols.index(self.replacement)
        return ids_clipped.astype(self.dtype)

    def decode(self, ids) -> str:
        return "".join(self.symbols[int(i)] for i in ids)

    def to_json(self) -> dict:
        return {"symbols": "".join(self.symbols), "replacement": self.replacement}

    @classmethod
    def from_json(cls, data: dict) -> Vocab:
        return cls(tuple(data["symbols"]), data.get("replacement"))
