"""Shared fixtures: one embedded Ray for the session, and tiny Shakespeare built once."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from rnnfarm import log, spec
from rnnfarm.corpus.build import build
from rnnfarm.engine.loop import cpu_has_bf16_kernels
from rnnfarm.storage import Store

log.configure("json")

ROOT = Path(__file__).resolve().parent.parent

# Both precisions; bf16 only where this CPU runs oneDNN's bf16 kernels (test_reliability checks the refusal).
PRECISIONS = [
    "fp32",
    pytest.param("bf16", marks=pytest.mark.skipif(not cpu_has_bf16_kernels(), reason="no bf16 kernels: no AVX-512")),
]

# The longest files, run first: the two test processes (pyproject.toml) then end close together, not one
# of them running a long file alone at the end.
LONGEST = ["test_reliability.py", "test_cluster.py", "test_terminal.py", "test_tune.py", "test_pull.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST)))  # stable: the rest keep their order


# Actors that stay by design: rnnfarm's credentials vault is one per driver (not per run), holds no resource,
# keeps the storage credentials in memory for the job's workers, and ends with the driver (credentials.py).
KEPT = {"_Vault"}


def left_in_ray(wait_s: float = 30.0) -> list[str]:
    """What a run left in the shared test Ray, after ``wait_s`` for Ray to finish what was already on its way:
    placement groups not removed, and actors alive that are not detached (Serve's and Ray's own singletons are)
    or are Ray Train's detached placement-group cleaner; ``KEPT`` aside."""
    import time

    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    from rnnfarm.engine import placement

    def look() -> list[str]:
        left = [f"placement group {g.id} {g.resources}" for g in placement.groups() if not g.detached]
        for raw in state._connect_and_get_accessor().get_actor_table(None, "ALIVE"):
            actor = gcs_pb2.ActorTableData.FromString(raw)
            if _left(actor):
                left.append(f"actor {actor.class_name} {actor.actor_id.hex()}")
        return left

    deadline = time.monotonic() + wait_s
    while (left := look()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def clear_ray() -> None:
    """Kill every actor and remove every placement group ``left_in_ray`` names, so later tests get the CPUs."""
    import ray
    from ray._private.state import state
    from ray._private.worker import global_worker
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    from rnnfarm.engine import placement

    for raw in state._connect_and_get_accessor().get_actor_table(None, "ALIVE"):
        actor = gcs_pb2.ActorTableData.FromString(raw)
        if _left(actor):
            global_worker.core_worker.kill_actor(ray.ActorID(actor.actor_id), True)
    for group in placement.groups():
        if not group.detached:
            remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group.id)))


def _left(actor) -> bool:
    """Whether a live actor (GCS ``ActorTableData``) is one a run must not leave behind."""
    if actor.class_name in KEPT:
        return False
    return not actor.is_detached or actor.class_name == "PlacementGroupCleaner"


@pytest.fixture(autouse=True)
def ray_left_as_found(request):
    """Every test that uses the shared Ray leaves it as it found it: a leak fails the test that made it (and is
    cleared, so the tests after it still get their CPUs)."""
    yield
    if "ray_local" not in request.fixturenames:
        return
    left = left_in_ray()
    if left:
        clear_ray()
        pytest.fail(f"left in Ray after the test: {left}", pytrace=False)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance (2 CPUs, 1 logical GPU), shared by every test that trains through Ray. The GPU
    is Ray's scheduling only: a worker that holds it finds no CUDA, and trains on the CPU (tests/test_gpus.py)."""
    import ray

    from rnnfarm.launch.pipeline import start_local_ray

    start_local_ray(num_cpus=2, num_gpus=1)
    yield ray
    ray.shutdown()


def bench_script(file: str, name: str) -> types.ModuleType:
    """A script of bench/ (not a package) imported as module ``name``."""
    found = importlib.util.spec_from_file_location(name, ROOT / "bench" / file)
    module = importlib.util.module_from_spec(found)
    sys.modules[name] = module
    found.loader.exec_module(module)
    return module


def make_spec(storage: str, **sections) -> spec.JobSpec:
    """A small valid spec: tiny Shakespeare, a 1x32 LSTM, a few steps; sections override."""
    data = {
        "name": "tiny",
        "storage": storage,
        "corpus": {"name": "shakespeare"},
        "model": {"layers": 1, "hidden": 32, "embedding": 16},
        "train": {"steps": 30, "batch_size": 8, "seq_len": 32, "eval_every": 15, "lr": 0.01},
        "samples": {"temperatures": [0.8], "length": 40},
        "cluster": {"workers": 1},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return spec.parse(data)


@pytest.fixture(scope="session")
def shakespeare(tmp_path_factory):
    """tiny Shakespeare, built (sha256-checked source) into a session-wide storage folder."""
    storage = Store.at(str(tmp_path_factory.mktemp("storage")))
    return build(storage, make_spec(storage.url).corpus)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3 server (SeaweedFS) on 127.0.0.1 with generated credentials and one bucket, ``rnnfarm-test``."""
    from tests import s3local

    server = s3local.start(tmp_path_factory.mktemp("s3"))
    server.create_bucket("rnnfarm-test")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def trained_checkpoint(shakespeare, tmp_path_factory):
    """A 2x32 LSTM trained in-process for 40 steps on tiny Shakespeare: its last checkpoint folder."""
    from rnnfarm.engine.loop import Job, LocalSession, train
    from rnnfarm.layout import Run

    root = tmp_path_factory.mktemp("trained")
    job = make_spec(str(root / "storage"), model={"layers": 2}, train={"steps": 40, "eval_every": 20})
    train(Job(job, shakespeare.folder, Run(Store.at(job.storage) / "runs" / "t").trial()), LocalSession(root / "ckpt"))
    return root / "ckpt" / "checkpoint-000040"


def runs_out_of_device_memory(*args, **kwargs):
    """What torch raises when a GPU's memory runs out, raised where a model would compute: no GPU here to run out."""
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
