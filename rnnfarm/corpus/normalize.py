"""Normalization every corpus gets, and the vocabulary chosen from what it produced.

Raw text (bytes are decoded as UTF-8 under the policy) becomes training text: newlines to ``\\n``,
control characters other than tab and newline dropped, Unicode NFC; with a parent vocabulary and the ``drop``
policy, characters it lacks are dropped too, and counted. A document holding a NUL byte is
binary, not text (of text encodings only UTF-16 and UTF-32 have them), and is refused. Documents
arrive in pieces and are normalized piece by piece: a piece is cut after its last newline and the
rest carried over, so the result does not depend on where a plugin cut its pieces.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections import Counter

import numpy as np

from ..errors import UserError
from ..spec import Policy
from .vocab import Vocab, codepoints

# C0 and C1 controls, DEL; tab and newline are kept. As bytes: C0 and DEL are single bytes in UTF-8
# (never inside a multi-byte sequence); a C1 control is \xc2 followed by \x80..\x9f.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_C0_BYTES = bytes([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F])
_C1_BYTES = re.compile(b"\xc2[\x80-\x9f]")
_ESCAPED = re.compile("[\udc80-\udcff]")  # invalid input bytes, as surrogateescape decodes them
CARRY_MAX = 1 << 20  # a line longer than this is normalized in pieces


class Normalizer:
    """Normalizes documents piece by piece and counts the invalid UTF-8 it met."""

    def __init__(self, policy: Policy, keep: Vocab | None = None) -> None:
        self.policy, self.keep = policy, keep  # keep: the only characters the text may hold (the drop policy)
        self.dropped = 0  # characters left out because ``keep`` lacks them
        self.invalid_bytes = 0
        self.invalid_documents = 0
        self._doc = ""
        self._carry = ""
        self._cr = False
        self._strict = codecs.getincrementaldecoder("utf-8")()
        self._lenient = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self._doc_invalid = False

    def start(self, doc_id: str) -> None:
        self._doc, self._carry, self._cr, self._doc_invalid = doc_id, "", False, False
        self._strict.reset()

    def feed(self, piece: str | bytes) -> str:
        """Normalized text of the document so far (what can be settled without the next piece)."""
        if (b"\0" if isinstance(piece, bytes) else "\0") in piece:
            raise UserError(
                f"document {self._doc!r} holds NUL bytes, so it is binary, not text: leave it out of the corpus "
                "(an include pattern) or convert it to UTF-8 text"
            )
        text = self._carry + (self._decode(piece) if isinstance(piece, bytes) else self._clean_str(piece))
        cut = text.rfind("\n") + 1
        if not cut and len(text) < CARRY_MAX:
            self._carry = text
            return ""
        if not cut:
            cut = len(text)
        self._carry = text[cut:]
        return self._compose(text[:cut])

    def finish(self) -> str:
        """The rest of the document."""
        tail = self._decode(b"", final=True) if self._strict.getstate()[0] else ""
        if self._cr:
            tail, self._cr = tail + "\n", False
        text, self._carry = self._carry + tail, ""
        return self._compose(text)

    def _compose(self, text: str) -> str:
        if self.policy.unicode == "NFC" and not text.isascii():
            text = unicodedata.normalize("NFC", text)
        if self.keep is not None and text:
            points = codepoints(text)
            known = self.keep.known(points)
            if not known.all():
                self.dropped += int(len(points) - known.sum())
                text = points[known].tobytes().decode("utf-32-le")
        return text

    def _clean_str(self, text: str) -> str:
        if self._cr:  # a \r ended the last piece: it pairs with a \n that starts this one
            text, self._cr = "\r" + text, False
        if text.endswith("\r"):
            text, self._cr = text[:-1], True
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if _CONTROL.search(text):
            text = _CONTROL.sub("", text)
        return text

    def _decode(self, raw: bytes, final: bool = False) -> str:
        if self._cr:
            raw, self._cr = b"\r" + raw, False
        if raw.endswith(b"\r"):
            raw, self._cr = raw[:-1], True
        if b"\r" in raw:
            raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        raw = raw.translate(None, _C0_BYTES)
        if b"\xc2" in raw:
            raw = _C1_BYTES.sub(b"", raw)
        state = self._strict.getstate()
        try:
            return self._strict.decode(raw, final)
        except UnicodeDecodeError:
            self._lenient.setstate(state)
            text = self._lenient.decode(raw, final)
            self._strict.setstate(self._lenient.getstate())
        return self._invalid(text)

    def _invalid(self, text: str) -> str:
        found = len(_ESCAPED.findall(text))
        self.invalid_bytes += found
        if not self._doc_invalid:
            self._doc_invalid, self.invalid_documents = True, self.invalid_documents + 1
        if self.policy.invalid_utf8 == "error":
            raise UserError(
                f"document {self._doc!r} is not valid UTF-8; set normalize.invalid_utf8 to replace or drop "
                "to build anyway"
            )
        return _ESCAPED.sub("\ufffd" if self.policy.invalid_utf8 == "replace" else "", text)

    def report(self) -> dict:
        return {
            "policy": self.policy.invalid_utf8,
            "bytes": self.invalid_bytes,
            "documents": self.invalid_documents,
        }


class Tally:
    """Symbol counts of written text, from its UTF-8 bytes (vectorized: fast on large texts)."""

    def __init__(self) -> None:
        self.bytes = np.zeros(256, dtype=np.int64)
        self.non_ascii: Counter = Counter()

    def add(self, utf8: np.ndarray) -> None:
        """Count the bytes and the characters of valid UTF-8 (a uint8 array)."""
        if not len(utf8):
            return
        # Byte pairs counted as 16-bit values, then folded: half the elements of a plain bincount.
        even = utf8[: len(utf8) // 2 * 2]
        pairs = np.bincount(even.view(np.uint16), minlength=1 << 16).reshape(256, 256)
        self.bytes += pairs.sum(axis=0) + pairs.sum(axis=1)  # rows: the high (second) byte, columns: the low
        if len(utf8) % 2:
            self.bytes[utf8[-1]] += 1
        lead = np.flatnonzero(utf8 >= 0xC0)
        if not len(lead):
            return
        padded = np.concatenate([utf8, np.zeros(3, dtype=np.uint8)])
        b0, b1, b2, b3 = (padded[lead + i].astype(np.uint32) for i in range(4))
        b1, b2, b3 = b1 & 0x3F, b2 & 0x3F, b3 & 0x3F
        points = np.where(
            b0 < 0xE0,
            ((b0 & 0x1F) << 6) | b1,
            np.where(
                b0 < 0xF0, ((b0 & 0x0F) << 12) | (b1 << 6) | b2, ((b0 & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3
            ),
        )
        values, counts = np.unique(points, return_counts=True)
        for p, c in zip(values.tolist(), counts.tolist(), strict=True):
            self.non_ascii[chr(p)] += c

    def counts(self, level: str) -> Counter:
        """Counts by symbol: characters, or bytes written as ``chr(byte)``."""
        if level == "byte":
            return Counter({chr(b): int(c) for b, c in enumerate(self.bytes.tolist()) if c})
        found = Counter({chr(b): int(c) for b, c in enumerate(self.bytes[:128].tolist()) if c})
        found.update(self.non_ascii)
        return found


def choose_vocab(counts: Counter, policy: Policy) -> tuple[Vocab, int]:
    """The kept symbols (most frequent first under the caps) and how many tokens they replace."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = [s for s, c in ranked if c >= policy.min_count]
    cap = policy.max_vocab
    if cap is not None and len(kept) >= cap and len(ranked) > cap:
        kept = kept[: cap - 1]  # symbols are replaced (by the cap or by min_count): the replacement needs a slot
    kept_set = set(kept)
    dropped = sum(c for s, c in counts.items() if s not in kept_set)
    replacement = None
    if dropped:
        replacement = _checked_replacement(policy)
        if replacement not in kept_set:
            kept.append(replacement)
    return Vocab(tuple(sorted(kept)), replacement, policy.level), dropped


