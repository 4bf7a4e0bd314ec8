"""n-gram baselines: the Kneser-Ney model against a direct implementation of its formulas, proper distributions,
streaming that does not depend on where chunks end, the figures kept in the corpus folder, and `rnnfarm baseline`."""

from __future__ import annotations

import math
import shutil
from collections import Counter, defaultdict

import numpy as np
import pytest
import s3fs
from click.testing import CliRunner

from rnnfarm.cli import cli
from rnnfarm.corpus import shards
from rnnfarm.corpus.vocab import Vocab
from rnnfarm.insight import ngram
from rnnfarm.insight.ngram import KneserNey
from rnnfarm.storage import Store


@pytest.fixture(scope="module")
def tiny(shakespeare):
    """The vocabulary and train/val ids of tiny Shakespeare."""
    vocab = Vocab.from_json(shakespeare.manifest["vocab"])
    ids = {s: vocab.encode(shards.read_split(shakespeare.folder, shakespeare.manifest, s)) for s in ("train", "val")}
    return vocab, ids["train"], ids["val"]


@pytest.fixture
def corpus_copy(shakespeare, tmp_path):
    """A copy of the built tiny-Shakespeare folder, so the figures a test stores stay its own."""
    shutil.copytree(shakespeare.folder.url, tmp_path / "corpus")
    return Store.at(str(tmp_path / "corpus"))


class BruteForce:
    """Interpolated Kneser-Ney written out directly from its formulas, with dictionaries of tuples."""

    def __init__(self, train: list[int], vocab_size: int, order: int) -> None:
        self.V, self.N, self.start = vocab_size, order, vocab_size  # the start symbol pads each split
        padded = [self.start] * (order - 1) + train
        raw = Counter()
        for i in range(order - 1, len(padded)):
            for k in range(1, order + 1):
                raw[tuple(padded[i - k + 1 : i + 1])] += 1
        continuation = Counter(gram[1:] for gram in raw if len(gram) > 1)  # distinct symbols before each n-gram
        self.follow = {"raw": defaultdict(dict), "continuation": defaultdict(dict)}
        self.discount = {}
        for kind, counts in (("raw", raw), ("continuation", continuation)):
            for gram, c in counts.items():
                self.follow[kind][gram[:-1]][gram[-1]] = c
            for k in range(1, order + 1):
                values = [c for gram, c in counts.items() if len(gram) == k]
                n1, n2 = values.count(1), values.count(2)
                self.discount[kind, k] = n1 / (n1 + 2 * n2) if n1 else 0.5

    def p(self, symbol: int, history: tuple[int, ...], k: int) -> float:
        if k == 0:
            return 1 / self.V
        context = history[len(history) - (k - 1) :] if k > 1 else ()
        lower = self.p(symbol, history, k - 1)
        kind = "raw" if k == self.N else "continuation"
        followers = self.follow[kind].get(context, {})
        total = sum(followers.values())
        if total == 0:
            return lower
        d = self.discount[kind, k]
        return (max(followers.get(symbol, 0) - d, 0) + d * len(followers) * lower) / total

    def nats(self, text: list[int]) -> float:
        padded = [self.start] * (self.N - 1) + text
        return -sum(
            math.log(self.p(padded[i], tuple(padded[i - self.N + 1 : i]), self.N))
            for i in range(self.N - 1, len(padded))
        )


def test_the_model_matches_a_direct_implementation_of_interpolated_kneser_ney_on_tiny_shakespeare(tiny):
    vocab, train, val = tiny
    train, val = train[:3000], val[:800]
    model = KneserNey([train], vocab_size=len(vocab), max_order=6)
    nats, tokens = model.score([val])
    assert tokens == len(val)
    for order in range(1, 7):
        direct = BruteForce(train.tolist(), len(vocab), order)
        assert nats[order] == pytest.approx(direct.nats(val.tolist()), rel=1e-10), order
        for history in ([], val[:2].tolist(), val[100:140].tolist()):
            expected = [direct.p(s, tuple([len(vocab)] * order + history), order) for s in range(len(vocab))]
            assert model.distribution(history, order) == pytest.approx(expected, rel=1e-10)


def test_probabilities_sum_to_one_over_the_vocabulary_for_seen_unseen_and_start_contexts(tiny):
    vocab, train, val = tiny
    model = KneserNey([train[:50_000]], vocab_size=len(vocab), max_order=8)
    rng = np.random.default_rng(0)
    contexts = [[], val[:3].tolist()]
    contexts += [val[i : i + 12].tolist() for i in rng.integers(0, len(val) - 12, 10)]  # mostly seen
    contexts += [rng.integers(0, len(vocab), 12).tolist() for _ in range(10)]  # random symbols: unseen
    for context in contexts:
        for order in range(1, 9):
            p = model.distribution(context, order)
            assert p.shape == (len(vocab),) and (p > 0).all()
            assert p.sum() == pytest.approx(1.0, abs=1e-12), (order, context)


