"""Whole records and the novelty meter: `rnnfarm sample --stop/-n/--unique/--novel/--novelty`, on real corpora
and real trained models (tiny Shakespeare, and a names cut trained here)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rnnfarm.cli import cli
from rnnfarm.corpus import novelty, shards
from rnnfarm.corpus.build import build
from rnnfarm.insight.records import Cut, escape, unescape
from rnnfarm.insight.sample import characters, load
from rnnfarm.storage import Store

from .conftest import make_spec

NAMES = {"first_year": 1880, "last_year": 1889, "sex": "F", "min_count": 100}


def sample(checkpoint, *args: str, code: int = 0):
    result = CliRunner().invoke(cli, ["sample", str(checkpoint), *args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def brute_force(sample: str, train: str, grams: set[str]) -> tuple[int, float | None]:
    """The longest substring of ``sample`` found in ``train``, by trying every one, and the share of its
    n-grams in the set of the train text's n-grams."""
    longest = max(
        (j - i for i in range(len(sample)) for j in range(i + 1, len(sample) + 1) if sample[i:j] in train), default=0
    )
    n = novelty.NGRAM
    mine = [sample[i : i + n] for i in range(len(sample) - n + 1)]
    return longest, (sum(g in grams for g in mine) / len(mine) if mine else None)


@pytest.fixture(scope="module")
def names_run(tmp_path_factory):
    """A 1x64 LSTM trained in-process for 1500 steps on the girls' names of 1880-1889 given to 100 babies or more."""
    from rnnfarm.engine.loop import Job, LocalSession, train
    from rnnfarm.layout import Run

    root = tmp_path_factory.mktemp("names")
    job = make_spec(
        str(root / "storage"),
        corpus={"name": "names", "options": NAMES},
        model={"layers": 1, "hidden": 64, "embedding": 16},
        train={"steps": 1500, "eval_every": 750, "seq_len": 16, "batch_size": 16},
    )
    built = build(Store.at(job.storage), job.corpus)
    train(Job(job, built.folder, Run(Store.at(job.storage) / "runs" / "n").trial()), LocalSession(root / "ckpt"))
    return root / "ckpt" / "checkpoint-001500", built


def test_the_meter_agrees_with_a_brute_force_search_on_real_text(shakespeare, trained_checkpoint):
    index = novelty.open_index(shakespeare.folder)
    train = shards.read_split(shakespeare.folder, shakespeare.manifest, "train")
    val = shards.read_split(shakespeare.folder, shakespeare.manifest, "val")
    grams = {train[i : i + novelty.NGRAM] for i in range(len(train) - novelty.NGRAM + 1)}
    model, vocab, _ = load(str(trained_checkpoint))
    import torch

    drawn = "".join(characters(model, vocab, "\n", 60, generator=torch.Generator().manual_seed(3)))
    for text in [val[5000:5060], val[:45], drawn, "zzzq", "First Citizen:\nBefore we proceed", "x" * 3]:
        meter = index.meter(text)
        assert (meter.longest, meter.ngram_share) == brute_force(text, train, grams), text
        assert text[meter.at : meter.at + meter.longest] == meter.copied
        if meter.longest:
            assert train[meter.train_at : meter.train_at + meter.longest] == meter.copied
    assert index.meter(train[:300]).longest == 300 and index.meter(train[:300]).train_at == 0


def test_where_a_copy_is_counts_characters_not_bytes_in_a_text_of_many_byte_characters(shakespeare, tmp_path):
    """Tiny Shakespeare's first 300,000 characters with its vowels accented (two and three UTF-8 bytes each),
    as a corpus of its own: offsets past several index blocks of 64 KiB."""
    text = shards.read_split(shakespeare.folder, shakespeare.manifest, "train")[:300_000]
    accented = text.translate(str.maketrans({"a": "á", "e": "é", "o": "ö", "u": "ű", "'": "’"}))
    (tmp_path / "accented.txt").write_text(accented, encoding="utf-8")
    spec = make_spec(
        str(tmp_path / "storage"), corpus={"name": "files", "options": {"url": str(tmp_path / "accented.txt")}}
    )
    built = build(Store.at(spec.storage), spec.corpus)
    train = shards.read_split(built.folder, built.manifest, "train")
    index = novelty.open_index(built.folder)
    for start in (10, 70_000, 150_000, len(train) - 200):
        piece = train[start : start + 150]
        meter = index.meter("§" + piece + "§")
        assert meter.longest == len(piece) and train[meter.train_at : meter.train_at + meter.longest] == piece


def test_the_index_is_built_once_per_fingerprint_beside_the_corpus(shakespeare):
    novelty.open_index(shakespeare.folder)
    folder = shakespeare.folder / novelty.FOLDER
    info = (folder / novelty.INDEX).read_json()
    assert info["fingerprint"] == shakespeare.fingerprint and not info["partial"]
    before = {item.name: item.fs.info(item.path)["mtime"] for item in folder.list()}
    novelty.open_index(shakespeare.folder)
    assert {item.name: item.fs.info(item.path)["mtime"] for item in folder.list()} == before


