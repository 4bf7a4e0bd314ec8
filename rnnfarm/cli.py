"""The command line: parse, call the library, print. Errors in the user's input exit 2, in one line."""

from __future__ import annotations

import math
import posixpath
import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING

import click

from . import log
from .errors import TrainingFailed, UserError
from .redact import scrub

if TYPE_CHECKING:
    import torch


def _guarded(fn: Callable) -> Callable:
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"error: {scrub(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group()
@click.version_option(package_name="rnnfarm")
def cli() -> None:
    """rnnfarm: distributed training of character-level recurrent language models on Ray."""
    log.configure()


@cli.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--name", help="Run name (default: the spec's name). The same name continues that run.")
@click.option(
    "--address",
    help="local, auto, or a Ray dashboard URL (http://HEAD:8265) to submit to; overrides RAY_ADDRESS and the spec.",
)
@click.option("--no-wait", is_flag=True, help="On a cluster: submit, print the job id, and return at once.")
@click.option("--env-file", hidden=True, type=click.Path(dir_okay=False, exists=True))  # a submitted job's variables
@click.option("--verbose", "-v", is_flag=True, help="On a terminal, show info events too (as short lines).")
@_guarded
def run(
    spec_file: str, name: str | None, address: str | None, no_wait: bool, env_file: str | None, verbose: bool
) -> None:
    """Build the corpus, train, and keep the best checkpoint and samples, as SPEC_FILE describes.

    On a terminal a live display shows the progress, and only warnings and errors are printed above it;
    every event goes to the run's log file (log.jsonl in the run folder, its location printed first).
    Elsewhere (a pipe, CI) the events are JSON lines on stderr.

    With a cluster address the job is submitted to that Ray cluster and its logs follow here; Ctrl-C
    detaches (the job goes on), and the exit code is the job's: 0 when it succeeded.
    """
    from . import spec
    from .launch import pipeline, progress, submit
    from .layout import Run
    from .storage import Store

    if env_file:
        submit.load_env_file(env_file)
    if name is not None:
        spec.run_name(name)
    job_spec = spec.load(spec_file)
    job_spec = submit.with_address(job_spec, submit.resolve_address(job_spec.cluster.address, address))
    if submit.is_remote(job_spec.cluster.address):
        sys.exit(submit_and_follow(job_spec, name, no_wait))
    if no_wait:
        raise UserError("--no-wait applies to a job submitted to a cluster: give a cluster address (--address)")
    the_run = Run.under(Store.at(job_spec.storage, job_spec.storage_options), name or job_spec.name)
    try:
        with progress.follow(the_run, job_spec, verbose=verbose) as followed:
            outcome = pipeline.run(job_spec, name)
    except TrainingFailed as exc:
        click.echo(f"error: {scrub(str(exc))}", err=True)
        sys.exit(1)
    if followed is not None and followed.terminal is not None:
        from .launch import display

        display.summary(outcome, job_spec, followed.terminal.console)
        print_sample(outcome, job_spec)
    else:
        print_outcome(outcome, job_spec)


def submit_and_follow(job_spec, name: str | None, no_wait: bool) -> int:
    """Submit; then follow the job's logs to its end, or return at once. The exit code follows the job."""
    from .launch import submit

    submitted = submit.submit(job_spec, name)
    job, address = submitted.job_id, submitted.cluster.address
    click.echo(f"submitted job {job} to {address}")
    later = f"--address {address}"
    if no_wait:
        click.echo(f"follow it: rnnfarm jobs logs {job} --follow {later}")
        click.echo(f"stop it:   rnnfarm jobs stop {job} {later}")
        return 0
    try:
        info = submitted.cluster.follow(job, lambda chunk: click.echo(chunk, nl=False))
    except KeyboardInterrupt:
        click.echo(f"\ndetached: job {job} goes on. Follow it again: rnnfarm jobs logs {job} --follow {later}")
        click.echo(f"stop it: rnnfarm jobs stop {job} {later}")
        return 130
    return job_ended(info, submitted.run_url)


def job_ended(info, run_url: str | None = None) -> int:
    """One line on how a job ended (and where its results are); returns the exit code it calls for."""
    from .launch import submit

    code, job = submit.exit_code(info), info.submission_id
    if code == 0:
        click.echo(f"job {job} succeeded")
        if run_url:
            click.echo(f"results: {run_url}\npull them: rnnfarm pull {run_url}")
        return 0
    message = submit.summary(info)["message"] or ""
    click.echo(f"error: job {job} {str(info.status).lower()}: {message}", err=True)
    return code


def print_outcome(outcome, job_spec) -> None:
    """The end of a run as plain lines (off a terminal)."""
    from .insight import ngram
    from .launch.display import landed
    from .runs.leaderboard import format_table

    best, run = outcome.best, outcome.run
    click.echo(f"\nrun {run.name}: {outcome.record['status']}")
    if len(outcome.rows) > 1:
        click.echo(format_table(outcome.rows) + "\n")
    click.echo(
        f"best val loss {best['val_loss']:.4f} nats/char ({best['val_bpc']:.4f} bits/char) "
        f"at step {best['step']} of trial {best['trial']}"
    )
    if "test_loss" in best:
        click.echo(f"test loss {best['test_loss']:.4f} nats/char ({best['test_bpc']:.4f} bits/char) at that checkpoint")
    ngrams = ngram.of_run(outcome.record, run.store.options)
    if ngrams is not None:
        click.echo(f"n-gram baseline: val {ngram.line(ngrams)}")
    for what, where in landed(outcome, job_spec):
        click.echo(f"{what + ':':<17}{where}")
    print_sample(outcome, job_spec)


def print_sample(outcome, job_spec) -> None:
    """The best checkpoint's sample at the temperature the hint names."""
    from .launch.display import shown_temperature

    shown = outcome.run.best_samples
    if shown.exists():
        drawn = shown.read_json()["samples"]
        pick = min(drawn, key=lambda s: abs(s["temperature"] - shown_temperature(job_spec)))
        click.echo(f"\n--- sample at step {outcome.best['step']}, temperature {pick['temperature']} ---")
        click.echo(pick["prime"] + pick["text"])


@cli.command("samples")
@click.argument("run_url")
@click.option("--trial", help="Trial id (default: the run's best trial).")
@click.option("--step", type=int, help="Only the samples drawn at this step.")
@click.option("--temperature", "-t", type=float, help="Only the samples drawn at this temperature.")
@_guarded
def show_samples(run_url: str, trial: str | None, step: int | None, temperature: float | None) -> None:
    """Show how a trial's samples evolved while it trained (RUN_URL: a run folder or URL)."""
    from .layout import RECORD, Run
    from .runs import archive
    from .storage import Store

    run = Run(Store.at(run_url))
    info = run.info()
    if info is None:
        raise UserError(f"{run_url}: not a run (no {RECORD})")
    trial = trial or (info.get("best") or {}).get("trial")
    if trial is None or not run.trial(trial).sample_files():
        known = ", ".join(run.trials()) or "none"
        raise UserError(f"run {run.name} has no samples for trial {trial!r} (trials: {known}); pass --trial")
    rows = [
        r
        for r in archive.read(run.trial(trial))
        if (step is None or r["step"] == step) and (temperature is None or math.isclose(r["temperature"], temperature))
    ]
    if not rows:
        raise UserError(f"trial {trial} has no samples at that step/temperature")
    click.echo(f"trial {trial} of run {run.name}")
    click.echo(archive.render(rows))


def _device_option(fn: Callable) -> Callable:
    return click.option(
        "--device",
        default="auto",
        show_default=True,
        help="Where the model runs: cpu, cuda, cuda:N, or auto (cuda where torch sees a GPU, else cpu).",
    )(fn)


@cli.command("sample")
@click.argument("target")
@click.option("--trial", help="A trial of the run TARGET: sample its best kept checkpoint instead of the run's best.")
@click.option("--temperature", "-t", type=float, default=1.0, show_default=True)
@click.option(
    "--prime",
    "-p",
    default="\n",
    help="Text to start from (its characters must be in the vocabulary); \\n, \\t and \\\\ as typed in a shell "
    "are a newline, a tab and a backslash.",
)
@click.option(
    "--prime-file",
    type=click.Path(dir_okay=False),
    help="Start from the text of this UTF-8 file (a path or a storage URL) instead of --prime.",
)
@click.option("--length", "-l", type=click.IntRange(min=1), default=500, show_default=True)
@click.option(
    "-n",
    "count",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many samples (records with --stop).",
)
@click.option("--seed", type=int, default=None, help="Seed for reproducible samples.")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Sample among the k most likely only.")
@click.option("--argmax", is_flag=True, help="Always take the most likely character.")
@click.option("--stream", is_flag=True, help="Print each character as it is generated (each record, with --stop).")
@click.option(
    "--stop",
    "stops",
    multiple=True,
    help="Repeatable. Make records: each sample ends where this text first ends and is printed without it or "
    "the prime, one record a line (a newline in it printed as \\n); a sample that reaches --length first is "
    "discarded. Takes \\n, \\t and \\\\ as --prime does.",
)
@click.option("--unique", is_flag=True, help="With --stop: no record twice.")
@click.option("--novel", is_flag=True, help="With --stop: only records that are not a whole record of the train text.")
@click.option(
    "--tries",
    type=click.IntRange(min=1),
    help="With --stop: the most samples to draw for -n records (default 10 per record, at least 100); "
    "when they give fewer, those are printed and a last line says why (exit 2).",
)
@click.option(
    "--novelty",
    is_flag=True,
    help="After each sample, the novelty meter: its longest span copied from the train split and the share of "
    "its 8-grams found there (on stderr with --stop).",
)
@click.option(
    "--corpus",
    "corpus_url",
    help="For --novel/--novelty: the run's corpus folder, where it is not at the "
    "run's recorded storage (a pulled run).",
)
@_device_option
@_guarded
def generate_text(
    target: str,
    trial: str | None,
    temperature: float,
    prime: str,
    prime_file: str | None,
    length: int,
    count: int,
    seed: int | None,
    top_k: int | None,
    argmax: bool,
    stream: bool,
    stops: tuple[str, ...],
    unique: bool,
    novel: bool,
    tries: int | None,
    novelty: bool,
    corpus_url: str | None,
    device: str,
) -> None:
    """Generate text from TARGET: a checkpoint folder, a run (its best checkpoint) or, with --trial, a run's
    trial; local or remote. The text a seed draws is the same on any --device but for near ties (README).

    With --stop it makes records, such as names: `--prime "\\n" --stop "\\n" -n 100 --unique --novel`."""
    import torch

    from .corpus import novelty as meter
    from .engine.device import memory_named, pick
    from .insight import records
    from .insight.sample import characters, check, load, read_prime

    where = pick(device)
    if prime_file is not None:
        if prime != "\n":
            raise UserError("give --prime or --prime-file, not both")
        prime = read_prime(prime_file)
    else:
        prime = records.unescape(prime)
    stops = tuple(records.unescape(s) for s in stops)
    if (unique or novel or tries) and not stops:
        raise UserError("--unique, --novel and --tries choose among records: give --stop too")
    records.check(stops, count, tries)
    check(prime, temperature)
    model, vocab, meta = load(target, trial=trial, device=where)
    index = meter.open_index(meter.corpus_of(meta, corpus_url)) if novel or novelty else None
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    named = {"batch": f"one prime of {len(prime)} characters", "lower": "the prime's length", "device_option": True}

    def drawn():
        with memory_named(where, model=model, **named):
            yield from characters(model, vocab, prime, length, temperature, top_k, argmax, generator)

    if stops:
        novel_test = (lambda r: not index.is_record(r, stops)) if novel else None
        keeper = records.Keeper(unique=unique, novel=novel_test)
        budget = tries or records.default_tries(count)
        search = records.Search(prime=prime, stops=stops, count=count, keeper=keeper, tries=budget)
        found = []
        for record in records.records(search, drawn):
            found.append(record)
            if stream:
                show_record(len(found), record, index if novelty else None)
        if not stream:
            for i, record in enumerate(found):
                show_record(i + 1, record, index if novelty else None)
        if error := search.shortfall():
            raise error
        return
    for i in range(count):
        if count > 1:
            click.echo(("\n" if i else "") + f"--- sample {i + 1} of {count} ---")
        text = []
        if stream:
            click.echo(prime, nl=False)
            for char in drawn():
                text.append(char)
                click.echo(char, nl=False)
                sys.stdout.flush()
            click.echo()
        else:
            text = list(drawn())
            click.echo(prime + "".join(text))
        if index is not None:
            click.echo(index.meter("".join(text)).line())


def show_record(number: int, record: str, index) -> None:
    """A record on its line of stdout; with an index, its novelty meter on stderr."""
    from .insight.records import escape

    click.echo(escape(record))
    sys.stdout.flush()
    if index is not None:
        click.echo(f"record {number}: {index.meter(record).line()}", err=True)


@cli.command("evaluate")
@click.argument("target")
@click.option(
    "--split",
    type=click.Choice(["val", "test", "val+test"]),
    default="val",
    show_default=True,
    help="val+test: the two scored as one text, val then test.",
)
@click.option("--trial", help="A trial of the run TARGET: its best kept checkpoint instead of the run's best.")
@click.option("--storage", help="Where the checkpoint's corpus is (default: the storage its spec names).")
@click.option("--streams", type=click.IntRange(min=1), help="Cut the split into this many streams (eval.streams).")
@click.option("--warmup", type=click.IntRange(min=0), help="Unscored targets a stream or window starts with.")
@click.option("--windows", type=click.IntRange(min=1), help="Score this many random windows instead (nanoGPT: 12800).")
@click.option("--window", type=click.IntRange(min=1), help="Targets a random window scores (nanoGPT: 256).")
@click.option("--seed", type=int, help="The draw of the random windows.")
@click.option(
    "--cold-start",
    type=click.IntRange(min=1),
    help="Instead: the loss at the first this many positions after a zero state, beside the same targets read "
    "after --context characters (in --windows random windows, default 4000).",
)
@click.option("--context", type=click.IntRange(min=1), default=256, show_default=True, help="With --cold-start.")
@_device_option
@_guarded
def evaluate_command(
    target: str,
    split: str,
    trial: str | None,
    storage: str | None,
    cold_start: int | None,
    context: int,
    device: str,
    **cut: int | None,
) -> None:
    """Print the loss of TARGET (a checkpoint folder, or a run: its best checkpoint) on a split of its corpus,
    cut as the spec's eval section says (the same whatever the batch and workers it was trained with), or as
    the options here say over it; with --cold-start, what starting from a zero state costs it."""
    from .engine.device import pick
    from .insight.evaluate import checkpoint_loss
    from .units import bits

    where = pick(device)
    asked = {name: value for name, value in cut.items() if value is not None}
    if cold_start is not None:
        cold_start_command(target, split, trial, storage, positions=cold_start, context=context, device=where, **asked)
        return
    scored = checkpoint_loss(target, split=split, trial=trial, storage=storage, cut=asked, device=where)
    click.echo(
        f"{split} loss {scored.loss:.4f} nats/char ({bits(scored.loss):.4f} bits/char) at step {scored.step} "
        f"({scored.cut.describe()})"
    )


def cold_start_command(
    target: str,
    split: str,
    trial: str | None,
    storage: str | None,
    *,
    positions: int,
    context: int,
    device: torch.device,
    **cut: int,
) -> None:
    """`rnnfarm evaluate --cold-start`: the mean loss at the first positions after a zero state, at the same
    targets after some context, what the zero state costs, and the loss position by position."""
    from .insight.evaluate import cold_start

    other = sorted(set(cut) - {"windows", "seed"})
    if other:
        raise UserError(f"--cold-start draws its own windows: give --windows and --seed with it, not --{other[0]}")
    scored = cold_start(
        target, positions=positions, split=split, trial=trial, storage=storage, context=context, device=device, **cut
    )
    click.echo(
        f"{split} loss at the first {positions} positions after a zero state {scored.cold_loss:.4f} nats/char; "
        f"at the same targets after {context} chars of context {scored.warm_loss:.4f}; a cold start costs "
        f"{scored.cost:.4f} nats/char ({scored.describe()})"
    )
    click.echo("by position (zero state): " + " ".join(f"{loss:.3f}" for loss in scored.cold))


@cli.command()
@click.argument("target")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True, help="Copies of the model.")
@click.option("--cpus-per-replica", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option(
    "--gpus-per-replica",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="GPUs Ray gives each replica (0.25: four share one GPU); the model runs on the GPU torch sees there.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--max-length", type=click.IntRange(min=1), default=2000, show_default=True, help="Longest text asked.")
@click.option(
    "--address",
    help="Ray to serve on: local (default; an embedded Ray), auto (this machine's cluster), or a cluster's dashboard "
    "URL (http://HEAD:8265), where the application stays until `serve shutdown`. RAY_ADDRESS sets it too.",
)
@click.option(
    "--corpus",
    "corpus_url",
    help="For requests asking novel/novelty: the model's corpus folder, where it is not at the run's recorded storage.",
)
@_guarded
def serve(
    target: str,
    replicas: int,
    cpus_per_replica: float,
    gpus_per_replica: float,
    host: str,
    port: int,
    max_length: int,
    address: str | None,
    corpus_url: str | None,
) -> None:
    """Serve TARGET (a checkpoint folder, or a run: its best checkpoint) over HTTP with Ray Serve:
    POST /generate, GET /healthz, GET /model. On a local Ray, Ctrl-C stops it."""
    import time

    from .launch.submit import is_remote, resolve_address
    from .serving import serve as serving

    args = serving.ServeArgs(
        checkpoint=target,
        replicas=replicas,
        cpus_per_replica=cpus_per_replica,
        gpus_per_replica=gpus_per_replica,
        max_length=max_length,
        corpus=corpus_url,
    )
    where = resolve_address("local", address)
    copies = f"{replicas} replica{'s' if replicas > 1 else ''}"

    def example(url: str) -> str:
        return f"try: curl -s {url}/generate -d '{serving.EXAMPLE}'"

    if is_remote(where):
        served = serving.deploy(args, where, host=host, port=port)
        click.echo(f"serving {scrub(target)} on the Ray cluster at {where}: {served.url} ({copies})")
        click.echo(example(served.url))
        click.echo(f"stop it with: serve shutdown --address {where} --yes")
        return
    served = serving.start(args, host=host, port=port, address=where)
    click.echo(f"serving {scrub(target)} at {served.url} ({copies})")
    click.echo(example(served.url))
    try:
        while True:
            time.sleep(3600)
    finally:
        serving.stop()


@cli.group()
def viz() -> None:
    """Look inside a checkpoint: its cells firing on a text, its guesses for each next character."""


def _viz_options(fn: Callable) -> Callable:
    """The options both viz pages take: the text, how much of it, a trial of a run, and the device."""
    fn = _device_option(fn)
    fn = click.option("--trial", help="A trial of the run TARGET: its best kept checkpoint.")(fn)
    fn = click.option("--max-chars", type=click.IntRange(min=1), default=2000, show_default=True)(fn)
    return click.option("--text", "text_file", required=True, help="A UTF-8 text file (a path or a storage URL).")(fn)


def _viz_title(target: str, trial: str | None, text_file: str) -> str:
    name = posixpath.basename(target.rstrip("/"))
    return f"{name}{f' trial {trial}' if trial else ''} on {posixpath.basename(text_file)}"


def _write_page(out: str, html: str) -> None:
    from .storage import Store

    Store.at(out).write_text(html)
    click.echo(f"wrote {scrub(out)} ({_size(len(html.encode()))}): open it in a browser")


@viz.command("neurons")
@click.argument("target")
@_viz_options
@click.option("--layer", type=int, help="Show this layer's --cell (layers count from 0).")
@click.option("--cell", type=int, help="The cell of --layer to show (cells count from 0).")
@click.option("--top", type=click.IntRange(min=1), help="Show the N cells that track a text feature best.")
@click.option("--signal", type=click.Choice(["cell", "output"]), default="cell", show_default=True)
@click.option("--out", "-o", default="neurons.html", show_default=True, help="The file to write (one HTML page).")
@_guarded
def viz_neurons(
    target: str,
    text_file: str,
    max_chars: int,
    trial: str | None,
    layer: int | None,
    cell: int | None,
    top: int | None,
    signal: str,
    out: str,
    device: str,
) -> None:
    """An HTML page colouring each character of a text by cell activations of the checkpoint TARGET
    (a checkpoint folder, a run's best, or --trial), with the cells ranked by the text features they track."""
    from .engine.device import pick
    from .insight import viz as views
    from .insight.sample import load

    views.check_choice(layer, cell, top)
    where = pick(device)
    text, total = views.read_text(text_file, max_chars)
    model, vocab, meta = load(target, trial=trial, device=where)
    trace = views.trace(model, vocab, text)
    title = _viz_title(target, trial, text_file)
    _write_page(out, views.neurons_page(trace, meta, title, layer, cell, top, signal, total))


@viz.command("predictions")
@click.argument("target")
@_viz_options
@click.option("--out", "-o", default="predictions.html", show_default=True, help="The file to write (one HTML page).")
@_guarded
def viz_predictions(target: str, text_file: str, max_chars: int, trial: str | None, out: str, device: str) -> None:
    """An HTML page showing, for each character of a text, the probability the checkpoint TARGET gave it
    (as its colour) and its top 5 guesses for the next character."""
    from .engine.device import pick
    from .insight import viz as views
    from .insight.sample import load

    where = pick(device)
    text, total = views.read_text(text_file, max_chars)
    model, vocab, meta = load(target, trial=trial, device=where)
    trace = views.trace(model, vocab, text)
    title = _viz_title(target, trial, text_file)
    _write_page(out, views.predictions_page(trace, vocab, meta, title, total))


@cli.command()
@click.argument("run_url")
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    help="The folder to write into (several pages: report.html and report/); default: the run folder.",
)
@click.option("--text", "text_file", help="Text for the neuron and prediction pages (default: the corpus's val split).")
@_guarded
def report(run_url: str, out: str | None, text_file: str | None) -> None:
    """Write a run's HTML report (leaderboard, loss curves, samples, neuron and prediction pages) into the run
    folder at RUN_URL, or into --out."""
    from .insight import report as reports
    from .insight import viz as views
    from .layout import Run
    from .storage import Store

    text = views.read_text(text_file, reports.TEXT_CHARS)[0] if text_file else None
    written = reports.write(Run(Store.at(run_url)), Store.at(out) if out else None, text)
    click.echo(f"report: {scrub(written.url)}")


