"""Training throughput: rnnfarm's loop against a plain PyTorch loop of the same model, in the same run.

rnnfarm's figure is the ``chars_per_s`` its own loop reports (``train()`` in-process on a
``LocalSession``: one worker). The plain loop is the hand-written way: the same embedding -> LSTM ->
linear model, batch, sequence length, optimizer and clipping, the hidden state carried between windows
of a token tensor held in memory. Neither times data loading: rnnfarm's loop reads its streams' tokens
from the corpus shards before its first step, as the plain loop gets its tensor before its timer
starts, and inside the timed steps both take each window from memory. Both start from the same weights
and read the same streams at a constant learning rate, so they compute the same numbers and only the
loops around them differ: before timing, each size's first steps are run in both loops and their
losses must agree (``same_losses``). Repetitions alternate between the two (and which goes first) so
other load on the machine hits both alike; the ratio is the median of the per-repetition ratios (their
range is printed too: on a machine shared with other work, single repetitions swing). "per CPU-s" is
the same ratio in chars per CPU-second of the process, which time spent waiting for a core does not
inflate.

    .venv/bin/python bench/throughput.py --sizes 2x128,2x512,3x512 --precision fp32 --reps 3

``--regularize P`` runs rnnfarm's loop with every regularizer of the model at P (weight drop, locked dropout
on the input and between layers, embedding dropout) against the same plain, unregularized loop: the cost of
the regularizers. Its losses differ from the plain loop's by design, so the first-steps check only warms up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rnnfarm import log, spec
from rnnfarm.corpus.build import build
from rnnfarm.corpus.vocab import Vocab
from rnnfarm.engine.loop import (
    Capability,
    Job,
    LocalSession,
    precision_policy,
    refuse_bf16_without_kernel,
    train,
)
from rnnfarm.engine.streams import load_tokens
from rnnfarm.errors import UserError
from rnnfarm.layout import Trial
from rnnfarm.storage import Store

SEED, LR = 1337, 2e-3  # both loops start from the same weights and take the same steps
CHECKED_STEPS = 3  # steps whose losses must agree between the loops
REGULARIZERS = ("weight_drop", "dropout_input", "dropout_between", "dropout_embedding")


def job_spec(args: argparse.Namespace, layers: int, hidden: int) -> spec.JobSpec:
    return spec.parse(
        {
            "name": "bench",
            "storage": args.storage,
            "corpus": {"name": "shakespeare", "val": 0.01},  # a short val split: the final evaluation is not timed
            "model": {
                "layers": layers,
                "hidden": hidden,
                "embedding": args.embedding,
                "dropout": 0.0,
                **{field: args.regularize for field in REGULARIZERS},
            },
            "train": {
                "steps": args.steps,
                "batch_size": args.batch,
                "seq_len": args.seq_len,
                "eval_every": args.steps,
                "log_every": args.steps,
                "precision": args.precision,
                "lr": LR,
                "warmup_steps": 0,
                "decay": "none",
                "seed": SEED,
            },
            "samples": {"temperatures": [1.0], "length": 1},
            "cluster": {"workers": 1, "threads_per_worker": args.threads},
        }
    )


def rnnfarm_loop(args: argparse.Namespace, built, layers: int, hidden: int) -> tuple[float, float]:
    """chars per second and per CPU second that rnnfarm's own loop reports over its steps."""
    job = job_spec(args, layers, hidden)
    with tempfile.TemporaryDirectory(prefix="rnnfarm-bench-") as tmp:
        session = LocalSession(Path(tmp) / "checkpoints", device=args.device)
        metrics = train(Job(job, built.folder, Trial(Store.at(tmp) / "trial")), session)
    return metrics["chars_per_s"], args.batch * args.seq_len / metrics["step_cpu_s"]