def test_a_split_above_the_limit_is_indexed_as_a_prefix_which_the_meter_says_and_novel_refuses(shakespeare, tmp_path):
    copy = Store.at(str(tmp_path / "corpus"))
    for item in shakespeare.folder.list():
        if item.name != novelty.FOLDER:
            item.download(tmp_path / "corpus" / item.name)
    novelty.build(copy, limit=1000)
    index = novelty.open_index(copy)
    train = shards.read_split(shakespeare.folder, shakespeare.manifest, "train")
    assert index.partial and index.meter(train[:900]).longest == 900 and index.meter(train[5000:5100]).longest < 100
    assert "at least" in index.meter("First").line()
    with pytest.raises(Exception, match="holds its first 1000 bytes"):
        index.is_record("First Citizen:", ("\n",))


def test_a_record_is_whole_only_between_two_stops_or_the_splits_ends(names_run):
    _, built = names_run
    index = novelty.open_index(built.folder)
    lines = shards.read_split(built.folder, built.manifest, "train").split("\n")
    names = set(lines)
    longer = next(n for n in lines if n[:-1] not in names and len(n) > 3)  # as "Anna" where "Ann" is no name
    assert index.is_record(longer, ("\n",)) and not index.is_record(longer[:-1], ("\n",))
    assert not index.is_record(longer[1:], ("\n",)) or longer[1:] in names
    assert index.is_record(lines[0], ("\n",)) and index.is_record(lines[-1], ("\n",))  # at the split's start and end
    assert not index.is_record(lines[0] + "\n" + lines[1], ("\n",))


def test_a_names_run_prints_100_distinct_names_none_of_them_in_the_train_split(names_run):
    checkpoint, built = names_run
    out = sample(
        checkpoint,
        "--prime",
        "\\n",
        "--stop",
        "\\n",
        "-n",
        "100",
        "--unique",
        "--novel",
        "--seed",
        "1",
        "--length",
        "30",
        "--corpus",
        built.folder.url,
    ).stdout.splitlines()
    train = set(shards.read_split(built.folder, built.manifest, "train").split("\n"))
    assert len(out) == 100 and len(set(out)) == 100 and not set(out) & train, out
    assert all(name.isalpha() for name in out), out
    # without --novel, the same model mostly gives back names it was trained on
    plain = sample(
        checkpoint,
        "--prime",
        "\\n",
        "--stop",
        "\\n",
        "-n",
        "100",
        "--seed",
        "1",
        "--length",
        "30",
        "--corpus",
        built.folder.url,
    ).stdout.splitlines()
    assert set(plain) & train


def test_records_end_at_a_stop_string_that_is_not_printed_nor_the_prime(trained_checkpoint):
    model, vocab, _ = load(str(trained_checkpoint))
    import torch

    drawn = "".join(
        characters(model, vocab, "ROMEO:", 300, temperature=0.8, generator=torch.Generator().manual_seed(5))
    )
    first = drawn.index("\n")
    out = sample(
        trained_checkpoint, "--prime", "ROMEO:", "-t", "0.8", "--seed", "5", "--stop", "\\n", "-l", "300"
    ).stdout
    assert out == escape(drawn[:first]) + "\n"
    # the stop string ending on the budget's last character completes the record; one character less, it is
    # incomplete and discarded, and the one try is spent
    exact = sample(
        trained_checkpoint, "-p", "ROMEO:", "-t", "0.8", "--seed", "5", "--stop", "\\n", "-l", str(first + 1)
    )
    assert exact.stdout == out
    short = sample(
        trained_checkpoint,
        "-p",
        "ROMEO:",
        "-t",
        "0.8",
        "--seed",
        "5",
        "--stop",
        "\\n",
        "-l",
        str(first),
        "--tries",
        "1",
        code=2,
    )
    assert (
        short.stdout == ""
        and short.stderr
        == "error: found 0 of 1 records in 1 tries (1 incomplete): raise --tries or --length, or ask for fewer\n"
    )


def test_a_stop_string_may_begin_in_the_prime_but_not_lie_wholly_in_it():
    cut = Cut("ab\n", ("\n\n",))
    assert cut.feed("\n") and cut.record() == ""  # began in the prime: nothing generated before it
    cut = Cut("x\n\n", ("\n\n",))
    assert not cut.feed("abc") and cut.record() is None  # the prime's own "\n\n" does not end it
    assert cut.feed("\n\nmore") and cut.record() == "abc"
    cut = Cut("Q", ("ab", "b"))
    assert cut.feed("xab") and cut.record() == "x"  # two stops end at once: the earlier-starting one is cut


def test_a_stop_across_the_prime_boundary_ends_the_sample_at_once(trained_checkpoint):
    model, vocab, _ = load(str(trained_checkpoint))
    import torch

    drawn = "".join(characters(model, vocab, "ROMEO:", 5, generator=torch.Generator().manual_seed(9)))
    result = sample(trained_checkpoint, "-p", "ROMEO:", "--seed", "9", "--stop", ":" + drawn[0], "--tries", "1", code=2)
    assert "found 0 of 1 records in 1 tries (1 empty)" in result.stderr


