"""A run's workers in a Ray instance: a bounded wait for their placement, and nothing left behind after it.

Ray Train's controller (an actor the driver owns) creates each worker group's placement group. Ray removes a
placement group only when both its creator actor and its creator's job have ended (``GcsPlacementGroupManager``,
``IsPlacementGroupLifetimeDone``), and Ray Train's ``PlacementGroupCleaner`` learns of a group only after its
workers have started (``PlacementGroupCleanerCallback.after_worker_group_start``). So a controller killed while
its workers wait for room (an ASHA stop, a sweep's time budget, a driver interrupted) leaves a group that takes
its CPUs as soon as they free up, and holds them for as long as the driver's job lives: a notebook, a test
session, a long-lived cluster's job. Such an orphan (its creator actor dead) is removed here.

Ray's own wait for a worker group has no end on a Ray that cannot grow (``WorkerGroupStartupTimeoutError`` after
60 s, retried without limit), so :class:`Waiting` bounds it by ``cluster.placement_timeout_s`` and names what
holds the resources that are missing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import ray
from ray._private.state import state as gcs
from ray._private.worker import global_worker
from ray.core.generated import gcs_pb2
from ray.util.placement_group import PlacementGroup, remove_placement_group

from .. import log
from ..errors import TrainingFailed

CONTROLLER = "TrainController"
PLACED = gcs_pb2.PlacementGroupTableData.CREATED
REMOVED = gcs_pb2.PlacementGroupTableData.REMOVED
SHOWN = ("CPU", "GPU")  # the resources a refusal speaks of
Result = TypeVar("Result")


@dataclass(frozen=True)
class Group:
    """One placement group as Ray's control store (GCS) keeps it."""

    id: str
    placed: bool
    resources: dict[str, float]  # summed over its bundles
    job: str
    creator: str  # the actor that created it; "" where a driver did
    creator_alive: bool
    detached: bool

    @property
    def orphaned(self) -> bool:
        """Created by an actor that is not alive: nothing can use it any more, yet Ray keeps it while its job lives.

        Read from the actor table, not from the group's ``creator_actor_dead``: a controller Ray has marked dead
        may still run for a moment, and a group it creates then is never marked.
        """
        return bool(self.creator) and not self.creator_alive and not self.detached


def _alive_actors(job: str | None = None) -> list[gcs_pb2.ActorTableData]:
    raw = gcs._connect_and_get_accessor().get_actor_table(ray.JobID.from_hex(job) if job else None, "ALIVE")
    return [gcs_pb2.ActorTableData.FromString(r) for r in raw]


def groups() -> list[Group]:
    """Every placement group not yet removed."""
    alive = {a.actor_id.hex() for a in _alive_actors()}
    found = []
    for raw in gcs._connect_and_get_accessor().get_placement_group_table():
        pg = gcs_pb2.PlacementGroupTableData.FromString(raw)
        if pg.state == REMOVED:
            continue
        resources: dict[str, float] = {}
        for bundle in pg.bundles:
            for name, amount in bundle.unit_resources.items():
                resources[name] = resources.get(name, 0.0) + amount
        creator = pg.creator_actor_id.hex() if pg.creator_actor_id.strip(b"\xff\x00") else ""
        found.append(
            Group(
                id=pg.placement_group_id.hex(),
                placed=pg.state == PLACED,
                resources=resources,
                job=pg.creator_job_id.hex(),
                creator=creator,
                creator_alive=creator in alive,
                detached=pg.is_detached,
            )
        )
    return found


def this_job() -> str:
    return ray.get_runtime_context().get_job_id()


def own_controllers() -> list[str]:
    """Ray Train controllers alive that this process started (a driver owns the controller its ``fit`` starts)."""
    me = bytes.fromhex(ray.get_runtime_context().get_worker_id())
    actors = _alive_actors(this_job())
    return [a.actor_id.hex() for a in actors if a.class_name == CONTROLLER and a.owner_address.worker_id == me]


def remove_orphans() -> list[Group]:
    """Remove this job's placement groups whose creator actor has died; the ones removed."""
    job = this_job()
    removed = []
    for group in groups():
        if group.job == job and group.orphaned:
            with contextlib.suppress(Exception):  # Ray Train's own cleaner may have removed it just now
                remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group.id)))
                removed.append(group)
    return removed


def stop_own_controllers(wait_s: float = 30.0) -> None:
    """Kill the controllers this process started that are still alive (their workers and helpers die with them),
    wait for Ray to see them dead, then remove the placement groups they leave."""
    controllers = own_controllers()
    for actor_id in controllers:
        with contextlib.suppress(Exception):
            global_worker.core_worker.kill_actor(ray.ActorID.from_hex(actor_id), True)  # ray.kill, by id
    deadline = time.monotonic() + wait_s
    while controllers and own_controllers() and time.monotonic() < deadline:
        time.sleep(0.1)
    _remove_orphans_until_quiet(deadline, quiet_s=0.5 if controllers else 0.0)