def rnnfarm_losses(args: argparse.Namespace, built, layers: int, hidden: int, steps: int) -> list[float]:
    """The train loss of each of rnnfarm's first ``steps`` steps (an evaluation after every step records it)."""
    job = job_spec(args, layers, hidden)
    job = job.model_copy(update={"train": job.train.model_copy(update={"steps": steps, "eval_every": 1})})
    with tempfile.TemporaryDirectory(prefix="rnnfarm-bench-") as tmp:
        trial = Trial(Store.at(tmp) / "trial")
        train(Job(job, built.folder, trial), LocalSession(Path(tmp) / "checkpoints", device=args.device))
        return [trial.metrics(s).read_json()["train_loss"] for s in range(1, steps + 1)]


class PlainLSTM(nn.Module):
    def __init__(self, vocab: int, embedding: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding)
        self.lstm = nn.LSTM(embedding, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)
        with torch.no_grad():  # forget-gate bias 1, as char-rnn's LSTMs start
            for layer in range(layers):
                getattr(self.lstm, f"bias_ih_l{layer}")[hidden : 2 * hidden].fill_(1.0)
                getattr(self.lstm, f"bias_hh_l{layer}")[hidden : 2 * hidden].fill_(0.0)

    def forward(self, x, state=None, recurrent_fp32: bool = False):
        """``recurrent_fp32``: the LSTM outside autocast, in fp32 (under CUDA autocast cuDNN's LSTM runs fp16
        whatever dtype autocast was given), as rnnfarm runs bf16 on a GPU."""
        inp = self.embed(x)
        if recurrent_fp32:
            with torch.autocast(x.device.type, enabled=False):
                out, state = self.lstm(inp.float(), None if state is None else tuple(s.float() for s in state))
        else:
            out, state = self.lstm(inp, state)
        return self.head(out), state