def _size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@cli.command()
@click.argument("run_url")
@click.option(
    "--out", "-o", type=click.Path(file_okay=False), help="The local folder to write into (default: ./<run name>)."
)
@click.option("--dest", hidden=True, type=click.Path(file_okay=False))  # the earlier spelling of --out
@click.option("--best", "want_best", is_flag=True, help="The best checkpoint (default: it and the samples).")
@click.option("--samples", "want_samples", is_flag=True, help="The sample archives (default: them and the best).")
@click.option("--trial", help="Only this trial's sample archives.")
@_guarded
def pull(
    run_url: str, out: str | None, dest: str | None, want_best: bool, want_samples: bool, trial: str | None
) -> None:
    """Download a run's best checkpoint and sample archives from RUN_URL, checksums verified."""
    from .runs.pull import pull as fetch

    both = not want_best and not want_samples
    pulled = fetch(run_url, out or dest, best=want_best or both, samples=want_samples or both, trial=trial)
    for item in pulled.files:
        click.echo(f"  {item.name:<44} {_size(item.size):>9}  {item.check}")
    click.echo(
        f"pulled {len(pulled.files)} files ({_size(pulled.bytes)}) of run {pulled.run.name} "
        f"from {scrub(pulled.run.store.url)} to {pulled.dest}"
    )
    meta = pulled.dest / "best" / "meta.json"
    if meta.exists():
        import json

        from .launch.display import sample_hint

        drawn = json.loads(meta.read_text()).get("spec", {}).get("samples", {})  # promoted before meta had the spec
        temperature = min(drawn.get("temperatures", [0.8]), key=lambda t: abs(t - 0.8))
        click.echo(f"sample with: {sample_hint(str(pulled.dest), drawn.get('prime', chr(10)), temperature)}")


