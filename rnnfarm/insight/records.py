"""Whole records: samples cut at stop strings, kept when they are new, within a bounded number of tries.

A record is one sample from the prime, cut where a stop string first ends: the record is what was generated
before that stop string (the stop string and the prime are not part of it). A stop string may begin inside
the prime and end in the generated text; one wholly inside the prime does not count. A sample whose length
budget runs out before a stop string ends is incomplete, and an empty record says nothing: both are
discarded, and count as tries. ``rnnfarm sample`` and ``rnnfarm serve`` make records with these rules.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from ..errors import UserError

ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
ESCAPED = {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}  # what would break a record's line


def unescape(text: str) -> str:
    r"""``text`` as typed in a shell: ``\n`` is a newline, ``\t`` a tab, ``\r`` a carriage return, ``\\`` a
    backslash; any other backslash stays as it is."""
    return re.sub(r"\\([ntr\\])", lambda m: ESCAPES[m.group(1)], text)


def escape(record: str) -> str:
    r"""A record on one line: a backslash, newline or carriage return written as ``\\``, ``\n``, ``\r``
    (``unescape`` gives the record back)."""
    return "".join(ESCAPED.get(c, c) for c in record)


def default_tries(count: int) -> int:
    """How many samples ``count`` records may take when none is given: ten per record, and at least 100."""
    return max(100, 10 * count)


def check(stops: Iterable[str], count: int, tries: int | None) -> None:
    if any(not s for s in stops):
        raise UserError("--stop must not be empty: give the text that ends a record, such as '\\n'")
    if tries is not None and tries < count:
        raise UserError(f"--tries {tries} is below -n {count}: each record takes at least one try")


class Cut:
    """One sample being cut: fed the generated text, it says when a stop string ends, and what the record is."""

    def __init__(self, prime: str, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.longest = max(map(len, stops))
        self.seen = prime[-(self.longest - 1) :] if self.longest > 1 else ""  # the prime a stop may begin in
        self.from_prime = len(self.seen)
        self.generated: list[str] = []
        self.ended: str | None = None  # the stop string that ended it

    def feed(self, text: str) -> bool:
        """Add generated text (a character, or a few at once); True once a stop string has ended."""
        for char in text:
            if self.ended is not None:
                return True
            self.generated.append(char)
            self.seen = (self.seen + char)[-self.longest :]
            ending = [s for s in self.stops if self.seen.endswith(s)]
            if ending:
                self.ended = max(ending, key=len)  # the one that begins first
        return self.ended is not None

    def record(self) -> str | None:
        """The record, or None where the budget ran out before a stop string ended."""
        if self.ended is None:
            return None
        return "".join(self.generated[: max(0, len(self.generated) - len(self.ended))])


class Keeper:
    """Which records are kept (non-empty; unique and novel where asked), counting what was discarded and why."""

    def __init__(self, *, unique: bool = False, novel: Callable[[str], bool] | None = None) -> None:
        self.unique, self.novel = unique, novel
        self.kept: set[str] = set()
        self.tries = 0
        self.discarded: Counter[str] = Counter()

    def offer(self, record: str | None) -> bool:
        self.tries += 1
        if record is None:
            why = "incomplete"
        elif not record:
            why = "empty"
        elif self.unique and record in self.kept:
            why = "repeated"
        elif self.novel is not None and not self.novel(record):
            why = "in the train text"
        else:
            self.kept.add(record)
            return True
        self.discarded[why] += 1
        return False

    def shortfall(self, found: int, wanted: int) -> UserError:
        why = ", ".join(f"{n} {reason}" for reason, n in self.discarded.most_common()) or "none discarded"
        return UserError(
            f"found {found} of {wanted} records in {self.tries} tries ({why}): "
            "raise --tries or --length, or ask for fewer"
        )


class Search:
    """A search for ``count`` kept records within ``tries`` samples: ``cut()`` starts a sample, ``offer(cut)``
    ends it and returns its record if kept. One rule for every caller, whatever draws the samples."""

    def __init__(self, *, prime: str, stops: tuple[str, ...], count: int, keeper: Keeper, tries: int) -> None:
        self.prime, self.stops, self.count, self.keeper, self.tries = prime, stops, count, keeper, tries
        self.found = 0

    def going(self) -> bool:
        return self.found < self.count and self.keeper.tries < self.tries

    def cut(self) -> Cut:
        return Cut(self.prime, self.stops)

    def offer(self, cut: Cut) -> str | None:
        record = cut.record()
        if self.keeper.offer(record):
            self.found += 1
            return record
        return None

    def shortfall(self) -> UserError | None:
        """The one line that ends a search which found fewer records than asked (None if it found them all)."""
        return self.keeper.shortfall(self.found, self.count) if self.found < self.count else None


def records(search: Search, samples: Callable[[], Iterator[str]]) -> Iterator[str]:
    """The kept records of ``search``, as they are found; each ``samples()`` call draws one sample, read only as
    far as its first stop string. Fewer than asked come back when the tries run out: ``search.shortfall()``."""
    while search.going():
        cut = search.cut()
        for text in samples():
            if cut.feed(text):
                break
        if (record := search.offer(cut)) is not None:
            yield record
