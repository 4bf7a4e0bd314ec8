"""Running a job: build its corpus, train on Ray (one model or a sweep), rank the trials, promote the best."""

from __future__ import annotations

import contextlib
import math
import os
import socket
from dataclasses import dataclass
from typing import Any

from .. import credentials, log
from ..corpus import novelty
from ..corpus.build import build, check_parent_vocab, plugin
from ..corpus.vocab import Vocab
from ..engine import parent as parents
from ..engine.loop import Job, evaluate_split, refuse_bf16_without_kernel
from ..engine.parent import Parent
from ..errors import TrainingFailed, UserError
from ..insight import report
from ..insight.sample import checkpoint_store
from ..layout import SINGLE_TRIAL, Run
from ..runs import archive, leaderboard, record
from ..runs.leaderboard import TrialEnd
from ..runs.state import STATUSES, trial_state
from ..spec import JobSpec, run_name
from ..storage import Store, normalize_url, protocol_of
from ..units import bits

# Defaults for an embedded Ray (the environment overrides each).
LOCAL_RAY_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",  # the controller polls workers' reports this often
    "RAY_AUTH_MODE": "disabled",  # a private instance on this machine: no token to pass around
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray Train's controller, workers and helpers each start a process of their own (they carry a runtime
    # env), so idle workers started ahead of them only take CPU while the job starts.
    "RAY_prestart_worker_first_driver": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",  # nothing preempts a laptop's processes
    "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING": "0",  # workers' lines reach the terminal once
    "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING": "0",
}


@dataclass(frozen=True)
class Outcome:
    run: Run
    record: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def best(self) -> dict[str, Any]:
        return self.record["best"]