@cli.command()
@click.argument("target")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "web"]),
    default="onnx",
    show_default=True,
    help="onnx: the graph, vocab.json and model.json; web: those and a page that writes text in a browser.",
)
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Local folder to write into.")
@click.option("--trial", help="A trial of the run TARGET: export its best kept checkpoint instead of the run's best.")
@_guarded
def export(target: str, fmt: str, out: str, trial: str | None) -> None:
    """Export the model TARGET names (a checkpoint folder, a run or a pulled run; local or remote)."""
    from .serving import export as onnx
    from .serving import web

    done = (web.export if fmt == "web" else onnx.export)(target, out, trial=trial)
    card = done.card
    click.echo(
        f"exported {card['cell']} {card['layers']}x{card['hidden']} ({card['parameters']:,} parameters, "
        f"val loss {_loss(card['val_loss'])}) to {done.folder}; logits within {done.difference:.1e} of PyTorch's"
    )
    if fmt == "web":
        click.echo(f"page: {done.folder / web.PAGE}; serve the folder from any static host, for example")
        click.echo(f"  python3 -m http.server --bind 127.0.0.1 --directory {done.folder} 8000")


@cli.group()
def runs() -> None:
    """Browse the runs on a storage."""


@runs.command("list")
@click.argument("storage_url")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@_guarded
def runs_list(storage_url: str, as_json: bool) -> None:
    """The runs under STORAGE_URL: status, best val loss, trials, start and end times."""
    import json

    from .runs.record import list_runs
    from .storage import Store
    from .tables import cell, table

    found = list_runs(Store.at(storage_url))
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo(f"no runs under {scrub(storage_url)}")
        return
    rows = [["RUN", "STATUS", "BEST VAL LOSS", "TRIALS", "STARTED", "ENDED"]]
    rows += [
        [r["name"], *(cell(r[k]) for k in ("status", "best_val_loss", "trials", "started", "ended"))] for r in found
    ]
    click.echo("\n".join(table(rows, right={2, 3})))


