"""The Ray Tune stage: each trial is a driver function that runs one TorchTrainer.

The driver takes a sliver of a CPU; its Train workers take the trial's resources. Train workers
report to Tune through ``TuneReportCallback``, so ASHA sees every evaluation's val loss at its step
and stops trials that trail. The experiment lives in ``runs/<run>/tune/`` and each trial's training
in ``runs/<run>/trials/<trial id>/``; running the same job again restores the sweep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from .. import credentials, log
from ..engine import placement
from ..engine.loop import Job
from ..engine.parent import Parent
from ..engine.ray_train import fit
from ..layout import EXPERIMENT, Run
from ..runs import archive
from ..runs.leaderboard import TrialEnd
from ..runs.record import comparable
from ..runs.state import trial_state
from ..spec import Distribution, JobSpec, TuneSpec, with_settings
from ..storage import Store

DRIVER_MEMORY = 64 << 20
# Ray Tune copies these variables of the driver's environment into each trial's runtime env, which Ray's
# runtime-env agent writes to its log on every node. Trials have credentials from their own environment
# (inherited from an embedded Ray, or set by rnnfarm's worker set-up hook on a cluster: pipeline.join_cluster).
TUNE_COPIES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


def _is_int(key: str) -> bool:
    """Whether the setting's schema takes integers (pydantic keeps ``int`` as the field's annotation, its bounds
    apart), so that a range on it draws integers."""
    *sections, field = key.split(".")
    model = JobSpec
    for section in sections:
        model = model.model_fields[section].annotation
    return model.model_fields[field].annotation is int


def _domain(key: str, dist: Distribution):
    if dist.choice is not None:
        return tune.choice(dist.choice)
    if dist.grid is not None:
        return tune.grid_search(dist.grid)
    if dist.uniform is not None:
        lo, hi = dist.uniform
        return tune.randint(int(lo), int(hi) + 1) if _is_int(key) else tune.uniform(lo, hi)
    lo, hi = dist.loguniform
    return tune.lograndint(int(lo), int(hi) + 1) if _is_int(key) else tune.loguniform(lo, hi)


def param_space(t: TuneSpec) -> dict[str, dict[str, Any]]:
    """The search space as Tune domains, nested by spec section (``{"model": {"hidden": ...}}``)."""
    space: dict[str, dict[str, Any]] = {}
    for key, dist in t.space.items():
        section, field = key.split(".", 1)
        space.setdefault(section, {})[field] = _domain(key, dist)
    return space


def settings_of(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's config flattened back to dotted settings."""
    return {f"{section}.{field}": value for section, fields in config.items() for field, value in fields.items()}


def trial_spec(base: JobSpec, settings: dict[str, Any]) -> JobSpec:
    """The single-model spec one trial trains: the sampled settings, on the trial's resources."""
    r = base.tune.resources
    placement = {
        "cluster.workers": r.workers,
        "cluster.cpus_per_worker": r.cpus_per_worker,
        "cluster.gpus_per_worker": r.gpus_per_worker,
        "cluster.use_gpu": r.use_gpu,
    }
    return with_settings(base, {**settings, **placement})


def driver(
    config: dict[str, Any], *, base: JobSpec, corpus: Store, run: Run, log_format: str, parent: Parent | None
) -> None:
    """One trial: train the sampled model through Ray Train (from the parent's weights, where one is given),
    then archive its samples."""
    log.configure(log_format)
    trial_id = tune.get_context().get_trial_id()
    settings = settings_of(config)
    spec = trial_spec(base, settings)
    trial = run.trial(trial_id)
    trial.config.write_json({"trial": trial_id, "settings": settings, "spec": comparable(spec)})
    try:
        fit(Job(spec, corpus, trial, parent), log_format, callbacks=[TuneReportCallback()], sweep=True)
    finally:
        archive.consolidate(trial)