def start_local_ray(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Start an embedded Ray in this process (once); Ray's own chatter is kept to warnings. CPUs and GPUs are
    the machine's unless given (logical GPUs on a machine without one: real scheduling, and no CUDA)."""
    import ray

    if ray.is_initialized():
        return
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    # Ray Train's clean-up actors find the state API through this variable; without it they search the
    # machine and give up when other Ray instances run there, leaking the CPUs of stopped trials.
    (dashboard_port,) = free_ports(1)
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    ray.init(
        address="local",  # a Ray of its own, even where `ray start` left a cluster running on this machine
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=True,  # the state API behind it lets Ray Train clean up after trials
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        logging_level="WARNING",
        logging_config=ray.LoggingConfig(log_level="WARNING"),
    )


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now (held together, so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


@dataclass(frozen=True)
class TrialNeeds:
    """What one trial holds in Ray: its workers' CPUs and GPUs, and in a sweep its driver's sliver of a CPU."""

    where: str  # the spec's section they come from, as a refusal names it
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    driver_cpus: float = 0.0

    @classmethod
    def of(cls, spec: JobSpec) -> TrialNeeds:
        if spec.tune is None:
            c = spec.cluster
            return cls("cluster", c.workers, c.cpus_per_worker, c.gpus_per_worker)
        r = spec.tune.resources
        return cls("tune.resources", r.workers, r.cpus_per_worker, r.gpus_per_worker, r.driver_cpus)

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker + self.driver_cpus

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker

    def trials_in(self, resources: dict[str, float]) -> int:
        """How many such trials ``resources`` (Ray's ``cluster_resources()``) hold at once; 0: not even one.

        Ray places a fraction of a GPU within one GPU, so each GPU holds ``1 // fraction`` workers."""
        counts = [_whole(resources.get("CPU", 0.0) / self.cpus)]
        g = self.gpus_per_worker
        if g:
            gpus = resources.get("GPU", 0.0)
            workers = _whole(1 / g) * _whole(gpus) if g < 1 else _whole(gpus / g)
            counts.append(workers // self.workers)
        return min(counts)

    def refusal(self, resources: dict[str, float]) -> str | None:
        """Why not even one such trial fits ``resources``, in one line; None where one does."""
        if self.trials_in(resources):
            return None
        cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        if _whole(cpus / self.cpus) == 0:
            driver = " + driver_cpus" if self.driver_cpus else ""
            return (
                f"{self.where}: one trial needs {self.cpus:g} CPUs (workers x cpus_per_worker{driver}), this Ray "
                f"has {cpus:g}: lower {self.where}.workers or {self.where}.cpus_per_worker"
            )
        return (
            f"{self.where}: one trial needs {self.gpus:g} GPUs (workers x gpus_per_worker), this Ray has {gpus:g}: "
            f"lower {self.where}.workers or {self.where}.gpus_per_worker (0: train on CPUs)"
        )


def _whole(count: float) -> int:
    """A count of things that fit, read past float error (Ray counts resources in steps of 0.0001)."""
    return math.floor(count + 1e-6)


def join_cluster(spec: JobSpec) -> None:
    """Join the running Ray cluster this machine belongs to (``cluster.address: auto``: a submitted job's driver).

    The job's workers get the variables ``cluster.forward_env`` names, and the dashboard's address: Ray
    Train's clean-up actors find the state API through it (without it they search the machine, and give
    up where several Ray instances run, leaking the resources of stopped trials). The forwarded values
    (credentials) are set by a worker set-up hook, which Ray keeps as a pickled function: as ``env_vars``
    of the runtime env they would be written to every node's runtime-env log and shown with the job.
    """
    import ray
    from ray.dashboard.utils import ray_address_to_api_server_url

    if ray.is_initialized():
        return
    forwarded = {name: os.environ[name] for name in spec.cluster.forward_env if os.environ.get(name)}

    def set_forwarded_variables() -> None:
        os.environ.update(forwarded)

    env_vars = {}
    if not os.environ.get("RAY_API_SERVER_ADDRESS"):
        env_vars["RAY_API_SERVER_ADDRESS"] = ray_address_to_api_server_url("auto")
    ray.init(
        address="auto",
        runtime_env={"env_vars": env_vars, "worker_process_setup_hook": set_forwarded_variables},
        logging_level="WARNING",
        logging_config=ray.LoggingConfig(log_level="WARNING"),
    )
    resources = ray.cluster_resources()
    log.get("rnnfarm.run").info(
        "joined the Ray cluster",
        nodes=len([n for n in ray.nodes() if n["Alive"]]),
        cpus=resources.get("CPU", 0),
        gpus=resources.get("GPU", 0),
        code=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # where this rnnfarm's code comes from
    )


def ensure_ray(spec: JobSpec) -> dict[str, float]:
    """Start an embedded Ray (``local``) or join this machine's cluster (``auto``); returns its resources.

    One trial's CPUs and GPUs must fit an embedded Ray, and a cluster of fixed size; where ``cluster.autoscaling``
    says the cluster adds nodes as trials wait, a trial larger than the cluster is only a warning.
    """
    import ray

    address = spec.cluster.address
    if address == "local":
        start_local_ray()
    elif address == "auto":
        join_cluster(spec)
    else:
        raise UserError(
            f"cluster.address {address!r} is a cluster to submit to: `rnnfarm run` or rnnfarm.launch.submit does it"
        )
    credentials.deposit()  # the storage credentials read so far, for this job's workers
    resources = ray.cluster_resources()
    needs = TrialNeeds.of(spec)
    if refusal := needs.refusal(resources):
        if spec.cluster.autoscaling:
            log.get("rnnfarm.run").warning("one trial needs more than the cluster has now", reason=refusal)
            return resources
        raise UserError(
            refusal + (", or set cluster.autoscaling: true if this cluster adds nodes" if address == "auto" else "")
        )
    if address == "local":  # the workers are this machine's: on its CPUs unless torch here sees a GPU
        import torch

        if not needs.gpus_per_worker or not torch.cuda.is_available():
            refuse_bf16_without_kernel(spec.train.precision, torch.device("cpu"))
    return resources


def parent_options(url: str, spec: JobSpec) -> dict[str, Any]:
    """The storage options for a parent at ``url``: the spec's where it is on the run's kind of storage (the same
    credentials), none otherwise (the environment's then, as for ``rnnfarm sample``)."""
    same = protocol_of(normalize_url(url)) == protocol_of(normalize_url(spec.storage))
    return dict(spec.storage_options) if same else {}


def _checkpoint(field: str, url: str, spec: JobSpec) -> Store:
    try:
        return checkpoint_store(url, parent_options(url, spec))
    except UserError as exc:
        raise UserError(f"{field}: {exc}") from None


def parent_of(spec: JobSpec) -> tuple[Parent | None, Vocab | None]:
    """The parent training starts from (its shape checked against the spec's), and the vocabulary that encodes
    the corpus: ``corpus.vocab_from``'s, else the parent's; each None where the spec names none."""
    parent, vocab = None, None
    if (url := spec.train.init_from) is not None:
        folder = _checkpoint("train.init_from", url, spec)
        meta, data = parents.read(folder, url)
        parents.check_shape(meta["model"], spec.model, url)
        vocab = Vocab.from_json(meta["vocab"])
        parent = Parent(folder, parents.lineage(url, folder, meta, data), vocab)
    if (url := spec.corpus.vocab_from) is not None:
        meta, _ = parents.read(_checkpoint("corpus.vocab_from", url, spec), url)
        vocab = Vocab.from_json(meta["vocab"])
    if vocab is not None:
        check_parent_vocab(spec.corpus, vocab)
    return parent, vocab


def run(spec: JobSpec, name: str | None = None) -> Outcome:
    logger = log.get("rnnfarm.run")
    if name is not None:
        run_name(name)
    storage = Store.at(spec.storage, spec.storage_options)
    storage.check(write=True)
    plugin(spec.corpus)  # an unknown plugin or option is refused before Ray starts
    parent, vocab = parent_of(spec)  # a missing parent or one of another shape, too
    resources = ensure_ray(spec)  # a trial that cannot fit is refused before anything is written
    built = build(storage, spec.corpus, vocab)
    if spec.samples.novelty:  # once per corpus fingerprint, here: the workers only read it
        novelty.build(built.folder)
    corpus_vocab = Vocab.from_json(built.manifest["vocab"])
    corpus_vocab.encode(spec.samples.prime, strict=True)
    if parent is not None:
        parents.check_vocab(corpus_vocab, parent)

    the_run = Run.under(storage, name or spec.name)
    corpus = {"name": spec.corpus.name, "fingerprint": built.fingerprint, "url": built.folder.url}
    earlier = record.begin(the_run, spec, corpus, parent.lineage if parent is not None else None)
    if earlier is not None and earlier.get("status") == "completed":
        logger.info("run already completed", run=the_run.name, url=the_run.store.url)
        return Outcome(the_run, earlier, leaderboard.read(the_run))

    if spec.tune is not None:
        from .sweep import sweep

        # As many trials as the CPUs and GPUs hold at once: Tune reserves only each trial's driver
        concurrency = spec.tune.concurrency or max(1, TrialNeeds.of(spec).trials_in(resources))
        logger.info("sweeping", run=the_run.name, trials=spec.tune.samples, concurrency=concurrency)
        ends = sweep(spec, the_run, built.folder, log.log_format(), concurrency, parent)
    else:
        logger.info("training", run=the_run.name, workers=spec.cluster.workers, steps=spec.train.steps)
        ends = [single(spec, the_run, built.folder, parent)]
    return finish(the_run, ends, spec, built.folder, built.manifest["splits"])


def single(spec: JobSpec, the_run: Run, corpus: Store, parent: Parent | None = None) -> TrialEnd:
    """Train the spec's one model as the run's only trial (from the parent's weights, where one is given)."""
    from ..engine.ray_train import fit

    trial = the_run.trial(SINGLE_TRIAL)
    try:
        fit(Job(spec=spec, corpus=corpus, trial=trial, parent=parent), log.log_format())
    except TrainingFailed as exc:
        log.get("rnnfarm.run").error("run failed", run=the_run.name, error=str(exc))
        try:  # running the same spec again resumes from the latest checkpoint
            record.end(the_run, "failed", error=str(exc))
            archive.consolidate(trial)
        except UserError as unrecorded:  # the storage itself may be what failed: the training error is the one to tell
            log.get("rnnfarm.run").warning("could not record the failure", run=the_run.name, reason=str(unrecorded))
        raise
    archive.consolidate(trial)
    return TrialEnd(SINGLE_TRIAL, {})


def finish(the_run: Run, ends: list[TrialEnd], spec: JobSpec, corpus: Store, splits: dict[str, Any]) -> Outcome:
    """Rank the trials, promote the best kept checkpoint to ``best/``, score it on the test split if the
    corpus has one, and close the run's record."""
    target = spec.train.steps
    states = {e.trial: trial_state(the_run.trial(e.trial), target=target, failed=e.error is not None) for e in ends}
    kept = {end.trial: leaderboard.best_checkpoint(the_run.trial(end.trial)) for end in ends}
    rows = leaderboard.ranked([leaderboard.row(states[end.trial], end, kept[end.trial]) for end in ends])
    leaderboard.write(the_run, rows)
    candidates = [(meta["val_loss"], trial, name) for trial, k in kept.items() if k for name, meta in [k]]
    if spec.tune is None:  # a sweep's trials are logged as they end (sweep.TrialEnds)
        (r,) = rows
        fields = {k: r[k] for k in ("trial", "status", "steps", "best_val_loss", "error")}
        log.get("rnnfarm.run").info("trial ended", run=the_run.name, **fields)
    if not candidates:
        errors = "; ".join(f"{end.trial}: {end.error}" for end in ends if end.error) or "no checkpoint was kept"
        record.end(the_run, "failed", error=errors)
        log.get("rnnfarm.run").error("run failed", run=the_run.name, error=errors)
        raise TrainingFailed(f"training failed: {errors}")
    _, trial, name = min(candidates)
    best = record.promote(the_run, trial, name)
    best["val_bpc"] = bits(best["val_loss"])
    if "test" in splits:  # the corpus has a test split (`corpus.test` > 0)
        best["test_loss"] = test_split_loss(the_run, spec, corpus, next(e for e in ends if e.trial == trial))
        best["test_bpc"] = bits(best["test_loss"])
    counts = {s: sum(state.status == s for state in states.values()) for s in STATUSES}
    ended = record.end(the_run, "completed", best=best, trials=counts)
    report.publish(the_run)
    log.get("rnnfarm.run").info(
        "run completed", run=the_run.name, val_loss=round(best["val_loss"], 4), best=best["url"]
    )
    return Outcome(the_run, ended, rows)


def test_split_loss(the_run: Run, spec: JobSpec, corpus: Store, end: TrialEnd) -> float:
    """The promoted checkpoint's loss on the whole test split, cut as its trial cut val."""
    from ..insight.sample import local_checkpoint

    if spec.tune is not None:
        from .sweep import trial_spec

        spec = trial_spec(spec, end.settings)
    with local_checkpoint(the_run.best.url, the_run.store.options) as folder:
        return evaluate_split(Job(spec, corpus, the_run.trial(end.trial)), folder, "test")
