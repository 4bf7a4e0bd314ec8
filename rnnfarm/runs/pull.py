"""``rnnfarm pull``: a run's best checkpoint and sample archives to a local folder, checksums verified.

The files to fetch and their sha256 come from the run's ``SHA256SUMS`` once the run has completed;
before that, from ``best/meta.json`` (which records the sha256 of the other files in ``best/``) and a
listing of the trials' sample archives, which then have no checksum yet. Every name is checked to stay
inside the destination, each file is downloaded to a temporary name, verified, and only then renamed
into place, and ``best/meta.json`` is placed last, as on storage.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import redact
from ..engine import checkpoint
from ..errors import UserError
from ..layout import BEST, RECORD, SAMPLES, SUMS, TRIALS, Run, in_best, in_trial
from ..storage import Store, sha256_bytes, sha256_file
from .record import require

BEST_META = in_best(checkpoint.META)
PARALLEL = 8  # downloads in flight
_SUM_LINE = re.compile(r"^(?P<sha>[0-9a-f]{64}) [ *](?P<name>.+)$")


@dataclass(frozen=True)
class PulledFile:
    name: str  # relative to the run (and to the destination)
    size: int
    check: str  # "sha256 ok", "unchanged" (already there with that sha256), "no checksum yet", or what a record is


@dataclass(frozen=True)
class Pulled:
    run: Run
    dest: Path
    files: list[PulledFile]

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


def safe_name(name: str, source: str) -> str:
    """``name`` if it is a relative path that stays inside the destination; refused otherwise."""
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or re.match(r"^[A-Za-z]:", name)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise UserError(
            f"refusing to pull {name!r} (named by {source}): not a plain relative path, it could land outside "
            "the destination; the run's files are damaged or not rnnfarm's"
        )
    return name


def parse_sums(text: str, source: str) -> dict[str, str]:
    """A sha256sum-format list as {name: sha256}; every name must be safe."""
    sums = {}
    for number, line in enumerate(text.splitlines(), 1):
        found = _SUM_LINE.match(line)
        if not found:
            raise UserError(f"{source}, line {number}: not a sha256sum line ({line[:60]!r})")
        sums[safe_name(found["name"], source)] = found["sha"]
    return sums


def index(run: Run) -> dict[str, str | None]:
    """Every file the run publishes, with its sha256 (None for what has no checksum yet)."""
    sealed = run.sums
    if sealed.exists():
        return dict(parse_sums(sealed.read_text(), redact.scrub(sealed.url)))
    files: dict[str, str | None] = {}
    meta = run.best / checkpoint.META
    if meta.exists():
        data = meta.read_bytes()
        try:
            recorded = json.loads(data).get("files") or {}
        except json.JSONDecodeError as exc:
            raise UserError(f"{redact.scrub(meta.url)}: not valid JSON ({exc.msg})") from None
        for name, entry in recorded.items():
            files[in_best(safe_name(name, redact.scrub(meta.url)))] = entry["sha256"]
        if not recorded:  # promoted before best/meta.json recorded checksums
            files |= {in_best(f.name): None for f in run.best.list()}
        files[BEST_META] = sha256_bytes(data)
    for trial in run.trials():
        for name in run.trial(trial).published():
            files[in_trial(safe_name(trial, "the trials listing"), name)] = None
    return files


def select(
    files: dict[str, str | None], best: bool, samples: bool, trial: str | None, run: Run
) -> dict[str, str | None]:
    chosen = {}
    if best:
        chosen = {n: s for n, s in files.items() if n.startswith(f"{BEST}/")}
        if BEST_META not in chosen:
            raise UserError(
                f"run {run.name} has no best checkpoint yet: its first evaluation has not finished; "
                "pull --samples fetches the sample archives so far"
            )
    if samples:
        prefix = in_trial(trial) if trial else f"{TRIALS}/"
        picked = {n: s for n, s in files.items() if n.startswith(prefix) and f"/{SAMPLES}" in n}
        if trial and not picked:
            trials = sorted({n.split("/")[1] for n in files if n.startswith(f"{TRIALS}/")})
            raise UserError(
                f"run {run.name} has no sample archives of trial {trial!r} (trials: {', '.join(trials) or 'none'})"
            )
        chosen.update(picked)
    return chosen


def _fetch(source: Store, target: Path, expected: str | None) -> str:
    """Download ``source`` to ``target`` through a temporary name; verify it against ``expected``."""
    if expected and target.exists() and sha256_file(target) == expected:
        return "unchanged"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.part-{uuid.uuid4().hex[:12]}"
    try:
        source.download_file(partial)
        actual = sha256_file(partial)
        if expected and actual != expected:
            raise UserError(
                f"{redact.scrub(source.url)}: sha256 {actual[:12]}... differs from the recorded "
                f"{expected[:12]}...: the object is corrupt or changed while pulling; pull again"
            )
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return "sha256 ok" if expected else "no checksum yet"


def pull(
    run_url: str,
    dest: str | Path | None = None,
    best: bool = True,
    samples: bool = True,
    trial: str | None = None,
    options: dict | None = None,
) -> Pulled:
    """Fetch a run's best checkpoint and/or sample archives (all trials, or ``trial``) into ``dest``."""
    run = Run(Store.at(run_url, options))
    require(run)
    if trial is not None:
        safe_name(trial, "--trial")
    dest = Path(dest or run.name).resolve()
    chosen = select(index(run), best, samples, trial, run)
    records = {RECORD: "the run's record"}
    if run.sums.exists():
        records[SUMS] = "the run's checksum list"

    def fetch(name: str) -> PulledFile:
        target = dest.joinpath(*name.split("/"))
        if not target.resolve().is_relative_to(dest):  # a symlink inside dest pointing out of it
            raise UserError(f"refusing to write {target}: it resolves outside {dest}")
        check = _fetch(run.store / name, target, chosen.get(name))
        return PulledFile(name, target.stat().st_size, records.get(name, check))

    files = sorted(n for n in chosen if n != BEST_META)
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        fetched = list(pool.map(fetch, files))
    # best/meta.json is placed last, as on storage: a pulled best/ with its meta.json is complete.
    fetched += [fetch(name) for name in [BEST_META] if name in chosen]
    fetched += [fetch(name) for name in records]
    return Pulled(run, dest, fetched)
