"""Fine-tuning against training from scratch: val loss at equal steps on a new text.

A parent is trained on tiny Shakespeare (or given with ``--parent``: a run, a trial's folder or a checkpoint);
then the same child job is trained in-process twice on ``--text``, once from the parent's weights
(``train.init_from``) and once from scratch. Both read the text encoded with the parent's vocabulary
(``corpus.vocab_from``; new symbols appended), so their val losses are on the same split and the same symbols.
Prints one JSON line per evaluation and a summary; ``--figure`` draws both val curves as an SVG.

    .venv/bin/python bench/finetune.py --parent rnnfarm-data/runs/shakespeare-quality \\
        --text https://www.gutenberg.org/cache/epub/11/pg11.txt --steps 300 --eval-every 25 --figure finetune.svg

BENCHMARKS.md's figure fine-tunes the quality run on two of Jane Austen's novels from Debian (bench/austen.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rnnfarm import log, spec
from rnnfarm.corpus.build import build
from rnnfarm.engine.loop import Job, LocalSession, train
from rnnfarm.launch.pipeline import parent_of
from rnnfarm.layout import Run, Trial
from rnnfarm.storage import Store


def job(args: argparse.Namespace, name: str, corpus: dict[str, Any], steps: int, **train_extra: Any) -> spec.JobSpec:
    return spec.parse(
        {
            "name": name,
            "storage": args.storage,
            "corpus": corpus,
            "model": {
                "layers": args.layers,
                "hidden": args.hidden,
                "embedding": args.embedding,
                "dropout": args.dropout,
            },
            "train": {
                "steps": steps,
                "batch_size": args.batch,
                "seq_len": args.seq_len,
                "lr": args.lr,
                "warmup_steps": min(20, steps // 10),
                "eval_every": args.eval_every,
                **train_extra,
            },
            "samples": {"temperatures": [1.0], "length": 1},
            "cluster": {"workers": 1, "threads_per_worker": args.threads},
        }
    )


def trained_parent(args: argparse.Namespace, tmp: Path) -> str:
    """A parent trained in-process on tiny Shakespeare: its last checkpoint folder."""
    parent = job(args, "bench-finetune-parent", {"name": "shakespeare"}, args.parent_steps, lr=args.parent_lr)
    built = build(Store.at(args.storage), parent.corpus)
    train(Job(parent, built.folder, Trial(Store.at(str(tmp)) / "parent")), LocalSession(tmp / "parent"))
    return str(sorted((tmp / "parent").glob("checkpoint-*"))[-1])


def curve(child: spec.JobSpec, tmp: Path, name: str) -> list[dict[str, Any]]:
    """The child job trained in-process: its evaluations (from the parent's weights where it names one)."""
    parent, vocab = parent_of(child)
    built = build(Store.at(child.storage), child.corpus, vocab)
    session = LocalSession(tmp / name)
    train(Job(child, built.folder, Run(Store.at(str(tmp)) / name).trial(), parent), session)
    return session.reports


def draw(curves: dict[str, list[dict[str, Any]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, reports in curves.items():
        ax.plot([r["step"] for r in reports], [r["val_loss"] for r in reports], marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("val loss (nats/char)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", required=True, help="The new text: a file, or any URL the files corpus reads.")
    parser.add_argument("--parent", help="A run, a trial's folder or a checkpoint (default: train one here).")
    parser.add_argument("--parent-steps", type=int, default=600)
    parser.add_argument("--parent-lr", type=float, default=0.003)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--storage", default="./rnnfarm-data")
    parser.add_argument("--figure", help="Write the two val loss curves here (SVG).")
    parser.add_argument("--results", type=Path, help="Add the summary and both curves to this JSON file, by text.")
    args = parser.parse_args()
    log.configure("json")

    with tempfile.TemporaryDirectory(prefix="rnnfarm-bench-") as tmp:
        parent = args.parent or trained_parent(args, Path(tmp))
        text = {"name": "files", "options": {"url": args.text}}
        curves = {
            "fine-tuned": curve(job(args, "bench-finetune", text, args.steps, init_from=parent), Path(tmp), "fine"),
            "from scratch": curve(
                job(args, "bench-scratch", {**text, "vocab_from": parent}, args.steps), Path(tmp), "scratch"
            ),
        }
    for label, reports in curves.items():
        for r in reports:
            print(json.dumps({"run": label, "step": r["step"], "val_loss": r["val_loss"], "val_bpc": r["val_bpc"]}))
    fine, scratch = (min(r["val_loss"] for r in curves[k]) for k in ("fine-tuned", "from scratch"))
    text = Path(args.text).read_bytes() if Path(args.text).is_file() else None
    summary = {
        "parent": parent,
        "text": args.text,
        "text_sha256": hashlib.sha256(text).hexdigest() if text else None,
        "steps": args.steps,
        "fine_tuned": fine,
        "from_scratch": scratch,
    }
    print(json.dumps(summary))
    if args.results:
        kept = json.loads(args.results.read_text()) if args.results.exists() else {}
        kept[Path(args.text).name] = {
            **summary,
            "command": "python bench/finetune.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "curves": {k: [{"step": r["step"], "val_loss": r["val_loss"]} for r in v] for k, v in curves.items()},
        }
        args.results.write_text(json.dumps(kept, indent=1) + "\n")
    if args.figure:
        draw(curves, args.figure)


if __name__ == "__main__":
    main()
