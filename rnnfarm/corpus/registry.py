"""The one plugin registry: a pluggy manager loading the ``rnnfarm`` entry-point group."""

from __future__ import annotations

import re
from functools import cache

import pluggy

from ..errors import UserError
from ..spec import NAME
from . import hookspecs
from .base import Corpus

ENTRY_POINT_GROUP = "rnnfarm"


@cache
def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("rnnfarm")
    pm.add_hookspecs(hookspecs)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


def corpora() -> dict[str, Corpus]:
    """Every registered corpus by name."""
    found: dict[str, Corpus] = {}

    def register(corpus: Corpus) -> None:
        if not isinstance(corpus.name, str) or not re.match(NAME, corpus.name):
            raise UserError(
                f"a plugin registers a corpus named {corpus.name!r} ({type(corpus).__module__}): a corpus name is "
                "letters, digits, '.', '_' or '-', as it names a folder on storage; fix or uninstall that plugin"
            )
        if corpus.name in found:
            raise UserError(f"corpus {corpus.name!r} is registered by two plugins: uninstall one of them")
        found[corpus.name] = corpus

    plugin_manager().hook.register_corpora(register=register)
    return found


def distribution(corpus: Corpus) -> str:
    """The installed distribution whose plugin module defines this corpus."""
    module = type(corpus).__module__
    for plugin, dist in plugin_manager().list_plugin_distinfo():
        if getattr(plugin, "__name__", None) == module:
            return f"{dist.project_name} {dist.version}"
    return "(registered in-process)"


def get(name: str) -> Corpus:
    known = corpora()
    if name not in known:
        names = ", ".join(sorted(known)) or "none"
        raise UserError(f"unknown corpus plugin {name!r} (installed: {names}); `rnnfarm corpus list` shows them")
    return known[name]
