"""Sampling speed of a 3x512 LSTM, in characters per second, three ways in the same run:

1. a plain-PyTorch incremental loop over the model, the same ops as rnnfarm's written out by hand, with
   PyTorch's default kernels (the baseline), and the same loop with oneDNN's RNN kernels turned off;
2. rnnfarm (``rnnfarm.insight.sample.characters``: ``model.generate`` stepped with PyTorch's native RNN kernels);
3. the naive way: the whole text so far run through the model again for every new character (default kernels).

Also the layer-by-layer trace behind ``rnnfarm viz`` (every cell state at every character) against one
forward pass of the model over the same text, which yields only the top layer's outputs.

    .venv/bin/python bench/sampling.py [--length 500] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rnnfarm.corpus.vocab import Vocab
from rnnfarm.engine.model import CharRNN
from rnnfarm.insight import viz
from rnnfarm.insight.sample import characters
from rnnfarm.spec import ModelSpec

# 65 symbols, as many as tiny Shakespeare has.
VOCAB = Vocab(("\n", *(chr(c) for c in range(32, 96))))
TEMPERATURE, SEED = 0.8, 1


def rnnfarm_way(model: CharRNN, length: int) -> list[int]:
    gen = torch.Generator().manual_seed(SEED)
    return [VOCAB.symbols.index(c) for c in characters(model, VOCAB, "\n", length, TEMPERATURE, generator=gen)]


@torch.no_grad()
def plain_loop_native(model: CharRNN, length: int) -> list[int]:
    torch.backends.mkldnn.enabled = False
    try:
        return plain_loop(model, length)
    finally:
        torch.backends.mkldnn.enabled = True


@torch.no_grad()
def plain_loop(model: CharRNN, length: int) -> list[int]:
    gen = torch.Generator().manual_seed(SEED)
    token, state, out = torch.tensor([[0]]), None, []
    for _ in range(length):
        logits, state = model(token, state)
        probs = torch.softmax(logits[0, -1].float() / TEMPERATURE, dim=-1)
        token = torch.multinomial(probs, 1, generator=gen).view(1, 1)
        out.append(int(token))
    return out


@torch.no_grad()
def recompute_prefix(model: CharRNN, length: int) -> list[int]:
    gen = torch.Generator().manual_seed(SEED)
    ids = [0]
    for _ in range(length):
        logits, _ = model(torch.tensor([ids]))
        probs = torch.softmax(logits[0, -1].float() / TEMPERATURE, dim=-1)
        ids.append(int(torch.multinomial(probs, 1, generator=gen)))
    return ids[1:]


def timed(fns: dict[str, object], repeats: int) -> dict[str, tuple[float, object]]:
    """Median seconds and last result of each function, run in turns so that load on the machine hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    results: dict[str, object] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), results[name]) for name in fns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=500, help="characters per sample")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each incremental way (median)")
    parser.add_argument("--text", type=int, default=2000, help="characters of text for the trace")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = CharRNN(len(VOCAB), ModelSpec(layers=3, hidden=512, embedding=64)).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"3x512 LSTM, 64-dim embedding, {len(VOCAB)} symbols: {params / 1e6:.2f} M parameters")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch 1, temperature {TEMPERATURE}\n")
    rnnfarm_way(model, 20)  # warm-up

    n = args.length
    ways = {
        "plain": lambda: plain_loop(model, n),
        "native": lambda: plain_loop_native(model, n),
        "rnnfarm": lambda: rnnfarm_way(model, n),
    }
    got = timed(ways, args.repeats)
    (base_s, base), (native_s, native), (ours_s, ours) = got["plain"], got["native"], got["rnnfarm"]
    naive_s, naive = timed({"naive": lambda: recompute_prefix(model, n)}, 1)["naive"]
    assert ours == native, "rnnfarm and the plain loop on the same kernels must draw the same characters"

    def agree(a: list[int], b: list[int]) -> int:
        """How many first characters two samples share (float rounding differs between kernels)."""
        return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))

    print(f"sampling {n} characters (median of {args.repeats}, in turns; the naive way once):")
    print(f"  plain PyTorch incremental loop (baseline)    {n / base_s:9,.0f} chars/s  x1.00")
    print(f"  the same loop, oneDNN's RNN kernels off      {n / native_s:9,.0f} chars/s  x{base_s / native_s:.2f}")
    print(f"  rnnfarm sample                               {n / ours_s:9,.0f} chars/s  x{base_s / ours_s:.2f}")
    print(f"  naive: whole prefix recomputed per char      {n / naive_s:9,.0f} chars/s  x{base_s / naive_s:.3f}")
    print(
        f"  (rnnfarm drew the text the loop on the same kernels drew; its first {agree(ours, base)} characters "
        f"match the baseline's, the naive way's first {agree(naive, base)})\n"
    )

    text = ("".join(VOCAB.symbols[i] for i in ours) * (args.text // n + 1))[: args.text]
    ids = torch.from_numpy(VOCAB.encode(text).astype("int64"))[None]
    with torch.no_grad():
        got = timed({"forward": lambda: model(ids), "trace": lambda: viz.trace(model, VOCAB, text)}, args.repeats)
    forward_s, trace_s = got["forward"][0], got["trace"][0]
    t = len(text)
    print(f"reading {t} characters (median of {args.repeats}, in turns):")
    print(f"  one forward pass, top layer's h only (baseline)  {t / forward_s:9,.0f} chars/s  x1.00")
    print(f"  rnnfarm viz trace, every layer's c and h         {t / trace_s:9,.0f} chars/s  x{forward_s / trace_s:.2f}")


if __name__ == "__main__":
    main()