def test_counts_and_scores_do_not_depend_on_where_the_stream_is_cut(tiny, monkeypatch):
    vocab, train, val = tiny
    train, val = train[:20_000], val[:5_000]
    whole = KneserNey([train], vocab_size=len(vocab), max_order=7).score([val])
    monkeypatch.setattr(ngram, "CHUNK", 997)  # many chunks inside each piece as well
    cuts = [0, 1, 2, 5000, 5001, 13_333, len(train)]
    pieces = [train[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    cut = KneserNey(pieces, vocab_size=len(vocab), max_order=7).score([val[:7], val[7:2500], val[2500:]])
    assert cut[1] == whole[1]
    for order in range(1, 8):
        assert cut[0][order] == pytest.approx(whole[0][order], rel=1e-12)


def test_higher_orders_beat_order_one_on_tiny_shakespeare_and_the_figures_are_kept(corpus_copy, tiny):
    _, train, val_ids = tiny
    assert ngram.cached(corpus_copy) is None
    result = ngram.baseline(corpus_copy, orders=[1, 2, 3, 5])
    val = {k: v["val"] for k, v in result.nats.items()}
    frequencies = np.bincount(train, minlength=val_ids.max() + 1) / len(train)
    assert val[1] == pytest.approx(-np.log(frequencies[val_ids]).mean(), abs=1e-4)  # as plain unigram frequencies
    assert val[5] < val[3] < val[2] < val[1]
    assert result.tokens == {"train": 1_003_854, "val": 111_540}
    assert result.best() == (5, val[5])
    assert ngram.cached(corpus_copy).nats == result.nats


def test_stored_figures_are_read_back_and_extended_not_refit(corpus_copy):
    ngram.baseline(corpus_copy, orders=[1, 2])
    stored = (corpus_copy / ngram.CACHE).read_json()
    stored["orders"]["2"]["val"] = 9.0  # a marker: only a read of the stored figures gives it back
    (corpus_copy / ngram.CACHE).write_json(stored)
    assert ngram.baseline(corpus_copy, orders=[2]).nats == {2: {"val": 9.0}}
    extended = ngram.baseline(corpus_copy, orders=[3])
    assert set(ngram.cached(corpus_copy).nats) == {1, 2, 3} and extended.nats[3]["val"] < 9.0
    assert ngram.baseline(corpus_copy, orders=[2], refit=True).nats[2]["val"] < 3.0
    stored = (corpus_copy / ngram.CACHE).read_json()
    (corpus_copy / ngram.CACHE).write_json({**stored, "version": ngram.VERSION + 1})
    assert ngram.cached(corpus_copy) is None  # figures of another version of the model are not trusted


def test_the_cli_prints_each_orders_val_figures_for_a_built_corpus(corpus_copy):
    result = CliRunner().invoke(cli, ["baseline", corpus_copy.url, "-n", "1", "-n", "4"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("n-gram baselines (interpolated Kneser-Ney")
    assert lines[1].split() == ["ORDER", "val", "nats/char", "val", "bits/char"]
    figures = {int(row.split()[0]): [float(x) for x in row.split()[1:]] for row in lines[2:4]}
    assert sorted(figures) == [1, 4] and figures[4][0] < figures[1][0]
    assert figures[1][1] == pytest.approx(figures[1][0] / math.log(2), abs=1e-4)
    assert lines[4].startswith("best on val: order 4, ")
    assert (corpus_copy / ngram.CACHE).exists()


def test_the_cli_fits_a_corpus_on_s3_and_keeps_the_figures_there(shakespeare, s3, monkeypatch):
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    url = "s3://rnnfarm-test/corpora/shakespeare/tiny"
    Store.at(url).upload(shakespeare.folder.url)
    result = CliRunner().invoke(cli, ["baseline", url, "-n", "3"])
    assert result.exit_code == 0, result.output
    assert f"figures kept at {url}/{ngram.CACHE}" in result.output
    assert ngram.cached(Store.at(url)).nats == ngram.baseline(Store.at(url), orders=[3]).nats


def test_the_cli_refuses_an_order_out_of_range_and_a_folder_without_a_corpus(corpus_copy, tmp_path):
    result = CliRunner().invoke(cli, ["baseline", corpus_copy.url, "-n", "33"])
    assert result.exit_code == 2 and result.output.strip() == "error: n-gram orders must be 1 to 32 (got 33)"
    result = CliRunner().invoke(cli, ["baseline", str(tmp_path)])
    assert result.exit_code == 2 and "no manifest.json here" in result.output
