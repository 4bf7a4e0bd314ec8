"""The command line: parse, call the library, print. Errors in the user's input exit 2, in one line."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from functools import wraps

import click

from . import log
from .errors import UserError
from .redact import scrub


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
@_guarded
def run(spec_file: str, name: str | None, address: str | None, no_wait: bool, env_file: str | None) -> None:
    """Build the corpus, train, and keep the best checkpoint and samples, as SPEC_FILE describes.

    With a cluster address the job is submitted to that Ray cluster and its logs follow here; Ctrl-C
    detaches (the job goes on), and the exit code is the job's: 0 when it succeeded.
    """
    from . import jobs, spec, submit

    if env_file:
        submit.load_env_file(env_file)
    job_spec = spec.load(spec_file)
    job_spec = submit.with_address(job_spec, submit.resolve_address(job_spec.cluster.address, address))
    if submit.is_remote(job_spec.cluster.address):
        sys.exit(submit_and_follow(job_spec, name, no_wait))
    if no_wait:
        raise UserError("--no-wait applies to a job submitted to a cluster: give a cluster address (--address)")
    try:
        outcome = jobs.run(job_spec, name)
    except jobs.TrainingFailed as exc:
        click.echo(f"error: {scrub(str(exc))}", err=True)
        sys.exit(1)
    print_outcome(outcome)


def submit_and_follow(job_spec, name: str | None, no_wait: bool) -> int:
    """Submit; then follow the job's logs to its end, or return at once. The exit code follows the job."""
    from . import submit

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
    return report_end(info, submitted.run_url)


def report_end(info, run_url: str | None = None) -> int:
    """One line on how a job ended (and where its results are); returns the exit code it calls for."""
    from . import submit

    code, job = submit.exit_code(info), info.submission_id
    if code == 0:
        click.echo(f"job {job} succeeded")
        if run_url:
            click.echo(f"results: {run_url}\npull them: rnnfarm pull {run_url}")
        return 0
    message = submit.summary(info)["message"] or ""
    click.echo(f"error: job {job} {str(info.status).lower()}: {message}", err=True)
    return code


def print_outcome(outcome) -> None:
    from .leaderboard import format_table

    best, run = outcome.best, outcome.run
    click.echo(f"\nrun {run.name}: {outcome.record['status']}")
    if len(outcome.rows) > 1:
        click.echo(format_table(outcome.rows) + "\n")
    click.echo(
        f"best val loss {best['val_loss']:.4f} nats/char ({best['val_bpc']:.4f} bits/char) "
        f"at step {best['step']} of trial {best['trial']}"
    )
    click.echo(f"best checkpoint: {best['url']}")
    click.echo(f"leaderboard:     {run.store.url}/leaderboard.csv")
    click.echo(f"samples:         {run.trial(best['trial']).url}/samples.txt")
    click.echo(f"sample with:     rnnfarm sample {run.store.url} --temperature 0.8 --prime 'ROMEO:'")
    shown = run.best / "samples.json"
    if shown.exists():
        drawn = shown.read_json()["samples"]
        pick = min(drawn, key=lambda s: abs(s["temperature"] - 0.8))
        click.echo(f"\n--- sample at step {best['step']}, temperature {pick['temperature']} ---")
        click.echo(pick["prime"] + pick["text"])


@cli.command()
@click.argument("run_url")
@click.option("--trial", help="Trial id (default: the run's best trial).")
@click.option("--step", type=int, help="Only the samples drawn at this step.")
@click.option("--temperature", "-t", type=float, help="Only the samples drawn at this temperature.")
@_guarded
def samples(run_url: str, trial: str | None, step: int | None, temperature: float | None) -> None:
    """Show how a trial's samples evolved while it trained (RUN_URL: a run folder or URL)."""
    from . import archive
    from .runs import Run
    from .storage import Store

    run = Run(Store.at(run_url))
    info = run.info()
    if info is None:
        raise UserError(f"{run_url}: not a run (no run.json)")
    trial = trial or (info.get("best") or {}).get("trial")
    if trial is None or not (run.trial(trial) / "samples").list():
        known = ", ".join(t.name for t in (run.store / "trials").list()) or "none"
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