def job_controllers() -> list[str]:
    """Ray Train controllers alive in this job (a sweep's trials start theirs in processes of this job)."""
    return [a.actor_id.hex() for a in _alive_actors(this_job()) if a.class_name == CONTROLLER]


def settle(wait_s: float = 30.0, quiet_s: float = 2.0) -> None:
    """After a sweep: the controllers of its trials die with the trials' processes, a moment after them. Wait for
    that, then remove the placement groups they leave, until none has appeared for ``quiet_s`` (a controller Ray
    has marked dead may still create one while its process is being stopped)."""
    deadline = time.monotonic() + wait_s
    while job_controllers() and time.monotonic() < deadline:
        time.sleep(0.2)
    _remove_orphans_until_quiet(deadline, quiet_s)


def _remove_orphans_until_quiet(deadline: float, quiet_s: float) -> None:
    """Remove orphans until none has appeared for ``quiet_s`` (once, where it is 0), or until ``deadline``."""
    last = time.monotonic()
    while True:
        if remove_orphans():
            last = time.monotonic()
        if time.monotonic() - last >= quiet_s or time.monotonic() >= deadline:
            return
        time.sleep(0.1)


@dataclass(frozen=True)
class Holder:
    """Something that holds resources, as a refusal names it; ``ours``: live work of this job (a sweep's trials)."""

    what: str
    ours: bool


def holders(resources: tuple[str, ...] = SHOWN) -> list[Holder]:
    """What holds each of ``resources`` in this Ray: placement groups placed, and actors outside any placement
    group (a Serve replica, another job's)."""
    job = this_job()
    found = []
    for group in groups():
        held = {r: group.resources.get(r, 0.0) for r in resources if group.resources.get(r, 0.0) > 0}
        if not group.placed or not held:
            continue
        if group.orphaned:
            whose = "its creator actor is dead"
        elif group.job == job:
            whose = "a Ray Train run of this job" if group.creator else "this job's driver"
        else:
            whose = f"job {group.job}"
        ours = group.job == job and not group.orphaned
        found.append(Holder(f"placement group {group.id[:12]} ({_amounts(held)}, {whose})", ours))
    for actor in _alive_actors():
        held = {r: actor.required_resources.get(r, 0.0) for r in resources if actor.required_resources.get(r, 0.0)}
        if held and not actor.placement_group_id.strip(b"\xff\x00"):
            owner = actor.job_id.hex()
            found.append(Holder(f"actor {actor.class_name} ({_amounts(held)}, job {owner})", owner == job))
    return found


def _amounts(resources: dict[str, float]) -> str:
    return ", ".join(f"{amount:g} {name}" for name, amount in resources.items())


