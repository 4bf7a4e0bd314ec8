"""Corpus plugins and the pipeline that turns their text into Arrow shards."""

from .base import Corpus, Document, Fetched, NoOptions, Source, SourceFile
from .hookspecs import hookimpl

__all__ = ["Corpus", "Document", "Fetched", "NoOptions", "Source", "SourceFile", "hookimpl"]
