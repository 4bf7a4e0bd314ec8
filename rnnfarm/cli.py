"""The command line: parse, call the library, print. Errors in the user's input exit 2, in one line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps

import click

from . import log
from .errors import UserError


def _guarded(fn: Callable) -> Callable:
    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
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
@_guarded
def run(spec_file: str, name: str | None) -> None:
    """Build the corpus, train, and keep the best checkpoint and samples, as SPEC_FILE describes."""
    from . import jobs, spec

    job_spec = spec.load(spec_file)
    try:
        outcome = jobs.run(job_spec, name)
    except jobs.TrainingFailed as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    best = outcome.best
    run_url = outcome.run.store.url
    click.echo(f"\nrun {outcome.run.name}: {outcome.record['status']}")
    click.echo(
        f"best val loss {best['val_loss']:.4f} nats/char ({best['val_bpc']:.4f} bits/char) "
        f"at step {best['step']} of trial {best['trial']}"
    )
    if "test_loss" in best:
        click.echo(f"test loss {best['test_loss']:.4f} nats/char ({best['test_bpc']:.4f} bits/char) at that checkpoint")
    click.echo(f"best checkpoint: {best['url']}")
    click.echo(f"samples:         {outcome.run.trial(best['trial']).url}/samples/")
    click.echo(f"sample with:     rnnfarm sample {run_url} --temperature 0.8 --prime 'ROMEO:'")
    shown = outcome.run.best / "samples.json"
    if shown.exists():
        drawn = shown.read_json()["samples"]
        pick = min(drawn, key=lambda s: abs(s["temperature"] - 0.8))
        click.echo(f"\n--- sample at step {best['step']}, temperature {pick['temperature']} ---")
        click.echo(pick["prime"] + pick["text"])


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


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