def plain_loop(
    args: argparse.Namespace, tokens: torch.Tensor, vocab: int, layers: int, hidden: int
) -> tuple[float, float, list[float]]:
    """The textbook loop: B contiguous streams, windows of T, state carried and detached, Adam, clipping; in
    the precision rnnfarm runs (autocast's dtype, the recurrent layers' dtype, a gradient scaler with fp16).
    Returns chars per second, per CPU second, and each step's loss (kept on the device until the end)."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = precision_policy(args.precision, Capability.of(device))
    dtype, recurrent_fp32 = precision.autocast, precision.autocast is not None and precision.recurrent == torch.float32
    scaler = torch.amp.GradScaler(device.type, enabled=precision.scaler)
    torch.manual_seed(SEED)
    model = PlainLSTM(vocab, args.embedding, hidden, layers).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=device.type == "cuda" or None)  # as rnnfarm's
    B, T = args.batch, args.seq_len
    n = (len(tokens) - 1) // B
    x_all, y_all = tokens[: B * n].view(B, n), tokens[1 : B * n + 1].view(B, n)
    state, losses = None, torch.zeros(args.steps, device=device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for step in range(args.steps):
        a = (step * T) % (n - T)
        x, y = x_all[:, a : a + T], y_all[:, a : a + T]
        if device.type == "cuda":
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            logits, state = model(x, state, recurrent_fp32)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        state = tuple(s.detach() for s in state)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        losses[step] = loss.detach()
    loss.item()  # waits for the device
    chars = args.steps * B * T
    return chars / (time.perf_counter() - start), chars / (time.process_time() - start_cpu), losses.tolist()


def same_losses(args: argparse.Namespace, built, tokens: torch.Tensor, vocab: int, layers: int, hidden: int) -> None:
    """Both loops' losses over the first steps agree within float tolerance (bf16 autocast rounds more), so the
    two compute the same numbers; raises AssertionError otherwise. Also warms both loops up."""
    steps, args.steps = args.steps, CHECKED_STEPS
    try:
        ours = rnnfarm_losses(args, built, layers, hidden, CHECKED_STEPS)
        theirs = plain_loop(args, tokens, vocab, layers, hidden)[2]
    finally:
        args.steps = steps
    tolerance = 1e-5 if args.precision == "fp32" else 1e-3  # half precision rounds more
    if args.regularize:
        return
    if not all(math.isclose(a, b, rel_tol=tolerance) for a, b in zip(ours, theirs, strict=True)):
        raise AssertionError(f"{layers}x{hidden}: the loops' first losses differ: rnnfarm {ours}, plain {theirs}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2x128,2x512,3x512", help="layers x hidden, comma-separated")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="as train.precision")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--storage", default="./rnnfarm-data")
    parser.add_argument("--regularize", type=float, default=0.0, help="every regularizer of rnnfarm's model at this")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    try:
        refuse_bf16_without_kernel(args.precision, torch.device(args.device))
    except UserError as exc:
        parser.error(str(exc))
    log.configure("json", level=40)

    built = build(Store.at(args.storage), job_spec(args, 1, 1).corpus)
    vocab = Vocab.from_json(built.manifest["vocab"])
    n_train = built.manifest["splits"]["train"]["chars"]
    tokens = torch.from_numpy(load_tokens(built.folder, built.manifest, "train", 0, n_train, vocab).astype("int64"))

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    # The first loop in a process pays one-off costs (kernel selection, allocator growth): the check warms both up.
    for L, H in sizes:
        same_losses(args, built, tokens, len(vocab), L, H)
    if not args.regularize:
        print(f"both loops' first {CHECKED_STEPS} losses agree at every size", file=sys.stderr)
    figures: dict[str, dict[str, list[tuple[float, float]]]] = {
        f"{L}x{H}": {"rnnfarm": [], "plain": []} for L, H in sizes
    }
    for rep in range(args.reps):
        for L, H in sizes:
            size = f"{L}x{H}"
            runs = {
                "rnnfarm": lambda L=L, H=H: rnnfarm_loop(args, built, L, H),
                "plain": lambda L=L, H=H: plain_loop(args, tokens, len(vocab), L, H),
            }
            for name in ["rnnfarm", "plain"] if rep % 2 == 0 else ["plain", "rnnfarm"]:
                figures[size][name].append(runs[name]()[:2])
            done = ", ".join(f"{name} {v[-1][0]:,.0f}" for name, v in figures[size].items())
            print(f"rep {rep + 1}/{args.reps} {size}: {done} chars/s", file=sys.stderr)

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"\n{device}, {args.precision}, batch {args.batch} x seq_len {args.seq_len}, {args.threads} thread(s), "
        f"{args.steps} steps x {args.reps} reps"
        + (f", rnnfarm with every regularizer at {args.regularize:g}" if args.regularize else "")
    )
    print(f"{'model':>8} {'rnnfarm chars/s':>16} {'plain chars/s':>14} {'ratio':>6} {'range':>13} {'per CPU-s':>9}")
    rows = []
    for size, runs in figures.items():
        ratios = [a[0] / b[0] for a, b in zip(runs["rnnfarm"], runs["plain"], strict=True)]
        cpu_ratio = statistics.median(a[1] / b[1] for a, b in zip(runs["rnnfarm"], runs["plain"], strict=True))
        ours, theirs = (statistics.median(r[0] for r in runs[name]) for name in ("rnnfarm", "plain"))
        ratio = statistics.median(ratios)
        print(
            f"{size:>8} {ours:>16,.0f} {theirs:>14,.0f} {ratio:>6.3f} {min(ratios):>6.3f}-{max(ratios):.3f} "
            f"{cpu_ratio:>9.3f}"
        )
        rows.append(
            {"model": size, "rnnfarm": ours, "plain": theirs, "ratio": ratio, "cpu_ratio": cpu_ratio, "runs": runs}
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"device": device, "precision": args.precision, "regularize": args.regularize, "rows": rows}, indent=2
            )
        )


if __name__ == "__main__":
    main()