@runs.command("show")
@click.argument("run_url")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
@_guarded
def runs_show(run_url: str, as_json: bool) -> None:
    """One run at RUN_URL: status, times, corpus, best checkpoint, and each trial's progress."""
    import json

    from .layout import Run
    from .runs.record import describe
    from .storage import Store

    run = describe(Run(Store.at(run_url)))
    if as_json:
        click.echo(json.dumps(run, indent=2))
        return
    click.echo(f"run {run['name']}: {run['status']}")
    click.echo(f"  url:      {scrub(run['url'])}")
    click.echo(f"  started:  {run['started'] or '-'}")
    click.echo(f"  ended:    {run['ended'] or '-'}")
    if run["corpus"]:
        click.echo(f"  corpus:   {run['corpus'].get('name')} {run['corpus'].get('fingerprint')}")
    if run["parent"]:
        click.echo(f"  parent:   {parent_line(run['parent'])}")
    if run["best"]:
        b = run["best"]
        click.echo(
            f"  best:     val loss {_loss(b.get('val_loss'))} nats/char, step {b.get('step')}, trial {b.get('trial')}"
        )
    if run["error"]:
        click.echo(f"  error:    {run['error']}")
    click.echo(f"  checksums: {'SHA256SUMS written' if run['sealed'] else 'not yet (written when the run completes)'}")
    click.echo(f"  trials:   {run['trials']}")
    for t in run["trial_details"]:
        click.echo(
            f"    {t['name']:<20} step {t['step'] if t['step'] is not None else '-':>7}  "
            f"best val loss {_loss(t['best_val_loss'])}  samples {t['samples']}"
        )