def test_a_record_holding_a_newline_is_printed_escaped_one_a_line(trained_checkpoint):
    out = sample(trained_checkpoint, "-p", "\\n", "--stop", "\\n\\n", "-n", "5", "--seed", "2", "-l", "400").stdout
    lines = out.splitlines()
    assert len(lines) == 5 and any("\\n" in line for line in lines)
    assert all("\n\n" not in unescape(line) for line in lines)


def test_shell_escapes_in_prime_and_stop_mean_newline_and_tab():
    assert unescape("a\\nb\\tc\\\\n\\x") == "a\nb\tc\\n\\x"
    for record in ["a\nb", "back\\slash\\n", "tab\tstays", "cr\r"]:
        assert unescape(escape(record)) == record and "\n" not in escape(record)


def test_an_escaped_prime_draws_what_the_real_newline_draws(trained_checkpoint):
    typed = sample(trained_checkpoint, "--prime", "\\nROMEO:\\n", "--seed", "4", "-l", "50").stdout
    real = sample(trained_checkpoint, "--prime", "\nROMEO:\n", "--seed", "4", "-l", "50").stdout
    assert typed == real and typed.startswith("\nROMEO:\n")
    assert "\\n" in CliRunner().invoke(cli, ["sample", "--help"]).output


def test_unique_is_bounded_and_ends_with_one_line_saying_how_many_and_why(trained_checkpoint):
    result = sample(
        trained_checkpoint, "-p", "\\n", "--stop", "\\n", "-n", "100", "--unique", "-l", "2", "--seed", "1", code=2
    )
    found = result.stdout.splitlines()
    assert 0 < len(found) < 65 and len(set(found)) == len(found) and all(len(r) == 1 for r in found)
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: found {len(found)} of 100 records in 1000 tries (")
    assert "repeated" in result.stderr and "raise --tries or --length" in result.stderr


def test_streamed_records_are_the_records_drawn_without_streaming(trained_checkpoint):
    args = ["-p", "\\n", "--stop", "\\n", "-n", "4", "--seed", "3", "--unique"]
    assert sample(trained_checkpoint, *args, "--stream").stdout == sample(trained_checkpoint, *args).stdout


def test_novelty_prints_the_meter_after_each_sample(trained_checkpoint, shakespeare):
    out = sample(trained_checkpoint, "--novelty", "--seed", "1", "-l", "80", "--corpus", shakespeare.folder.url).stdout
    text, line = out.rstrip("\n").rsplit("\n", 1)
    meter = novelty.open_index(shakespeare.folder).meter(text[1:])  # the generated text, without the "\n" prime
    assert line == meter.line() and line.startswith("novelty: longest copied span ")
    records = sample(
        trained_checkpoint,
        "-p",
        "\\n",
        "--stop",
        "\\n",
        "-n",
        "2",
        "--novelty",
        "--seed",
        "1",
        "--corpus",
        shakespeare.folder.url,
    )
    assert len(records.stdout.splitlines()) == 2 and records.stderr.count("novelty: ") == 2


def test_new_generation_errors_are_one_line_exit_2(trained_checkpoint, shakespeare, names_run):
    for args, message in [
        (["--unique"], "give --stop too"),
        (["--stop", ""], "--stop must not be empty"),
        (["--stop", "\\n", "-n", "5", "--tries", "2"], "--tries 2 is below -n 5"),
        (["--novelty"], "the run's corpus is not at"),
        (["--stop", "\\n", "--novel", "--corpus", str(shakespeare.folder.url) + "-gone"], "the run's corpus is not at"),
        (["--novelty", "--corpus", names_run[1].folder.url], "but the model was trained on"),
    ]:
        result = sample(trained_checkpoint, *args, code=2)
        assert message in result.output and result.output.count("\n") == 1, (args, result.output)


def test_the_sample_archive_stores_the_meter_at_each_evaluation(trained_checkpoint, shakespeare):
    trial = trained_checkpoint.parent.parent / "storage" / "runs" / "t" / "trials" / "main" / "samples"
    index = novelty.open_index(shakespeare.folder)
    for step_file in sorted(trial.glob("step-*.json")):
        for drawn in json.loads(step_file.read_text())["samples"]:
            assert drawn["novelty"] == index.meter(drawn["text"]).to_json()


def test_a_run_with_samples_novelty_off_builds_no_index_and_stores_no_meter(shakespeare, tmp_path):
    from rnnfarm.engine.loop import Job, LocalSession, train
    from rnnfarm.layout import Run

    copy = tmp_path / "corpus"
    for item in shakespeare.folder.list():
        if item.name != novelty.FOLDER:
            item.download(copy / item.name)
    job = make_spec(str(tmp_path / "storage"), train={"steps": 4, "eval_every": 4}, samples={"novelty": False})
    trial = Run(Store.at(job.storage) / "runs" / "off").trial()
    train(Job(job, Store.at(str(copy)), trial), LocalSession(tmp_path / "ckpt"))
    assert "novelty" not in trial.samples(4).read_json()["samples"][0] and not (copy / novelty.FOLDER).exists()
