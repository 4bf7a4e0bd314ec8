"""deploy/: the cluster job, the Ray cluster-launcher config (checked against the schema inside the ray package),
the KubeRay manifest (its pods checked against Kubernetes' schema) and the image agree with one another."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from rnnfarm import spec
from rnnfarm.launch.pipeline import TrialNeeds

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def load(name: str):
    return yaml.safe_load((DEPLOY / name).read_text())


def pinned_torch() -> str:
    return re.search(r"^TORCH \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)[1]


def test_the_cluster_job_is_a_gpu_sweep_of_up_to_three_layers_of_512_on_s3():
    job = spec.load(DEPLOY / "cluster.yaml")
    assert job.storage.startswith("s3://") and job.cluster.address.startswith("http")
    assert max(job.tune.space["model.layers"].candidates) == 3
    assert max(job.tune.space["model.hidden"].candidates) == 512
    assert job.tune.resources.gpus_per_worker == 1 and job.tune.resources.workers >= 2  # a whole GPU per rank
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(job.cluster.forward_env)
    assert job.cluster.code == "installed" and not job.cluster.storage_shared


def test_the_cluster_launcher_config_passes_rays_own_checks():
    config = load("ray-cluster.aws.yaml")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` checks before it calls AWS

    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    gpu = config["available_node_types"]["gpu"]
    assert gpu["resources"]["GPU"] > 0 and gpu["min_workers"] == 0
    assert config["file_mounts"]["~/rnnfarm"] == "."
    assert any(pinned_torch() in c and "~/rnnfarm" in c for c in config["setup_commands"])
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert any("RAY_AUTH_MODE=token" in c and "ray start" in c for c in commands)

    job = spec.load(DEPLOY / "cluster.yaml")
    grown = {"CPU": gpu["max_workers"] * gpu["resources"]["CPU"], "GPU": gpu["max_workers"] * gpu["resources"]["GPU"]}
    assert job.tune.concurrency <= TrialNeeds.of(job).trials_in(grown)  # the sweep's trials fit the grown cluster


def test_the_kuberay_manifest_runs_the_image_with_token_auth_on_gpu_workers():
    manifest = load("kuberay.yaml")
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    assert manifest["spec"]["rayVersion"] == ray.__version__
    head = manifest["spec"]["headGroupSpec"]
    groups = manifest["spec"]["workerGroupSpecs"]
    templates = [head["template"], *(g["template"] for g in groups)]
    for template in templates:  # each pod as Kubernetes would take it, unknown fields refused
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "rnnfarm"}, "spec": template["spec"]}
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
    containers = [c for t in templates for c in t["spec"]["containers"]]
    assert len({c["image"] for c in containers}) == 1
    for c in containers:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "rnnfarm-ray-token"
    assert 8265 in {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}

    job = spec.load(DEPLOY / "cluster.yaml")
    limits = [(g["maxReplicas"], g["template"]["spec"]["containers"][0]["resources"]["limits"]) for g in groups]
    grown = {
        "CPU": sum(n * int(limit["cpu"]) for n, limit in limits),
        "GPU": sum(n * int(limit["nvidia.com/gpu"]) for n, limit in limits),
    }
    assert job.tune.concurrency <= TrialNeeds.of(job).trials_in(grown)


def test_the_image_pins_the_ray_and_torch_the_project_pins_and_copies_what_exists():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:(\S+?)-py311-gpu$", dockerfile, re.M)[1] == ray.__version__
    assert f'ray[default,train,tune]=={ray.__version__}"' in (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^ARG TORCH=(\S+)$", dockerfile, re.M)[1] == pinned_torch()
    copied = [p for line in re.findall(r"^COPY \S+ (.+) \S+$", dockerfile, re.M) for p in line.split()]
    assert copied and all((ROOT / p).exists() for p in copied)
    allowed = {
        line[1:] for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if line.startswith("!")
    }
    assert set(copied) <= allowed


def test_the_serve_config_passes_rays_serve_schema_and_serves_the_cluster_jobs_run():
    from ray.serve.schema import ServeDeploySchema

    from rnnfarm.serving import serve as serving

    config = ServeDeploySchema.model_validate(load("serve.yaml"))  # what `serve deploy` checks before sending it
    (served,) = config.applications
    assert served.import_path == "rnnfarm.serving.serve:app" and served.name == serving.APP_NAME
    args = serving.ServeArgs.model_validate(served.args)
    job = spec.load(DEPLOY / "cluster.yaml")
    assert args.checkpoint == f"{job.storage}/runs/{job.name}"
    assert isinstance(serving.app(served.args), ray.serve.Application)  # the builder takes these args