def parent_line(parent: dict) -> str:
    """A fine-tuned run's parent in one line: where it is, its shape, corpus and weights' sha256."""
    return (
        f"{scrub(parent['url'])} ({parent.get('model')}, step {parent.get('step')}, corpus {parent.get('corpus')} "
        f"{parent.get('fingerprint')}, sha256 {str(parent.get('sha256'))[:12]}...)"
    )


def _assignments(pairs: tuple[str, ...], flag: str) -> dict:
    """``key=value`` pairs; a value is read as YAML (numbers, booleans, lists), else kept as text."""
    from .spec import read_yaml

    given = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {pair!r}: expected key=value")
        try:
            given[key] = read_yaml(value, flag) if value else ""
        except UserError:  # not YAML (or not safe to read as such): the text itself
            given[key] = value
    return given


@cli.group()
def corpus() -> None:
    """List, build and inspect corpora."""


@corpus.command("list")
@_guarded
def corpus_list() -> None:
    """The installed corpus plugins: name, version, distribution, description."""
    from .corpus import describe

    click.echo("\n".join(describe.corpora()))


@corpus.command("build")
@click.argument("name")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help="A plugin option (repeatable).")
@click.option("-n", "--normalize", multiple=True, metavar="KEY=VALUE", help="A normalization policy field.")
@click.option("--val", type=float, default=0.1, show_default=True, help="Validation fraction.")
@click.option("--test", type=float, default=0.0, show_default=True, help="Test fraction.")
@click.option("--to", "storage", default="./rnnfarm-data", show_default=True, help="Storage URL (any fsspec URL).")
@click.option("-s", "--storage-option", multiple=True, metavar="KEY=VALUE", help="An fsspec storage option.")
@_guarded
def corpus_build(
    name: str, options: tuple, normalize: tuple, val: float, test: float, storage: str, storage_option: tuple
) -> None:
    """Build corpus NAME into <storage>/corpora/NAME/<fingerprint>/ (skipped when already built)."""
    from . import spec
    from .corpus import describe
    from .corpus.build import build
    from .storage import Store

    corpus_spec = spec.parse(
        {
            "name": "corpus-build",
            "corpus": {
                "name": name,
                "options": _assignments(options, "-o"),
                "normalize": _assignments(normalize, "-n"),
                "val": val,
                "test": test,
            },
        },
        "command line",
    ).corpus
    built = build(Store.at(storage, _assignments(storage_option, "-s")), corpus_spec)
    click.echo("\n".join(describe.summary(built.folder, built.manifest, built.skipped)))


