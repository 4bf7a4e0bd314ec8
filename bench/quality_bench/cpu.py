"""Whose CPU time a figure was measured beside, from /proc: the run's own, or that of processes outside it.

A load average counts the run's own workers with everyone else's. Here the CPUs this process may run on are
read from /proc/stat (busy time, every process's, those that have exited included), and the run's own
processes from /proc/<pid>/stat: the benchmark process and its descendants (`rnnfarm run`, the Ray it starts,
Ray's workers), a process staying the run's once seen among them, even if it is later re-parented. What is
left is the outsiders'. A process of the run that lives less than the sampling interval is counted as an
outsider, so the share errs toward calling the machine busy.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")  # /proc counts CPU time in these ticks per second

Key = tuple[int, int]  # (pid, start time): a pid reused by a later process is another process


def processes(proc: Path = Path("/proc")) -> dict[Key, tuple[int, int]]:
    """Every process now: its key, its parent's pid and its user + system CPU ticks."""
    found = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
        ppid, ticks, started = int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19])
        found[(int(entry.name), started)] = (ppid, ticks)
    return found


def busy_ticks(cpus: set[int], proc: Path = Path("/proc")) -> int:
    """Ticks the CPUs ``cpus`` spent busy since boot: user, nice, system, irq, softirq and steal."""
    total = 0
    for line in (proc / "stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in values[:8])
            total += user + nice + system + irq + softirq + steal
    return total


@dataclass
class CpuWatch:
    """CPU seconds on this process's CPUs while it runs, split into the run's own (``root`` and its
    descendants) and the outsiders'; sampled every ``interval`` seconds on a thread of its own."""

    root: int = field(default_factory=os.getpid)
    interval: float = 1.0
    proc: Path = Path("/proc")

    def __post_init__(self) -> None:
        self.cpus = os.sched_getaffinity(0)
        self.own: dict[Key, int] = {}  # the run's processes: their ticks when last seen
        self.baseline: dict[Key, int] = {}  # the run's processes at the (re)start: their ticks then
        self.stop, self.lock = threading.Event(), threading.Lock()  # the lock: the sampling thread's and restart's

    def sample(self) -> None:
        """Read every process once: the run's processes, with the descendants found now, and their ticks."""
        now = processes(self.proc)
        with self.lock:
            self._take(now)

    def _take(self, now: dict[Key, tuple[int, int]]) -> None:
        children: dict[int, list[Key]] = {}
        for key, (ppid, _) in now.items():
            children.setdefault(ppid, []).append(key)
        todo = [key for key in now if key[0] == self.root or key in self.own]
        while todo:
            key = todo.pop()
            if key not in self.own:
                self.own[key] = 0
            todo += [child for child in children.get(key[0], []) if child not in self.own]
        for key in self.own.keys() & now.keys():
            self.own[key] = now[key][1]

    def restart(self) -> None:
        """Count from now on: what the run's processes and the CPUs spent so far is left out."""
        now = processes(self.proc)
        with self.lock:
            self.started, self.busy_then = time.monotonic(), busy_ticks(self.cpus, self.proc)
            self._take(now)
            self.baseline = dict(self.own)

    def __enter__(self) -> CpuWatch:
        self.restart()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.sample()
        self.wall_s = time.monotonic() - self.started
        self.busy = busy_ticks(self.cpus, self.proc) - self.busy_then

    def result(self) -> dict[str, Any]:
        """The run's CPU seconds, the outsiders', and the outsiders' share of what the CPUs could give."""
        own = sum(ticks - self.baseline.get(key, 0) for key, ticks in self.own.items()) / TICK
        outside = max(0.0, self.busy / TICK - own)
        return {
            "cpus": len(self.cpus),
            "wall_s": round(self.wall_s, 1),
            "own_cpu_s": round(own, 1),
            "outside_cpu_s": round(outside, 1),
            "outside_share": round(outside / (self.wall_s * len(self.cpus)), 4),
        }
