"""`rnnfarm export --format web`: the page, run in a real headless Chromium (Debian's package) from a real
static host on 127.0.0.1 and from file://, writes `rnnfarm sample --argmax`'s text, repeats a seeded sample,
stops when asked, shows the model card, and reads nothing from outside its folder."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
import torch
from click.testing import CliRunner

from rnnfarm.cli import cli
from rnnfarm.engine import checkpoint
from rnnfarm.engine.model import CharRNN
from rnnfarm.serving import npm
from rnnfarm.spec import ModelSpec

from .browser import devtools

PRIME = "ROMEO:\nBut soft, what light"
FINISHED = """new Promise((resolve) => {
  const check = () => {
    const status = document.getElementById("status");
    if (["done", "stopped", "error"].includes(status.dataset.state)) {
      resolve({state: status.dataset.state, status: status.textContent,
               output: document.getElementById("output").textContent,
               card: document.getElementById("card").textContent});
    } else setTimeout(check, 20);
  };
  check();
})"""


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def model_checkpoint(trained_checkpoint, tmp_path_factory) -> Path:
    """A 2x32 LSTM with random weights and dropout 0.3, saved with the trained checkpoint's vocabulary and
    metadata. Random weights, not the briefly trained ones: those barely use the state, so a page that
    dropped it between characters would still write the same argmax text."""
    _, vocab, meta = checkpoint.load_model(trained_checkpoint)
    torch.manual_seed(3)
    model = CharRNN(len(vocab), ModelSpec(layers=2, hidden=32, embedding=16, dropout=0.3))
    folder = tmp_path_factory.mktemp("random-lstm")
    checkpoint.save_model(folder, model, vocab, {k: meta[k] for k in ("step", "val_loss", "corpus", "saved")})
    return folder


@pytest.fixture(scope="module")
def page(model_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("web")
    result = run_cli("export", str(model_checkpoint), "--format", "web", "-o", str(out))
    assert result.exit_code == 0, result.output
    return out


@contextlib.contextmanager
def static_host(folder: Path) -> Iterator[str]:
    """The folder served as it is by Python's own static file server on 127.0.0.1: its base URL."""
    quiet = type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *args: None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        thread.join()


def query(**settings) -> str:
    return "index.html?" + urlencode({**settings, "autostart": 1})


def sample_argmax(folder: Path, prime: str, length: int) -> str:
    result = run_cli("sample", str(folder), "--argmax", "--prime", prime, "--length", str(length))
    assert result.exit_code == 0, result.output
    return result.output.removesuffix("\n")


def test_the_folder_holds_the_page_the_model_and_onnx_runtime_webs_wasm_backend(page):
    assert sorted(p.name for p in page.iterdir()) == ["index.html", "model.json", "model.onnx", "ort", "vocab.json"]
    assert sorted(p.name for p in (page / "ort").iterdir()) == sorted(npm.FILES)


def test_served_from_a_static_host_with_temperature_0_the_page_writes_rnnfarm_sample_argmaxs_text(
    page, model_checkpoint
):
    with static_host(page) as base, devtools() as browser:
        tab = browser.open(base + query(prime=PRIME, length=300, temperature=0))
        shown = browser.evaluate(tab, FINISHED, timeout=120)
        requested = browser.requested()
    assert shown["state"] == "done", shown["status"]
    assert PRIME + shown["output"] == sample_argmax(model_checkpoint, PRIME, 300)
    assert len(shown["output"]) == 300
    assert requested and all(url.startswith(base) for url in requested), requested


def test_from_file_a_seeded_sample_is_the_same_on_two_loads_and_another_seed_gives_another(page):
    url = (page / "index.html").as_uri() + "?" + query(prime="ROMEO:", length=200, temperature=0.9, top_k=20)[11:]
    texts = []
    with devtools("--allow-file-access-from-files") as browser:
        for seed in (7, 7, 8):
            shown = browser.evaluate(browser.open(f"{url}&seed={seed}"), FINISHED, timeout=120)
            assert shown["state"] == "done", shown["status"]
            texts.append(shown["output"])
        requested = browser.requested()
    assert texts[0] == texts[1] and len(texts[0]) == 200
    assert texts[2] != texts[0]
    assert all(u.startswith(page.as_uri() + "/") for u in requested), requested


def test_the_page_shows_the_model_card(page, model_checkpoint):
    model, _, meta = checkpoint.load_model(model_checkpoint)
    with static_host(page) as base, devtools() as browser:
        shown = browser.evaluate(browser.open(base + query(length=5)), FINISHED, timeout=120)
    card = shown["card"]
    assert f"corpus: shakespeare ({meta['corpus']['fingerprint']})" in card
    assert "2×32 lstm" in card and f"{sum(p.numel() for p in model.parameters()):,} parameters" in card
    assert f"val loss: {meta['val_loss']:.4f} nats/char" in card
    assert f"trained: {meta['saved'][:10]}" in card