@corpus.command("show")
@click.argument("url")
@click.option("-s", "--storage-option", multiple=True, metavar="KEY=VALUE", help="An fsspec storage option.")
@_guarded
def corpus_show(url: str, storage_option: tuple) -> None:
    """Show a built corpus: splits, vocabulary with counts, source checksums, policy, fingerprint."""
    from .corpus import describe
    from .storage import Store

    click.echo("\n".join(describe.show(Store.at(url, _assignments(storage_option, "-s")))))


@cli.command()
@click.argument("corpus_url")
@click.option(
    "--order",
    "-n",
    "orders",
    multiple=True,
    type=click.IntRange(min=1),
    help="An n-gram order to fit (repeatable; default 1 to 10).",
)
@click.option("--refit", is_flag=True, help="Fit again even when the corpus folder holds figures for these orders.")
@click.option("-s", "--storage-option", multiple=True, metavar="KEY=VALUE", help="An fsspec storage option.")
@_guarded
def baseline(corpus_url: str, orders: tuple[int, ...], refit: bool, storage_option: tuple) -> None:
    """Fit character n-gram models (interpolated Kneser-Ney) on the train split of the built corpus at CORPUS_URL
    and print each order's val and test nats/char and bits/char; the figures are kept in the corpus folder."""
    from .insight import ngram
    from .storage import Store
    from .units import bits

    folder = Store.at(corpus_url, _assignments(storage_option, "-s"))
    result = ngram.baseline(folder, orders=orders or ngram.ORDERS, refit=refit)
    click.echo(f"n-gram baselines ({ngram.METHOD}), corpus {result.fingerprint}")
    click.echo("\n".join(ngram.table(result)))
    order, nats = result.best("val")
    click.echo(f"best on val: order {order}, {nats:.4f} nats/char ({bits(nats):.4f} bits/char)")
    click.echo(f"fit on {result.tokens['train']:,} train chars; figures kept at {scrub((folder / ngram.CACHE).url)}")


