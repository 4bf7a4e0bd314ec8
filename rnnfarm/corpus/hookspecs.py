"""The hook a corpus plugin implements. Plugins register under the ``rnnfarm`` entry-point group."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .base import Corpus

hookspec = pluggy.HookspecMarker("rnnfarm")
hookimpl = pluggy.HookimplMarker("rnnfarm")


@hookspec
def register_corpora(register: Callable[[Corpus], None]) -> None:
    """Call ``register(corpus)`` once for each corpus this plugin provides: an instance of a subclass of
    ``rnnfarm.corpus.Corpus`` (its name, version, ``Options`` subclassing ``CorpusOptions``, sources and
    documents). plugins/README.md walks through one."""