def test_the_stop_button_stops_the_generation(page):
    with static_host(page) as base, devtools() as browser:
        tab = browser.open(base + query(prime="ROMEO:", length=1_000_000, temperature=1, seed=1))
        browser.evaluate(
            tab,
            """new Promise((resolve) => { const wait = () => document.getElementById("output").textContent.length > 50
                 ? resolve(document.getElementById("stop").click()) : setTimeout(wait, 20); wait(); })""",
        )
        shown = browser.evaluate(tab, FINISHED, timeout=60)
    assert shown["state"] == "stopped", shown["status"]
    assert 50 < len(shown["output"]) < 1_000_000
    assert shown["status"].startswith(f"stopped after {len(shown['output'])} characters")


def test_opened_from_file_where_the_browser_keeps_the_folder_closed_the_page_says_how_to_open_it(page):
    with devtools() as browser:
        shown = browser.evaluate(browser.open((page / "index.html").as_uri()), FINISHED, timeout=60)
    assert shown["state"] == "error"
    assert "--allow-file-access-from-files" in shown["status"] and "http.server" in shown["status"]


def test_a_prime_outside_the_vocabulary_is_refused_in_one_line(page):
    with static_host(page) as base, devtools() as browser:
        shown = browser.evaluate(browser.open(base + query(prime="ROMEO: ☃")), FINISHED, timeout=60)
    assert shown["state"] == "error" and "outside the model's vocabulary" in shown["status"] and "☃" in shown["status"]


def test_a_cached_runtime_tarball_that_is_not_the_pinned_one_is_refused(trained_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNFARM_CACHE", str(tmp_path / "cache"))
    npm.cached_path().parent.mkdir(parents=True)
    npm.cached_path().write_bytes(b"not the package")
    result = run_cli("export", str(trained_checkpoint), "--format", "web", "-o", str(tmp_path / "web"))
    assert result.exit_code == 2 and "is not the pinned" in result.output, result.output
    assert not (tmp_path / "web").exists()


def test_the_runtime_comes_through_the_users_npm_registry_configuration(trained_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNFARM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", "http://127.0.0.1:9/")  # a registry nothing answers at
    monkeypatch.setenv("NPM_CONFIG_FETCH_RETRIES", "0")
    monkeypatch.setenv("NPM_CONFIG_CACHE", str(tmp_path / "npm-cache"))
    result = run_cli("export", str(trained_checkpoint), "--format", "web", "-o", str(tmp_path / "web"))
    assert result.exit_code == 2 and result.output.startswith("error: npm pack onnxruntime-web@"), result.output
    assert "127.0.0.1:9" in result.output or "ECONNREFUSED" in result.output, result.output
    assert not npm.cached_path().exists() and not (tmp_path / "web").exists()


RECORDS = FINISHED.replace("card: ", 'link: document.getElementById("permalink").href, card: ')


def test_records_asked_in_the_url_are_the_records_rnnfarm_sample_prints(page, model_checkpoint):
    """stop, n and unique from the query string; argmax draws the same sample every try, so the page's records
    and its one-line shortfalls can be set beside `rnnfarm sample --argmax`'s."""
    text = sample_argmax(model_checkpoint, "ROMEO:", 300).removeprefix("ROMEO:")
    after_newline = sample_argmax(model_checkpoint, "ROMEO:\n", 5).removeprefix("ROMEO:\n")
    crossing = "\\n" + after_newline[0]  # typed as in a shell: begins in the prime, ends at the first character
    cli = ["sample", str(model_checkpoint), "--argmax", "-l", "300", "-n", "3"]
    printed = run_cli(*cli, "-p", "ROMEO:", "--stop", text[30:32])
    short = run_cli(*cli, "-p", "ROMEO:", "--stop", text[30:32], "--unique")
    empty = run_cli(*cli, "-p", "ROMEO:\n", "--stop", crossing)
    settings = {"prime": "ROMEO:", "length": 300, "temperature": 0, "stop": text[30:32], "n": 3}
    with static_host(page) as base, devtools() as browser:
        shown = browser.evaluate(browser.open(base + query(**settings)), RECORDS, timeout=120)
        unique = browser.evaluate(browser.open(base + query(**settings, unique=1)), RECORDS, timeout=120)
        crossed = browser.evaluate(
            browser.open(base + query(**{**settings, "prime": "ROMEO:\n", "stop": crossing})), RECORDS, timeout=120
        )
    assert shown["state"] == "done", shown["status"]
    assert printed.exit_code == 0 and shown["output"] == printed.stdout and len(printed.stdout.splitlines()) == 3
    assert "stop=" + quote(text[30:32], safe="") in shown["link"] and "n=3" in shown["link"]
    assert unique["state"] == "error" and "unique=1" in unique["link"]
    assert (
        unique["status"] == "error: found 1 of 3 records in 100 tries (99 repeated): raise the length, or ask for fewer"
    )
    assert short.exit_code == 2 and short.stderr.startswith(unique["status"].split(": raise")[0])
    assert unique["output"] == printed.stdout.splitlines()[0] + "\n"
    assert crossed["status"].startswith("error: found 0 of 3 records in 100 tries (100 empty)")
    assert empty.exit_code == 2 and empty.stderr.startswith(crossed["status"].split(": raise")[0])
    assert "stop=" + quote(crossing, safe="") in crossed["link"]