@cli.group()
def jobs() -> None:
    """Jobs submitted to a Ray cluster: list, status, logs, stop.

    The cluster is --address, else RAY_ADDRESS, else the cluster.address of the spec given with --spec.
    """


def _cluster(address: str | None, spec_file: str | None):
    from . import spec
    from .launch import submit

    job_spec = spec.load(spec_file) if spec_file else None
    chosen = submit.resolve_address(job_spec.cluster.address if job_spec else "local", address)
    if not submit.is_remote(chosen):
        raise UserError("no cluster to ask: pass --address http://HEAD:8265, set RAY_ADDRESS, or --spec a cluster job")
    return submit.Cluster.at(chosen, job_spec.cluster.token_env if job_spec else "RAY_AUTH_TOKEN")


def _cluster_options(fn: Callable) -> Callable:
    fn = click.option("--spec", "spec_file", type=click.Path(dir_okay=False), help="A spec naming the cluster.")(fn)
    return click.option("--address", help="The cluster's dashboard URL (http://HEAD:8265).")(fn)


@jobs.command("list")
@_cluster_options
@_guarded
def jobs_list(address: str | None, spec_file: str | None) -> None:
    """rnnfarm's jobs on the cluster: id, status, run, start."""
    from .launch import submit
    from .tables import cell, table

    found = [submit.summary(info) for info in _cluster(address, spec_file).jobs()]
    if not found:
        click.echo("no rnnfarm jobs on this cluster")
        return
    rows = [
        ["JOB", "STATUS", "RUN", "STARTED"],
        *([cell(j[k]) for k in ("job", "status", "run", "started")] for j in found),
    ]
    click.echo("\n".join(table(rows)))