class TrialEnds(tune.Callback):
    """Logs each trial's start with its settings (``trial started``) and its end (``trial ended``, with its
    state as stored: ``runs.state``) when the scheduler ends it, not when the whole sweep does: the terminal's
    trials table follows these events."""

    def __init__(self, run: Run, steps: int) -> None:
        self.run, self.steps = run, steps

    def on_trial_start(self, iteration: int, trials: list, trial: tune.experiment.Trial, **info: Any) -> None:
        settings = settings_of(trial.config or {})
        log.get("rnnfarm.tune").info("trial started", run=self.run.name, trial=trial.trial_id, settings=settings)

    def on_trial_complete(self, iteration: int, trials: list, trial: tune.experiment.Trial, **info: Any) -> None:
        self._log(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: tune.experiment.Trial, **info: Any) -> None:
        self._log(trial, failed=True)

    def _log(self, trial: tune.experiment.Trial, *, failed: bool) -> None:
        placement.remove_orphans()  # what an ASHA-stopped trial's controller left would hold the next trial's CPUs
        state = trial_state(self.run.trial(trial.trial_id), target=self.steps, failed=failed)
        log.get("rnnfarm.tune").info(
            "trial ended",
            run=self.run.name,
            trial=trial.trial_id,
            status=state.status,
            steps=state.steps,
            best_val_loss=state.best["val_loss"] if state.best else None,
        )


def _tuner(
    spec: JobSpec, run: Run, corpus: Store, log_format: str, concurrency: int, parent: Parent | None
) -> tune.Tuner:
    t = spec.tune
    # A driver that takes no CPU still reserves a little memory: Ray needs a non-empty request.
    reserve = {"cpu": t.resources.driver_cpus} if t.resources.driver_cpus else {"cpu": 0, "memory": DRIVER_MEMORY}
    trainable = tune.with_resources(
        tune.with_parameters(driver, base=spec, corpus=corpus, run=run, log_format=log_format, parent=parent), reserve
    )
    filesystem, path = run.store.pyarrow()
    experiment = f"{path}/{EXPERIMENT}"
    if tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        log.get("rnnfarm.tune").info("resuming sweep", run=run.name)
        return tune.Tuner.restore(
            experiment, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=filesystem
        )
    if t.scheduler.kind == "asha":
        scheduler = ASHAScheduler(
            time_attr="step",
            max_t=spec.train.steps,
            grace_period=min(t.scheduler.grace_period or spec.train.eval_every, spec.train.steps),
            reduction_factor=t.scheduler.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=param_space(t),
        tune_config=tune.TuneConfig(
            metric="val_loss",
            mode="min",
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(random_state=t.seed, max_concurrent=concurrency),
            num_samples=t.samples,
            time_budget_s=t.time_budget_s,
            trial_dirname_creator=lambda trial: trial.trial_id,
            trial_name_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=path,
            storage_filesystem=filesystem,
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[TrialEnds(run, spec.train.steps)],
            verbose=0,
        ),
    )


@contextlib.contextmanager
def _unseen_by_tune() -> Iterator[None]:
    """While Tune runs, the credentials it would copy into its trials' runtime envs are out of the environment
    (this process's storage clients were made, with them, before)."""
    hidden = {name: os.environ.pop(name) for name in TUNE_COPIES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(hidden)


@contextlib.contextmanager
def _handlers_kept() -> Iterator[None]:
    """Tune's SIGINT and SIGUSR1 handlers (``tune.tune._setup_signal_catching``) stay after the sweep, and would
    swallow the next ctrl-C of a process that goes on (a notebook): the ones before it are put back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGUSR1)}
    try:
        yield
    finally:
        for signum, handler in kept.items():
            signal.signal(signum, handler)


def sweep(
    spec: JobSpec, run: Run, corpus: Store, log_format: str, concurrency: int, parent: Parent | None = None
) -> list[TrialEnd]:
    """Run (or resume) the sweep; how each trial ended, for the leaderboard."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no progress tables on stdout
    # A trial that had finished its steps when the sweep was cut resumes at its last step and reports
    # nothing new: its results are read from storage, so Tune must accept the silent end.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    started = time.perf_counter()
    credentials.deposit()
    try:
        with _unseen_by_tune(), _handlers_kept():
            results = _tuner(spec, run, corpus, log_format, concurrency, parent).fit()
    finally:  # the trials' processes have ended (stopped by ASHA, the time budget, ctrl-C): their controllers follow
        placement.settle()
    ends = []
    for result in results:
        trial_id = result.path.rstrip("/").rsplit("/", 1)[-1]
        trial = run.trial(trial_id)
        archive.consolidate(trial)
        # Status, steps and wall time come from what the trial stored (runs.state), not from Tune's copy: a
        # worker can finish its last steps while the scheduler's stop is on its way.
        error = str(result.error).strip().splitlines()[-1] if result.error is not None else None
        ends.append(TrialEnd(trial_id, settings_of(result.config or {}), error))
    log.get("rnnfarm.tune").info(
        "sweep ended", run=run.name, trials=len(ends), wall_s=round(time.perf_counter() - started, 1)
    )
    return ends
