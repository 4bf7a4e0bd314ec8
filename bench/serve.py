"""`rnnfarm serve` under load: requests/s, chars/s and time to first character at concurrency 1, 8 and 32,
against a plain single-process loop generating the same requests one after another, in the same run.

The server runs on an embedded local Ray (one replica); every request streams (``stream: true``) so that
its first character's arrival is seen. The plain loop is `rnnfarm sample`'s way (``rnnfarm.sample.characters``
over the loaded model, batch 1), each request seeded as the server seeds it; the run also counts the
characters where the server's texts differ from the loop's (see rnnfarm/serving/serve.py on why they could).
Weights are random: speed does not depend on them.

    .venv/bin/python bench/serve.py [--requests 64] [--length 200] [--layers 2] [--hidden 128]
"""

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

from rnnfarm.corpus.vocab import Vocab
from rnnfarm.engine import checkpoint
from rnnfarm.engine.model import CharRNN
from rnnfarm.insight.sample import characters
from rnnfarm.launch.pipeline import free_ports, start_local_ray
from rnnfarm.serving import serve as serving
from rnnfarm.spec import ModelSpec

VOCAB = Vocab(("\n", *(chr(c) for c in range(32, 96))))  # 65 symbols, as many as tiny Shakespeare has
TEMPERATURE = 0.8


def bodies(count: int, length: int) -> list[dict]:
    return [{"prime": "ROMEO:", "length": length, "temperature": TEMPERATURE, "seed": i} for i in range(count)]


def plain_loop(model: CharRNN, asked: list[dict]) -> tuple[float, list[str]]:
    """Seconds to generate every request one after another in this process, and the texts."""
    start, texts = time.perf_counter(), []
    for body in asked:
        gen = torch.Generator().manual_seed(body["seed"])
        texts.append("".join(characters(model, VOCAB, body["prime"], body["length"], TEMPERATURE, generator=gen)))
    return time.perf_counter() - start, texts


def one_request(url: str, body: dict) -> tuple[float, str]:
    """Seconds to the first character, and the whole streamed text."""
    start = time.perf_counter()
    with requests.post(f"{url}/generate", json={**body, "stream": True}, stream=True, timeout=600) as reply:
        reply.raise_for_status()
        chunks = reply.iter_content(chunk_size=None, decode_unicode=True)
        first = next(chunks)
        first_s = time.perf_counter() - start
        return first_s, first + "".join(chunks)


def served(url: str, asked: list[dict], concurrency: int) -> tuple[float, list[float], list[str]]:
    """Wall seconds for every request at this concurrency, each one's time to first character, the texts."""
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(lambda body: one_request(url, body), asked))
    return time.perf_counter() - start, [d[0] for d in done], [d[1] for d in done]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="requests at each concurrency")
    parser.add_argument("--length", type=int, default=200, help="characters per request")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--embedding", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=1, help="the replica's CPUs, and torch threads of both ways")
    args = parser.parse_args()
    torch.set_num_threads(args.cpus)  # Ray gives the replica as many (OMP_NUM_THREADS)

    torch.manual_seed(0)
    model = CharRNN(len(VOCAB), ModelSpec(layers=args.layers, hidden=args.hidden, embedding=args.embedding)).eval()
    asked = bodies(args.requests, args.length)
    chars = args.requests * args.length
    with tempfile.TemporaryDirectory(prefix="rnnfarm-bench-serve-") as tmp:
        checkpoint.save_model(Path(tmp), model, VOCAB, {"step": 0})
        model, _, _ = checkpoint.load_model(Path(tmp))
        params = sum(p.numel() for p in model.parameters())
        shape = f"{args.layers}x{args.hidden} LSTM, {args.embedding}-dim embedding"
        print(f"{shape}, {len(VOCAB)} symbols, {params:,} weights")
        print(f"{args.requests} requests of {args.length} characters, temperature {TEMPERATURE}, one replica")
        print(f"torch {torch.__version__}, {args.cpus} thread(s) in the loop and in the replica, fp32\n")

        plain_s, plain_texts = plain_loop(model, asked)
        start_local_ray(num_cpus=args.cpus)
        url = serving.start(
            serving.ServeArgs(checkpoint=tmp, cpus_per_replica=args.cpus, max_length=args.length), port=free_ports(1)[0]
        ).url
        try:
            served(url, asked[:4], 4)  # warm-up
            rows = []
            for concurrency in (1, 8, 32):
                wall, firsts, texts = served(url, asked, concurrency)
                rows.append((concurrency, wall, firsts, texts))
        finally:
            serving.stop()

    print(f"{'':32} {'requests/s':>10} {'chars/s':>9} {'vs loop':>8} {'first char p50':>15} {'p99':>9}")
    print(f"{'plain loop, one after another':32} {args.requests / plain_s:10.2f} {chars / plain_s:9,.0f} {'x1.00':>8}")
    for concurrency, wall, firsts, _ in rows:
        p50, p99 = percentile(firsts, 50) * 1000, percentile(firsts, 99) * 1000
        print(
            f"{f'rnnfarm serve, concurrency {concurrency}':32} {args.requests / wall:10.2f} {chars / wall:9,.0f} "
            f"{f'x{plain_s / wall:.2f}':>8} {p50:12.1f} ms {p99:6.1f} ms"
        )
    differing = sum(
        a != b
        for _, _, _, texts in rows
        for t, p in zip(texts, plain_texts, strict=True)
        for a, b in zip(t, p, strict=True)
    )
    print(f"\ncharacters where a served text differs from the loop's: {differing} of {3 * chars:,}")


if __name__ == "__main__":
    main()
