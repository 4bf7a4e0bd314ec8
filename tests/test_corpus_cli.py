"""`rnnfarm corpus list|build|show`: what a user sees, and one-line errors with exit code 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rnnfarm.cli import cli
from rnnfarm_plugins.shakespeare import TINY_SHA256


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_list_names_every_corpus_with_version_and_distribution():
    result = invoke("corpus", "list")
    assert result.exit_code == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "version", "distribution", "description"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) >= {"files", "latex", "linux", "names", "shakespeare", "wikipedia"}
    assert rows["shakespeare"].split()[1:4] == ["2", "rnnfarm", "0.1.0"]
    assert "tiny Shakespeare" in rows["shakespeare"]


def test_build_prints_the_summary_and_location_then_skips_a_rebuild(tmp_path):
    storage = str(tmp_path / "store")
    result = invoke("corpus", "build", "shakespeare", "-o", "variant=tiny", "--to", storage)
    assert result.exit_code == 0, result.stdout
    first = result.stdout.splitlines()[0]
    assert first.startswith("built: corpus shakespeare (plugin version 2, rnnfarm 0.1.0), fingerprint ")
    fingerprint = first.rsplit(" ", 1)[1]
    assert f"location: {storage}/corpora/shakespeare/{fingerprint}" in result.stdout
    assert "val            1    111,540  10.00%    111,540    111,540       1" in result.stdout
    assert "vocabulary: 65 symbols (char level), 0 tokens replaced" in result.stdout
    assert TINY_SHA256 in result.stdout

    again = invoke("corpus", "build", "shakespeare", "--to", storage)
    assert again.exit_code == 0 and again.stdout.startswith("already built: ") and fingerprint in again.stdout


def test_build_takes_policy_split_fractions_and_a_file_url(tmp_path):
    to = f"file://{tmp_path}"
    result = invoke("corpus", "build", "shakespeare", "-n", "level=byte", "--val", "0.05", "--test", "0.05", "--to", to)
    assert result.exit_code == 0, result.stdout
    assert "(byte level)" in result.stdout
    assert f"location: {tmp_path}/corpora/shakespeare/" in result.stdout
    assert [line.split()[0] for line in result.stdout.splitlines()[3:6]] == ["train", "val", "test"]


def test_show_prints_splits_vocabulary_sources_policy_and_fingerprint(tmp_path):
    built = invoke("corpus", "build", "shakespeare", "--to", str(tmp_path))
    folder = built.stdout.splitlines()[1].removeprefix("location: ")
    result = invoke("corpus", "show", folder)
    assert result.exit_code == 0, result.stdout
    out = result.stdout
    assert f"fingerprint:   {folder.rsplit('/', 1)[1]}" in out
    assert f"  sha256:      {TINY_SHA256} (1 file)" in out
    assert "normalization: level='char', unicode='NFC', invalid_utf8='replace'" in out
    assert "separator='\\n\\n'" in out
    assert "splits:        by position, target shares of the characters val 10.00%, test 0.00%; 1 documents" in out
    assert "  val            1    111,540  10.00%" in out
    assert "  train          1  1,003,854  90.00%" in out
    assert "vocabulary:    65 symbols (char level)" in out
    assert "' ' 169,892" in out and "'\\n' 40,000" in out  # counts, the most frequent first


def test_show_points_from_a_corpus_name_folder_to_its_builds(tmp_path):
    invoke("corpus", "build", "shakespeare", "--to", str(tmp_path))
    result = invoke("corpus", "show", str(tmp_path / "corpora" / "shakespeare"))
    assert result.exit_code == 2 and "holds builds" in result.stderr and "show one of them" in result.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["corpus", "build", "shakespear"], "unknown corpus plugin 'shakespear'"),
        (["corpus", "build", "shakespeare", "-o", "variant=huge"], "corpus.options.variant: Input should be"),
        (["corpus", "build", "shakespeare", "-o", "colour=red"], "corpus.options.colour: is not an option"),
        (["corpus", "build", "shakespeare", "-o", "variant"], "-o 'variant': expected key=value"),
        (["corpus", "build", "shakespeare", "-n", "level=bit"], "corpus.normalize.level: must be one of"),
        (["corpus", "build", "files"], "corpus.options.url: is required"),
        (["corpus", "build", "files", "-o", "url=/no/such/file.txt"], "no source of corpus 'files' could be read"),
        (["corpus", "show", "/no/such/folder"], "no manifest.json here"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, expected):
    result = invoke(*args, *(["--to", str(tmp_path)] if args[1] == "build" else []))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # log lines are JSON
    assert len(errors) == 1 and errors[0].startswith("error: ") and expected in errors[0], result.stderr
    assert "Traceback" not in result.output and not result.stdout