@jobs.command("status")
@click.argument("job_id")
@_cluster_options
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
@_guarded
def jobs_status(job_id: str, address: str | None, spec_file: str | None, as_json: bool) -> None:
    """The status of job JOB_ID: running, succeeded, failed or stopped, and why."""
    import json

    from .launch import submit

    shown = submit.summary(_cluster(address, spec_file).info(job_id))
    if as_json:
        click.echo(json.dumps(shown, indent=2))
        return
    click.echo(f"job {shown['job']}: {shown['status']}")
    for key in ("message", "run", "storage", "started", "ended", "driver_exit_code", "entrypoint"):
        if shown[key] is not None:
            click.echo(f"  {key + ':':<18}{shown[key]}")


@jobs.command("logs")
@click.argument("job_id")
@_cluster_options
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the job ends; exit with its exit code.")
@_guarded
def jobs_logs(job_id: str, address: str | None, spec_file: str | None, follow: bool) -> None:
    """The logs of job JOB_ID (its driver's output, with its Ray workers' lines)."""
    cluster = _cluster(address, spec_file)
    if not follow:
        click.echo(cluster.logs(job_id), nl=False)
        return
    try:
        info = cluster.follow(job_id, lambda chunk: click.echo(chunk, nl=False))
    except KeyboardInterrupt:
        click.echo(f"\ndetached: job {job_id} goes on", err=True)
        sys.exit(130)
    sys.exit(job_ended(info))


@jobs.command("stop")
@click.argument("job_id")
@_cluster_options
@click.option("--no-wait", is_flag=True, help="Return once the stop is asked for, not once the job has ended.")
@_guarded
def jobs_stop(job_id: str, address: str | None, spec_file: str | None, no_wait: bool) -> None:
    """Stop job JOB_ID: its driver and its trials end, and their resources return to the cluster."""
    cluster = _cluster(address, spec_file)
    if not cluster.stop(job_id):
        click.echo(f"job {job_id} had already ended: {cluster.info(job_id).status}")
        return
    if no_wait:
        click.echo(f"stop asked for job {job_id}")
        return
    info = cluster.wait(job_id, timeout=120)
    click.echo(f"job {job_id}: {info.status}")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