class Waiting:
    """Watches the controllers this process started while their workers wait for room.

    A wait starts when a controller's placement group is asked for and no group of it is placed; it ends when
    one is. Past ``timeout_s`` the wait is given up, with the reason, unless the cluster can grow (an autoscaler
    adds nodes for waiting work: then it is only logged), or, for a sweep's trial (``patient``), unless all that
    holds the missing resources is this job's own live work: the sweep's other trials.
    """

    ANNOUNCE_AFTER_S = 5.0  # a shorter wait is a worker group starting, not news

    def __init__(
        self, *, workers: int, per_worker: dict[str, float], timeout_s: float, can_grow: bool, patient: bool, trial: str
    ) -> None:
        self.workers, self.per_worker, self.timeout_s = workers, per_worker, timeout_s
        self.can_grow, self.patient, self.trial = can_grow, patient, trial
        self.since: float | None = None  # when the wait began
        self.clock: float | None = None  # when the time it may take began: a sweep's trial restarts it (patient)
        self.announced_at: float | None = None

    @property
    def wanted(self) -> str:
        return _amounts({r: self.workers * self.per_worker[r] for r in SHOWN if self.per_worker.get(r)})

    def check(self) -> str | None:
        """Look once; the reason to give up, or None to wait on."""
        mine = set(own_controllers())
        ours = [g for g in groups() if g.creator in mine]
        if not mine or any(g.placed for g in ours):
            if self.announced_at is not None:
                log.get("rnnfarm.train").info("workers placed", trial=self.trial, waited_s=round(self._waited(), 1))
            self.since = self.clock = self.announced_at = None
            return None
        if self.since is None:
            if not ours:  # the controller is starting: nothing asked for yet
                return None
            self.since = self.clock = time.monotonic()
        remove_orphans()  # a stopped trial's group would take what this run waits for
        waited = self._waited()
        if waited >= self.ANNOUNCE_AFTER_S and (self.announced_at is None or time.monotonic() - self.announced_at > 60):
            self.announced_at = time.monotonic()
            free = ray.available_resources()
            log.get("rnnfarm.train").warning(
                f"waiting for {self.wanted}",
                trial=self.trial,
                waited_s=round(waited, 1),
                free=_amounts({r: free.get(r, 0.0) for r in SHOWN if self.per_worker.get(r)}),
                held_by="; ".join(h.what for h in holders()) or None,
                gives_up_after_s=None if self.can_grow else self.timeout_s,
            )
        if self.can_grow or time.monotonic() - self.clock < self.timeout_s:
            return None
        held = holders()
        if self.patient and all(h.ours for h in held):
            self.clock = time.monotonic()  # the sweep's own trials: they end, and free what they hold
            return None
        return self._reason(held)

    def _waited(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since

    def _reason(self, held: list[Holder]) -> str:
        free, total = ray.available_resources(), ray.cluster_resources()
        room = ", ".join(
            f"{free.get(r, 0.0):g} of {total.get(r, 0.0):g} {r}s free" for r in SHOWN if self.per_worker.get(r)
        )
        named = "; ".join(h.what for h in held) or "tasks or work outside placement groups"
        return (
            f"cluster: {self.workers} worker(s) waited {self.timeout_s:g} s for {self.wanted} and could not be placed: "
            f"this Ray has {room}; held by {named}. "
            f"Free them (`ray list placement-groups`, `ray list actors`), or raise cluster.placement_timeout_s"
        )


CHECK_EVERY_S = 1.0


def result_of(task: ray.ObjectRef, waiting: Waiting) -> Any:
    """The result of a small task that holds one worker's GPUs (the device probe), waited for as the workers are:
    past ``waiting.timeout_s`` it is cancelled and the run fails naming what holds the GPUs, unless the cluster
    can grow or, for a sweep's trial, all that holds them is the sweep's own live trials."""
    clock = time.monotonic()
    while not ray.wait([task], timeout=CHECK_EVERY_S)[0]:
        if waiting.can_grow or time.monotonic() - clock < waiting.timeout_s:
            continue
        held = holders(("GPU",))
        if waiting.patient and all(h.ours for h in held):
            clock = time.monotonic()
            continue
        ray.cancel(task, force=True)
        free, total = ray.available_resources().get("GPU", 0.0), ray.cluster_resources().get("GPU", 0.0)
        raise TrainingFailed(
            f"cluster: no room for one worker's {waiting.per_worker['GPU']:g} GPU within {waiting.timeout_s:g} s: "
            f"this Ray has {free:g} of {total:g} GPUs free; held by "
            f"{'; '.join(h.what for h in held) or 'tasks or work outside placement groups'}. "
            "Free them (`ray list placement-groups`, `ray list actors`), or raise cluster.placement_timeout_s"
        )
    return ray.get(task)


def bounded(fit: Callable[[], Result], waiting: Waiting) -> Result:
    """``fit()`` (which runs one Ray Train controller) in a thread of its own, watched by ``waiting``; however it
    ends (done, failed, given up, KeyboardInterrupt), this process's controllers are stopped after it and the
    placement groups they leave removed.

    Off the main thread, ``TorchTrainer.fit`` installs no SIGINT handler. On it, Ray's handler
    (``DataParallelTrainer._register_sigint_handler``) stays after the run, swallowing the next ctrl-C, and its
    closure keeps the controller actor alive for as long as the process lives.
    """
    done: dict[str, Any] = {}

    def target() -> None:
        try:
            done["result"] = fit()
        except BaseException as exc:  # handed to the caller's thread
            done["error"] = exc

    thread = threading.Thread(target=target, name="rnnfarm-fit", daemon=True)
    thread.start()
    reason = None
    try:
        while thread.is_alive():
            thread.join(CHECK_EVERY_S)  # wakes for ctrl-C too
            if reason is None and thread.is_alive():
                reason = _look(waiting)
                if reason is not None:
                    stop_own_controllers()
    finally:
        stop_own_controllers()
    if reason is not None:
        raise TrainingFailed(reason)
    if "error" in done:
        raise done["error"]
    return done["result"]


def _look(waiting: Waiting) -> str | None:
    try:
        return waiting.check()
    except Exception as exc:  # Ray's tables unreadable for a moment: the run goes on, the next look may tell
        log.get("rnnfarm.train").debug("could not read Ray's placement groups", error=str(exc))
        return None