def _checked_replacement(policy: Policy) -> str:
    """The policy's replacement symbol, refused at byte level unless it is one byte."""
    if policy.level == "byte" and ord(policy.replacement) > 127:
        raise UserError(
            f"normalize.replacement {policy.replacement!r} is not one byte: at byte level the vocabulary cap "
            "needs an ASCII replacement symbol, such as '?'"
        )
    return policy.replacement


def inherit_vocab(parent: Vocab, counts: Counter, policy: Policy, unknown: str) -> tuple[Vocab, int, list[str]]:
    """A parent model's vocabulary for a corpus of these symbol counts, under the ``unknown`` policy: the
    vocabulary (the parent's ids first, unchanged), how many tokens its replacement symbol stands for, and the
    symbols added after the parent's.

    ``extend`` adds the symbols the parent lacks (in code point order), under ``min_count`` and ``max_vocab``
    as a corpus's own vocabulary is (the cap counts the parent's symbols); those left out become the
    replacement symbol (the parent's, else the policy's, added even where the parent alone fills the cap).
    ``replace`` maps every symbol the parent lacks to that replacement symbol. ``drop`` keeps the parent's
    vocabulary: the normalizer already left those symbols out.
    """
    have = set(parent.symbols)
    new = {s: c for s, c in counts.items() if s not in have}
    if unknown == "drop" or not new:
        return parent, 0, []
    kept: list[str] = []
    if unknown == "extend":
        ranked = [s for s, c in sorted(new.items(), key=lambda kv: (-kv[1], kv[0])) if c >= policy.min_count]
        room = None if policy.max_vocab is None else max(0, policy.max_vocab - len(parent))
        kept = ranked if room is None else ranked[:room]
        slot = len(kept) < len(new) and parent.replacement is None and policy.replacement not in have | set(kept)
        if slot and room is not None and len(kept) == room:
            kept = kept[: max(0, room - 1)]  # the replacement symbol needs a slot of its own
    replaced = sum(c for s, c in new.items() if s not in set(kept))
    added = sorted(kept)
    replacement = parent.replacement
    if replaced and replacement is None:
        replacement = _checked_replacement(policy)
        if replacement not in have | set(added):
            added.append(replacement)
    return Vocab((*parent.symbols, *added), replacement, parent.level), replaced, added
