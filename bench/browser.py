"""Generation speed in the browser against `rnnfarm sample`, in characters per second, in the same run.

A 3x512 LSTM (random weights: speed does not depend on them; 65 symbols) is saved as a checkpoint and
exported with ``rnnfarm export --format web``; its page runs in headless Chromium (Debian's package) from
a static host on 127.0.0.1 with ``temperature=0`` (argmax) and reports its own rate (the generation loop,
after the model has loaded). `rnnfarm sample`'s rate is ``rnnfarm.sample.characters`` with ``argmax``, at
torch's default threads and at one thread (the page runs ONNX Runtime Web's wasm backend on one thread).
The two texts must be the same. Median of ``--repeats`` runs of each, in turns.

    .venv/bin/python bench/browser.py [--length 500] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from rnnfarm.corpus.vocab import Vocab
from rnnfarm.engine import checkpoint
from rnnfarm.engine.model import CharRNN
from rnnfarm.insight.sample import characters
from rnnfarm.serving import web
from rnnfarm.spec import ModelSpec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.browser import devtools  # noqa: E402  (the tests' headless-Chromium driver)
from tests.test_web import FINISHED, query, static_host  # noqa: E402

VOCAB = Vocab(("\n", *(chr(c) for c in range(32, 96))))
SPEC = ModelSpec(cell="lstm", layers=3, hidden=512, embedding=64)
PRIME = "\n"


def torch_rate(model: CharRNN, length: int, threads: int) -> tuple[float, str]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        text = "".join(characters(model, VOCAB, PRIME, length, argmax=True))
        return length / (time.perf_counter() - start), text
    finally:
        torch.set_num_threads(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=500, help="characters per sample")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each way (median)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = CharRNN(len(VOCAB), SPEC).eval()
    threads = torch.get_num_threads()
    rates: dict[str, list[float]] = {"torch": [], "torch1": [], "browser": []}
    with tempfile.TemporaryDirectory(prefix="rnnfarm-bench-") as tmp:
        ckpt, out = Path(tmp) / "ckpt", Path(tmp) / "web"
        ckpt.mkdir()
        checkpoint.save_model(ckpt, model, VOCAB, {"step": 0, "val_loss": None})
        web.export(str(ckpt), out)
        with static_host(out) as base, devtools() as browser:
            for _ in range(args.repeats):
                rate, expected = torch_rate(model, args.length, threads)
                rates["torch"].append(rate)
                rates["torch1"].append(torch_rate(model, args.length, 1)[0])
                tab = browser.open(base + query(prime=PRIME, length=args.length, temperature=0))
                shown = browser.evaluate(tab, FINISHED, timeout=600)
                assert shown["state"] == "done", shown["status"]
                assert shown["output"] == expected, "the page's argmax text differs from rnnfarm sample's"
                rate = browser.evaluate(tab, "Number(document.getElementById('status').dataset.charsPerSecond)")
                rates["browser"].append(rate)
    median = {name: statistics.median(values) for name, values in rates.items()}
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{SPEC.layers}x{SPEC.hidden} {SPEC.cell}, {params / 1e6:.2f} M parameters, fp32, argmax, {args.length} chars"
    )
    print(f"torch {torch.__version__}; chromium with onnxruntime-web {web.npm.VERSION} (wasm, 1 thread)")
    print("the page's text equals rnnfarm sample --argmax's on every run\n")
    base = median["torch"]
    for label, name in [
        (f"rnnfarm sample ({threads} threads, baseline)", "torch"),
        ("rnnfarm sample (1 thread)", "torch1"),
        ("the exported page in headless Chromium", "browser"),
    ]:
        print(f"  {label:<44} {median[name]:>8,.0f} chars/s  x{median[name] / base:.2f}")


if __name__ == "__main__":
    main()
