"""Neuron and prediction pages of a real checkpoint, rendered in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rnnfarm.cli import cli
from rnnfarm.corpus import shards
from rnnfarm.corpus.vocab import Vocab
from rnnfarm.engine import checkpoint
from rnnfarm.engine.model import CharRNN
from rnnfarm.errors import UserError
from rnnfarm.insight import viz
from rnnfarm.spec import ModelSpec

from .browser import render
from .conftest import runs_out_of_device_memory

TEXT_CHARS = 400


@pytest.fixture(scope="module")
def val_text(shakespeare, tmp_path_factory):
    """The first lines of tiny Shakespeare's val split, in a file."""
    text = shards.read_split(shakespeare.folder, shakespeare.manifest, "val")
    start = text.index("\n") + 1
    path = tmp_path_factory.mktemp("text") / "val.txt"
    path.write_text(text[start : start + TEXT_CHARS])
    return path


def backgrounds(spans) -> list[str]:
    return [re.search(r"background:\s*([^;]+)", s.attrs["style"]).group(1) for s in spans]


def test_the_layer_by_layer_trace_reproduces_the_models_own_forward(trained_checkpoint, val_text):
    model, vocab, _ = checkpoint.load_model(trained_checkpoint)
    text = val_text.read_text()
    trace = viz.trace(model, vocab, text)
    x = torch.from_numpy(trace.ids)[None]
    with torch.no_grad():
        logits, (h, c) = model(x)
        top_layer, _ = model.rnn(model.embed(x))
    assert trace.cells.shape == trace.outputs.shape == (2, len(text), 32)
    np.testing.assert_allclose(trace.outputs[-1], top_layer[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(trace.outputs[:, -1], h[:, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(trace.cells[:, -1], torch.tanh(c[:, 0]).numpy(), atol=1e-5)
    np.testing.assert_allclose(trace.probs, torch.softmax(logits[0], -1).numpy(), atol=1e-5)
    assert np.abs(trace.cells).max() <= 1


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_gru_and_vanilla_layers_show_their_output(cell, trained_checkpoint):
    _, vocab, _ = checkpoint.load_model(trained_checkpoint)
    torch.manual_seed(0)
    model = CharRNN(len(vocab), ModelSpec(cell=cell, layers=2, hidden=16, embedding=8)).eval()
    trace = viz.trace(model, vocab, "ROMEO:\nWhat light")
    with torch.no_grad():
        out, _ = model.rnn(model.embed(torch.from_numpy(trace.ids)[None]))
    np.testing.assert_allclose(trace.outputs[-1], out[0].numpy(), atol=1e-5)
    assert trace.cells is None
    with pytest.raises(UserError, match="no cell state"):
        trace.signal("cell")


def test_features_follow_quotes_brackets_line_position_and_indentation():
    text = 'x = f("a (b)")\n    y[0]\n'
    f = viz.features(text)
    assert "".join(c for c, q in zip(text, f["inside quotes"], strict=True) if q) == '"a (b)'
    assert "".join(c for c, b in zip(text, f["inside brackets"], strict=True) if b) == '("a (b)"[0'
    assert f["position in line"][:3].tolist() == [1, 2, 3] and f["position in line"][14] == 0
    assert f["indentation"][15:21].tolist() == [1, 2, 3, 4, 4, 4] and f["indentation"][-1] == 0


def test_the_ranking_puts_the_cells_that_follow_a_feature_first():
    text = "To be, or not to be: that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 3
    feats = viz.features(text)
    rng = np.random.default_rng(0)
    acts = rng.uniform(-0.2, 0.2, size=(2, len(text), 16))
    column = feats["position in line"]
    acts[1, :, 7] = column / column.max() * 1.8 - 0.9  # a line-length cell
    acts[0, :, 3] = -np.tanh(column / 30) + rng.normal(0, 0.05, len(text))  # a noisier one, of opposite sign
    top = viz.rank(viz.correlations(acts, feats), list(feats), 2)
    assert [(m.layer, m.cell, m.feature) for m in top] == [(1, 7, "position in line"), (0, 3, "position in line")]
    assert top[0].r > 0.999 and -0.999 < top[1].r < -0.9


def test_the_neuron_page_colours_every_character_for_each_top_cell(trained_checkpoint, val_text, tmp_path):
    out = tmp_path / "neurons.html"
    result = CliRunner().invoke(
        cli, ["viz", "neurons", str(trained_checkpoint), "--text", str(val_text), "--top", "3", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    dom = render(out, "neurons-top")
    ranking = dom.find_all("table", "ranking")[0].find_all("tbody")[0].find_all("tr")
    assert len(ranking) == 3
    sections = dom.find_all("section", "cell")
    assert len(sections) == 3
    text = val_text.read_text()
    for row, section in zip(ranking, sections, strict=True):
        layer, cell, feature = (td.all_text for td in row.find_all("td")[1:4])
        assert f"Layer {layer}, cell {cell}: tracks {feature}" in section.all_text
        spans = section.find_all("span", "a")
        assert len(spans) == len(text)
        assert all(s.attrs["title"][0] in "+-" for s in spans)
        assert len(set(backgrounds(spans))) > 10  # the activations vary along the text
    assert not [e for e in dom.find_all("script")] and not [e for e in dom.find_all("img")]


def test_the_neuron_page_of_one_chosen_cell_shows_its_correlation_with_each_feature(
    trained_checkpoint, val_text, tmp_path
):
    out = tmp_path / "cell.html"
    args = ["viz", "neurons", str(trained_checkpoint), "--text", str(val_text), "--layer", "1", "--cell", "5"]
    result = CliRunner().invoke(cli, [*args, "--signal", "output", "-o", str(out)])
    assert result.exit_code == 0, result.output
    dom = render(out, "neurons-one-cell")
    rows = dom.find_all("table", "ranking")[0].find_all("tbody")[0].find_all("tr")
    assert [r.find_all("td")[0].all_text for r in rows] == list(viz.FEATURES)
    (section,) = dom.find_all("section", "cell")
    assert section.all_text.startswith("Layer 1, cell 5")
    model, vocab, _ = checkpoint.load_model(trained_checkpoint)
    expected = viz.trace(model, vocab, val_text.read_text()).outputs[1, :, 5]
    shown = [float(s.attrs["title"]) for s in section.find_all("span", "a")]
    np.testing.assert_allclose(shown, expected, atol=5e-4)


def test_the_prediction_page_shows_each_characters_probability_and_the_top_five_guesses(
    trained_checkpoint, val_text, tmp_path
):
    out = tmp_path / "predictions.html"
    result = CliRunner().invoke(
        cli, ["viz", "predictions", str(trained_checkpoint), "--text", str(val_text), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    dom = render(out, "predictions")
    text = val_text.read_text()
    spans = dom.find_all("span", "p")
    assert len(spans) == len(text)
    model, vocab, _ = checkpoint.load_model(trained_checkpoint)
    trace = viz.trace(model, vocab, text)
    for i in (0, 1, 57, len(text) - 1):
        rows = spans[i].find_all("tr")
        assert len(rows) == 5
        guessed = [float(r.find_all("td")[1].all_text.rstrip("%")) / 100 for r in rows]
        np.testing.assert_allclose(guessed, np.sort(trace.probs[i])[::-1][:5], atol=1e-3)
    own = trace.probs[np.arange(len(text) - 1), trace.ids[1:]]
    assert f"{own[56]:.1%} likely" in spans[57].all_text
    colours = backgrounds(spans)
    assert colours[0] == "#eee" and len(set(colours[1:])) > 10


def test_viz_refuses_an_unclear_choice_of_cells_and_cells_that_are_not_there(trained_checkpoint, val_text):
    def neurons(*args: str):
        return CliRunner().invoke(cli, ["viz", "neurons", str(trained_checkpoint), "--text", str(val_text), *args])

    for args, message in [
        ((), "choose the cells to show: --top N, or both --layer L and --cell C"),
        (("--layer", "1"), "choose the cells to show"),
        (("--top", "3", "--layer", "0", "--cell", "1"), "choose the cells to show"),
        (("--layer", "2", "--cell", "0"), "--layer 2: the network has 2 layer(s), numbered 0 to 1"),
        (("--layer", "0", "--cell", "32"), "--cell 32: each layer has 32 cells, numbered 0 to 31"),
    ]:
        result = neurons(*args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    missing = CliRunner().invoke(cli, ["viz", "predictions", str(trained_checkpoint), "--text", "nowhere.txt"])
    assert missing.exit_code == 2 and "--text nowhere.txt: no such file" in missing.output


@pytest.fixture(scope="module")
def licence_text(tmp_path_factory):
    """Real prose that tiny Shakespeare's vocabulary does not cover: the start of the GPL-3 text Debian ships
    (brackets, slashes, angle brackets and digits that the corpus lacks)."""
    text = Path("/usr/share/common-licenses/GPL-3").read_text()[:TEXT_CHARS]
    path = tmp_path_factory.mktemp("licence") / "GPL-3.txt"
    path.write_text(text)
    return path


def test_characters_outside_the_vocabulary_are_skipped_shown_grey_and_counted(
    trained_checkpoint, licence_text, tmp_path
):
    model, vocab, _ = checkpoint.load_model(trained_checkpoint)
    text = licence_text.read_text()
    outside = [ch for ch in text if ch not in vocab.symbols]
    assert vocab.replacement is None and {"(", '"'} & set(outside)  # the corpus has no replacement symbol
    trace = viz.trace(model, vocab, text)
    assert vocab.decode(trace.ids) == "".join(ch for ch in text if ch in vocab.symbols)  # the rest is what it read
    note = f"{len(outside)} character(s) outside the model's vocabulary"

    for page, args in [("neurons", ["--top", "2"]), ("predictions", [])]:
        out = tmp_path / f"{page}.html"
        result = CliRunner().invoke(
            cli, ["viz", page, str(trained_checkpoint), "--text", str(licence_text), *args, "-o", str(out)]
        )
        assert result.exit_code == 0, result.output
        dom = render(out, f"{page}-unknown-characters")
        (header,) = dom.find_all("p", "unknown")
        assert note in header.all_text and "skipped" in header.all_text
        for text_box in dom.find_all("div", "text"):
            grey = text_box.find_all("span", "u")
            shown = "".join(s.children[0].all_text for s in grey)  # the character (a tooltip may follow)
            assert shown == "".join(outside).replace("\n", "↵")
            assert all("background" not in s.attrs.get("style", "") for s in grey)
        if page == "neurons":
            for section in dom.find_all("section", "cell"):
                assert len(section.find_all("span", "a")) == len(text) - len(outside)
        else:
            assert len(dom.find_all("span", "p")) == len(text)
            bits = float(re.search(r"([\d.]+) bits/char", dom.all_text).group(1))
            own = trace.probs[np.arange(len(trace.ids) - 1), trace.ids[1:]]
            assert bits == pytest.approx(-np.log2(own).mean(), abs=1e-3)


def test_with_a_replacement_symbol_characters_outside_the_vocabulary_are_read_as_it(trained_checkpoint, licence_text):
    _, corpus_vocab, meta = checkpoint.load_model(trained_checkpoint)
    vocab = Vocab(tuple(sorted((*corpus_vocab.symbols, "\ufffd"))), "\ufffd")
    torch.manual_seed(0)
    model = CharRNN(len(vocab), ModelSpec(layers=2, hidden=16, embedding=8)).eval()
    text = licence_text.read_text()
    outside = np.array([ch not in corpus_vocab.symbols for ch in text])
    trace = viz.trace(model, vocab, text)
    assert len(trace.ids) == len(text) and (trace.ids[outside] == vocab.symbols.index("\ufffd")).all()
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(trace.ids)[None])
    np.testing.assert_allclose(trace.probs, torch.softmax(logits[0], -1).numpy(), atol=1e-5)
    page = viz.predictions_page(trace, vocab, meta, "replacement")
    assert f"{outside.sum()} character(s) outside the model&#x27;s vocabulary" in page and "read as" in page
    assert viz.neurons_page(trace, meta, "replacement", top=2).count("class=u ") == 2 * outside.sum()  # 2 cells


def test_running_out_of_device_memory_while_tracing_a_text_is_one_line_naming_it_and_the_model_size(
    trained_checkpoint, val_text, tmp_path, monkeypatch
):
    # Simulated: no GPU here, so a layer's arithmetic raises what torch raises when a GPU's memory runs out.
    parameters = sum(p.numel() for p in checkpoint.load_model(trained_checkpoint)[0].parameters())
    monkeypatch.setattr(viz, "_lstm_layer", runs_out_of_device_memory)
    out = tmp_path / "page.html"
    args = ["viz", "neurons", str(trained_checkpoint), "--text", str(val_text), "--top", "3", "-o", str(out)]
    args += ["--device", "cpu"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and not out.exists()
    assert result.output == (
        f"error: out of memory on cpu with a batch of one text of {TEXT_CHARS} characters and a model of "
        f"{parameters:,} parameters: lower --max-chars\n"
    )
