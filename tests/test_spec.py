"""The job spec: YAML into validated sections; every mistake is one line naming its YAML path."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rnnfarm import spec
from rnnfarm.cli import cli
from rnnfarm.errors import UserError


def error_of(data) -> str:
    with pytest.raises(UserError) as caught:
        spec.parse(data, "job.yaml")
    return str(caught.value)


def test_the_shipped_local_spec_is_valid():
    job = spec.load("deploy/local.yaml")
    assert job.corpus.name == "shakespeare"
    assert job.cluster.workers == 2 and job.cluster.address == "local"


def test_defaults_fill_missing_sections():
    job = spec.parse({"name": "x"})
    assert job.model.cell == "lstm" and job.train.optimizer == "adam" and job.corpus.val == 0.1


def test_a_size_that_must_be_positive_names_its_path():
    assert error_of({"name": "x", "train": {"batch_size": 0}}) == "job.yaml: train.batch_size: must be > 0"


def test_unknown_keys_are_refused_at_any_depth():
    assert "model.hiden: is not a known key" in error_of({"name": "x", "model": {"hiden": 3}})
    assert "trian: is not a known key" in error_of({"name": "x", "trian": {}})


def test_wrong_types_and_choices():
    assert "train.steps: must be an integer" in error_of({"name": "x", "train": {"steps": "many"}})
    assert "model.cell: must be one of 'lstm', 'gru' or 'rnn'" in error_of({"name": "x", "model": {"cell": "tcn"}})
    assert "model.dropout: must be < 1" in error_of({"name": "x", "model": {"dropout": 1.5}})


def test_missing_name_and_bad_name():
    assert error_of({}) == "job.yaml: name: is required"
    assert "name: must be letters" in error_of({"name": "../escape"})


def test_several_problems_are_reported_on_one_line():
    message = error_of({"name": "x", "train": {"batch_size": -1, "seq_len": 0}})
    assert "train.batch_size: must be > 0" in message and "train.seq_len: must be > 0" in message
    assert "\n" not in message


def test_cross_field_rules():
    assert "warmup_steps (10) must be < steps (10)" in error_of(
        {"name": "x", "train": {"steps": 10, "warmup_steps": 10}}
    )


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        spec.load(path)


def test_yaml_syntax_error_gives_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ntrain: {steps: 3\n")
    with pytest.raises(UserError, match=r"broken.yaml: .* at line \d+"):
        spec.load(path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name: x\ntrain: {batch_size: 0}\n", "train.batch_size: must be > 0"),
        ("name: x\nwhat: 1\n", "what: is not a known key"),
        ("[1, 2]\n", "must be a YAML mapping"),
    ],
)
def test_cli_prints_one_line_and_exits_2(tmp_path, text, expected):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["run", str(path)])
    assert result.exit_code == 2
    assert expected in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_names_a_missing_spec_file(tmp_path):
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "no such spec file" in result.output


def test_gpus_per_worker_may_be_a_fraction_and_use_gpu_follows_it():
    cluster = spec.parse({"name": "x", "cluster": {"workers": 1, "gpus_per_worker": 0.25}}).cluster
    assert cluster.gpus_per_worker == 0.25 and cluster.use_gpu
    assert not spec.parse({"name": "x"}).cluster.use_gpu  # no GPU unless asked for
    # `use_gpu: true` alone, as specs wrote it before fractions: one GPU per worker
    assert spec.parse({"name": "x", "cluster": {"use_gpu": True}}).cluster.gpus_per_worker == 1
    resources = {"workers": 1, "gpus_per_worker": 0.5}
    trials = spec.parse({"name": "x", "tune": {"space": {"model.hidden": {"choice": [8]}}, "resources": resources}})
    assert trials.tune.resources.gpus_per_worker == 0.5 and trials.tune.resources.use_gpu


def test_gpus_per_worker_out_of_bounds_or_against_use_gpu_is_refused_in_one_line():
    assert error_of({"name": "x", "cluster": {"gpus_per_worker": -1}}).startswith(
        "job.yaml: cluster.gpus_per_worker: must be >= 0"
    )
    assert error_of({"name": "x", "cluster": {"workers": 1, "use_gpu": False, "gpus_per_worker": 0.5}}) == (
        "job.yaml: cluster: use_gpu: false contradicts gpus_per_worker: 0.5: give gpus_per_worker alone (0: no GPU)"
    )
    assert "use_gpu: true contradicts gpus_per_worker: 0" in error_of(
        {"name": "x", "cluster": {"use_gpu": True, "gpus_per_worker": 0}}
    )
    assert "gpus_per_worker: 1.5: above 1, a worker takes whole GPUs" in error_of(
        {"name": "x", "cluster": {"gpus_per_worker": 1.5}}
    )
    tune = {"space": {"model.hidden": {"choice": [8]}}, "resources": {"workers": 2, "gpus_per_worker": 0.5}}
    assert "tune.resources: 2 workers at gpus_per_worker 0.5 could put two ranks on one GPU" in error_of(
        {"name": "x", "tune": tune}
    )


def test_a_sweeps_trials_get_its_gpus_per_worker():
    from rnnfarm.launch.sweep import trial_spec

    resources = {"workers": 1, "cpus_per_worker": 2, "gpus_per_worker": 0.25}
    job = spec.parse({"name": "x", "tune": {"space": {"model.hidden": {"choice": [8]}}, "resources": resources}})
    cluster = trial_spec(job, {"model.hidden": 8}).cluster
    assert (cluster.workers, cluster.cpus_per_worker, cluster.gpus_per_worker, cluster.use_gpu) == (1, 2, 0.25, True)