@cli.command()
@click.argument("target")
@click.option("--temperature", "-t", type=float, default=1.0, show_default=True)
@click.option("--prime", "-p", default="\n", help="Text to start from (its characters must be in the vocabulary).")
@click.option("--length", "-l", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed for reproducible samples.")
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Sample among the k most likely only.")
@click.option("--argmax", is_flag=True, help="Always take the most likely character.")
@_guarded
def sample(
    target: str, temperature: float, prime: str, length: int, seed: int | None, top_k: int | None, argmax: bool
) -> None:
    """Generate text from TARGET: a checkpoint folder or a run (its best checkpoint), local or remote."""
    from .sample import sample as generate_text

    chars = generate_text(target, prime, length, temperature, top_k, argmax, seed)
    text = "".join(chars)
    click.echo(prime + text)


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
@click.option("--dest", type=click.Path(file_okay=False), help="Local folder (default: ./<run name>).")
@click.option("--best", "want_best", is_flag=True, help="The best checkpoint (default: it and the samples).")
@click.option("--samples", "want_samples", is_flag=True, help="The sample archives (default: them and the best).")
@click.option("--trial", help="Only this trial's sample archives.")
@_guarded
def pull(run_url: str, dest: str | None, want_best: bool, want_samples: bool, trial: str | None) -> None:
    """Download a run's best checkpoint and sample archives from RUN_URL, checksums verified."""
    from .pull import pull as fetch

    both = not want_best and not want_samples
    pulled = fetch(run_url, dest, best=want_best or both, samples=want_samples or both, trial=trial)
    for item in pulled.files:
        click.echo(f"  {item.name:<44} {_size(item.size):>9}  {item.check}")
    click.echo(
        f"pulled {len(pulled.files)} files ({_size(pulled.bytes)}) of run {pulled.run.name} "
        f"from {scrub(pulled.run.store.url)} to {pulled.dest}"
    )
    if (pulled.dest / "best").exists():
        click.echo(f"sample with: rnnfarm sample {pulled.dest} --prime 'ROMEO:'")


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

    from .runs import list_runs
    from .storage import Store

    found = list_runs(Store.at(storage_url))
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo(f"no runs under {scrub(storage_url)}")
        return
    header = f"{'RUN':<24} {'STATUS':<10} {'BEST VAL LOSS':>13} {'TRIALS':>6}  {'STARTED':<20} {'ENDED':<20}"
    click.echo(header)
    for r in found:
        click.echo(
            f"{r['name']:<24} {r['status'] or '-':<10} {_loss(r['best_val_loss']):>13} {r['trials']:>6}  "
            f"{r['started'] or '-':<20} {r['ended'] or '-':<20}"
        )


@runs.command("show")
@click.argument("run_url")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
@_guarded
def runs_show(run_url: str, as_json: bool) -> None:
    """One run at RUN_URL: status, times, corpus, best checkpoint, and each trial's progress."""
    import json

    from .runs import Run
    from .storage import Store

    run = Run(Store.at(run_url)).describe()
    if as_json:
        click.echo(json.dumps(run, indent=2))
        return
    click.echo(f"run {run['name']}: {run['status']}")
    click.echo(f"  url:      {scrub(run['url'])}")
    click.echo(f"  started:  {run['started'] or '-'}")
    click.echo(f"  ended:    {run['ended'] or '-'}")
    if run["corpus"]:
        click.echo(f"  corpus:   {run['corpus'].get('name')} {run['corpus'].get('fingerprint')}")
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


@cli.group()
def jobs() -> None:
    """Jobs submitted to a Ray cluster: list, status, logs, stop.

    The cluster is --address, else RAY_ADDRESS, else the cluster.address of the spec given with --spec.
    """


def _cluster(address: str | None, spec_file: str | None):
    from . import spec, submit

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
    from . import submit

    found = [submit.summary(info) for info in _cluster(address, spec_file).jobs()]
    if not found:
        click.echo("no rnnfarm jobs on this cluster")
        return
    click.echo(f"{'JOB':<44} {'STATUS':<10} {'RUN':<24} {'STARTED':<20}")
    for j in found:
        click.echo(f"{j['job']:<44} {j['status']:<10} {j['run'] or '-':<24} {j['started'] or '-':<20}")


@jobs.command("status")
@click.argument("job_id")
@_cluster_options
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
@_guarded
def jobs_status(job_id: str, address: str | None, spec_file: str | None, as_json: bool) -> None:
    """The status of job JOB_ID: running, succeeded, failed or stopped, and why."""
    import json

    from . import submit

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
    sys.exit(report_end(info))


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
