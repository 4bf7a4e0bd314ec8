"""Shared fixtures: one embedded Ray for the session, and tiny Shakespeare built once."""

from __future__ import annotations

import pytest

from rnnfarm import log, spec
from rnnfarm.corpus.build import build
from rnnfarm.engine.loop import cpu_has_bf16_kernels
from rnnfarm.storage import Store

log.configure("json")

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


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance (2 CPUs), shared by every test that trains through Ray."""
    import ray

    from rnnfarm.launch.pipeline import start_local_ray

    start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


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
