"""A corpus plugin shipped as a separate distribution: installed into a temporary folder, found through
its entry point in a fresh process, listed, built and trained on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parent / "plugin_package"
TRAIN = """
import json, sys
from pathlib import Path
from rnnfarm import spec
from rnnfarm.layout import Run
from rnnfarm.storage import Store
from rnnfarm.engine.loop import Job, LocalSession, train

storage, corpus = sys.argv[1], sys.argv[2]
job = spec.parse({
    "name": "romeo", "storage": storage, "corpus": {"name": "romeo"},
    "model": {"layers": 1, "hidden": 32, "embedding": 16},
    "train": {"steps": 40, "batch_size": 4, "seq_len": 32, "eval_every": 20, "lr": 0.01, "precision": "fp32"},
    "samples": {"temperatures": [0.8], "length": 20}, "cluster": {"workers": 1},
})
session = LocalSession(Path(storage) / "checkpoints")
train(Job(job, Store.at(corpus), Run(Store.at(storage) / "runs" / "romeo").trial()), session)
print(json.dumps([report["val_loss"] for report in session.reports]))
"""


def test_a_plugin_from_another_distribution_is_listed_built_and_trained(tmp_path):
    source, site, storage = tmp_path / "src", tmp_path / "site", tmp_path / "storage"
    shutil.copytree(PACKAGE, source)  # the build writes next to its sources: keep them out of the checkout
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--target", str(site), str(source)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(site), "RNNFARM_LOG_FORMAT": "json"}

    def rnnfarm(*args: str) -> str:
        done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = {line.split()[0]: line.split() for line in rnnfarm("-m", "rnnfarm", "corpus", "list").splitlines()}
    assert listed["romeo"][1:4] == ["1", "rnnfarm-romeo", "0.1.0"]

    built = rnnfarm("-m", "rnnfarm", "corpus", "build", "romeo", "--to", str(storage))
    assert built.startswith("built: corpus romeo (plugin version 1, rnnfarm-romeo 0.1.0)")
    folder = built.splitlines()[1].removeprefix("location: ")
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    assert manifest["documents"] == 160 and manifest["distribution"] == "rnnfarm-romeo 0.1.0"

    val_losses = json.loads(rnnfarm("-c", TRAIN, str(storage), folder).splitlines()[-1])
    assert len(val_losses) == 2 and val_losses[1] < val_losses[0]
