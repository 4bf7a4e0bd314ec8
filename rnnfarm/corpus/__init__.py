"""Corpora: the plugin contract (``Corpus``, ``CorpusOptions``, the ``register_corpora`` hook), fetching
sources, normalizing text, choosing the vocabulary, and writing Arrow shards under one manifest; and
describing what was built. It may import only the shared top level (spec, storage, log, errors, redact).
"""

from .base import Corpus, CorpusOptions, Document, Fetched, NoOptions, Source, SourceFile
from .hookspecs import hookimpl

__all__ = ["Corpus", "CorpusOptions", "Document", "Fetched", "NoOptions", "Source", "SourceFile", "hookimpl"]
