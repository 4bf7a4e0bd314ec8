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


def _assignments(pairs: tuple[str, ...], flag: str) -> dict:
    """``key=value`` pairs; a value is read as YAML (numbers, booleans, lists), else kept as text."""
    import yaml

    given = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {pair!r}: expected key=value")
        try:
            given[key] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            given[key] = value
    return given


@cli.group()
def corpus() -> None:
    """List, build and inspect corpora."""


@corpus.command("list")
@_guarded
def corpus_list() -> None:
    """The installed corpus plugins: name, version, distribution, description."""
    from .corpus import report

    click.echo("\n".join(report.corpora()))


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
    from .corpus import report
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
    click.echo("\n".join(report.summary(built.folder, built.manifest, built.skipped)))


@corpus.command("show")
@click.argument("url")
@click.option("-s", "--storage-option", multiple=True, metavar="KEY=VALUE", help="An fsspec storage option.")
@_guarded
def corpus_show(url: str, storage_option: tuple) -> None:
    """Show a built corpus: splits, vocabulary with counts, source checksums, policy, fingerprint."""
    from .corpus import report
    from .storage import Store

    click.echo("\n".join(report.show(Store.at(url, _assignments(storage_option, "-s")))))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
