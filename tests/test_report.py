"""The run report: written by `rnnfarm run` at the end, or by `rnnfarm report` for any run on any storage;
rendered in headless Chromium. Also sampling a run's trial."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import s3fs
import yaml
from click.testing import CliRunner

from rnnfarm import spec
from rnnfarm.cli import cli
from rnnfarm.corpus import novelty, shards
from rnnfarm.insight import report
from rnnfarm.layout import Trial
from rnnfarm.runs import archive, leaderboard
from rnnfarm.storage import Store

from .browser import chart_legend, chart_points, chart_ticks, chart_x_ticks, render
from .conftest import make_spec

TEMPERATURES = [0.5, 1.0]


@pytest.fixture(scope="module")
def small_run(ray_local, tmp_path_factory):
    """`rnnfarm run` of a 2x32 LSTM for 40 steps, evaluated at steps 20 and 40: its run folder and CLI output."""
    root = tmp_path_factory.mktemp("report")
    job = make_spec(
        str(root / "storage"),
        name="reported",
        model={"layers": 2},
        train={"steps": 40, "eval_every": 20},
        samples={"temperatures": TEMPERATURES, "length": 60},
    )
    spec_file = root / "job.yaml"
    spec_file.write_text(yaml.safe_dump(job.model_dump(mode="json")))
    result = CliRunner().invoke(cli, ["run", str(spec_file)])
    assert result.exit_code == 0, result.output
    return root / "storage" / "runs" / "reported", result.output


def refreshes(dom) -> list[str]:
    return [m.attrs["content"] for m in dom.find_all("meta") if m.attrs.get("http-equiv") == "refresh"]


def links(dom) -> list[str]:
    return [a.attrs["href"] for a in dom.find_all("a")]


def test_a_run_ends_with_its_report_leaderboard_loss_curves_speed_and_samples(small_run):
    run, output = small_run
    assert f"report:          {run / 'report.html'}" in output
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    ends = [(e["event"], e.get("trial"), e.get("status")) for e in events if e["event"] != "training"]
    assert ends[-3:] == [
        ("trial ended", "main", "completed"),
        ("report written", None, None),
        ("run completed", None, None),
    ]
    dom = render(run / "report.html", "report", height=2000)

    (row,) = dom.find_all("table", "leaderboard")[0].find_all("tbody")[0].find_all("tr")
    cells = [td.all_text for td in row.find_all("td")]
    assert cells[1:3] == ["main", "completed"] and float(cells[3]) < 4.17 and cells[6] == "40"
    assert float(cells[7].replace(",", "")) > 0  # chars/s

    charts = dom.find_all("figure", "chart")
    assert [c.attrs["data-title"] for c in charts][:2] == ["training speed", "trial main"]
    assert chart_legend(charts[1]) == ["train loss", "val loss"]
    assert chart_points(charts[1]) == [2, 2]  # two evaluations each
    assert not refreshes(dom) and "status completed" in dom.find_all("p", "meta")[0].all_text

    drawn = archive.read(Trial(Store.at(str(run / "trials" / "main"))))
    rows = dom.find_all("table", "samples")[0].find_all("tbody")[0].find_all("tr")
    assert len(rows) == 2 and len(drawn) == 4
    shown = [pre.all_text for r in rows for pre in r.find_all("pre")]
    assert shown == [s["prime"] + s["text"] for s in drawn]

    assert links(dom) == [report.NEURONS, report.PREDICTIONS]
    assert all("://" not in h for h in links(dom)) and not dom.find_all("script") and not dom.find_all("img")


def test_the_samples_carry_the_novelty_meter_into_the_archive_and_the_report_beside_them_and_as_curves(
    small_run, shakespeare
):
    """The driver built the train split's index before training; the worker metered every sample with it."""
    run, _ = small_run
    corpus = json.loads((run / "run.json").read_text())["corpus"]
    index = novelty.open_index(Store.at(corpus["url"]))
    assert (Store.at(corpus["url"]) / novelty.FOLDER / novelty.INDEX).exists()
    drawn = archive.read(Trial(Store.at(str(run / "trials" / "main"))))
    assert len(drawn) == 4 and all(s["novelty"] == index.meter(s["text"]).to_json() for s in drawn)

    dom = render(run / "report.html", "report", height=2600)
    under = [d.all_text for d in dom.find_all("div", "novelty")]
    assert under == [
        f"longest copy from train {s['novelty']['longest']} chars · 8-grams in train {s['novelty']['ngram_share']:.1%}"
        for s in drawn
    ]
    evolution = dom.find_all("table", "evolution")[0].find_all("tbody")[0].find_all("tr")
    shown = [s for s in drawn if s["temperature"] == 1.0]
    assert [[td.all_text for td in r.find_all("td")][2] for r in evolution] == [
        f"{s['novelty']['longest']} chars" for s in shown
    ]
    curves = {c.attrs["data-title"]: c for c in dom.find_all("figure", "chart")}
    for title in ("8-grams found in train", "longest span copied from train"):
        assert chart_legend(curves[title]) == ["temperature 0.5", "temperature 1"]
        assert chart_points(curves[title]) == [2, 2]  # one point per evaluation


def test_the_report_links_neuron_and_prediction_pages_of_the_best_checkpoint_on_val_text(small_run, shakespeare):
    run, _ = small_run
    val = shards.read_split(shakespeare.folder, shakespeare.manifest, "val")
    excerpt = val[val.index("\n") + 1 :][: report.TEXT_CHARS]

    neurons = render(run / report.NEURONS, "report-neurons")
    sections = neurons.find_all("section", "cell")
    assert len(sections) == report.TOP_CELLS
    assert "".join(s.all_text for s in sections[0].find_all("span", "a")).replace("↵", "\n") == excerpt
    assert "best checkpoint of reported (trial main, step 40)" in neurons.find_all("h1")[0].all_text

    predictions = render(run / report.PREDICTIONS, "report-predictions")
    assert len(predictions.find_all("span", "p")) == len(excerpt)


def test_sampling_a_trial_draws_from_its_best_kept_checkpoint(small_run):
    run, _ = small_run
    kept, _ = leaderboard.best_checkpoint(Trial(Store.at(str(run / "trials" / "main"))))
    args = ["--seed", "1", "--length", "80", "--prime", "ROMEO:"]
    by_trial = CliRunner().invoke(cli, ["sample", str(run), "--trial", "main", *args])
    by_folder = CliRunner().invoke(cli, ["sample", str(run / "trials" / "main" / kept), *args])
    assert by_trial.exit_code == 0 and by_trial.output == by_folder.output and by_trial.output.startswith("ROMEO:")

    missing = CliRunner().invoke(cli, ["sample", str(run), "--trial", "t9"])
    assert missing.exit_code == 2
    assert "trial 't9' of run reported has no kept checkpoint (trials: main)" in missing.output


def test_a_sweep_in_progress_gets_a_report_from_what_its_trials_stored(small_run, tmp_path):
    run, _ = small_run
    copy = tmp_path / "runs" / "reported"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("leaderboard.*", "best", "report*", "SHA256SUMS"))
    record = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**record, "status": "running", "ended": None, "best": None}))
    # A second trial that has evaluated once so far, with a worse val loss.
    second = copy / "trials" / "b0001"
    (second / "metrics").mkdir(parents=True)
    first_eval = json.loads((copy / "trials" / "main" / "metrics" / "step-000020.json").read_text())
    worse = {**first_eval, "val_loss": first_eval["val_loss"] + 0.5}
    (second / "metrics" / "step-000020.json").write_text(json.dumps(worse))
    (second / "config.json").write_text(json.dumps({"trial": "b0001", "settings": {"model.hidden": 8}}))

    result = CliRunner().invoke(cli, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    dom = render(copy / "report.html", "report-in-progress")
    rows = dom.find_all("table", "leaderboard")[0].find_all("tbody")[0].find_all("tr")
    assert [[td.all_text for td in row.find_all("td")][1:4] for row in rows] == [
        ["main", "running", "-"],
        ["b0001", "running", "8"],
    ]
    charts = dom.find_all("figure", "chart")
    assert [c.attrs["data-title"] for c in charts] == [
        "val loss, every trial",
        "training speed",
        "trial main",
        "trial b0001",
        "8-grams found in train",  # the samples' copying from the train split: main's, as the best trial so far
        "longest span copied from train",
    ]
    assert chart_legend(charts[0]) == ["main", "b0001"] and chart_points(charts[0]) == [2, 1]
    # One evaluation: a marked point on an axis from step 0, not a range around one step.
    assert chart_points(charts[3]) == [1, 1] and chart_x_ticks(charts[3]) == ["0", "5", "10", "15", "20"]
    labels = [t for c in charts for t in chart_ticks(c)]
    assert labels and all(re.fullmatch(r"\d+(\.\d+)?k?", t) for t in labels), labels  # 1000, 1.2k: no 1e+03
    assert refreshes(dom) == ["15"]  # a live run's report reloads itself
    assert links(dom) == []  # no best checkpoint yet


def test_rnnfarm_report_writes_whole_objects_to_a_run_on_s3(small_run, s3, monkeypatch, tmp_path):
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    run, _ = small_run
    url = "s3://rnnfarm-test/reports/runs/reported"
    Store.at(url).upload(run)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3.options())
    for name in (report.REPORT, report.NEURONS, report.PREDICTIONS):
        fs.rm_file(f"{url}/{name}")

    result = CliRunner().invoke(cli, ["report", url])
    assert result.exit_code == 0, result.output
    assert f"report: {url}/{report.REPORT}" in result.output
    for name in (report.REPORT, report.NEURONS, report.PREDICTIONS):
        assert fs.cat_file(f"{url}/{name}") == (run / name).read_bytes(), name

    local = CliRunner().invoke(cli, ["report", url, "--out", str(tmp_path / "here")])
    assert local.exit_code == 0, local.output
    assert (tmp_path / "here" / report.REPORT).read_bytes() == (run / report.REPORT).read_bytes()

    nothing = CliRunner().invoke(cli, ["report", "s3://rnnfarm-test/reports/runs/none"])
    assert nothing.exit_code == 2 and "no run at s3://rnnfarm-test/reports/runs/none" in nothing.output


def test_the_report_and_run_summary_show_the_corpus_n_gram_baseline_once_it_is_stored(small_run, tmp_path, capsys):
    from rnnfarm.cli import print_outcome
    from rnnfarm.insight import ngram
    from rnnfarm.launch.pipeline import Outcome
    from rnnfarm.layout import Run
    from rnnfarm.runs.record import require

    run, output = small_run
    assert "n-gram baseline" not in output  # nothing stored for the corpus when the run ended
    copy = tmp_path / "runs" / "reported"
    shutil.copytree(run, copy)
    record = json.loads((copy / "run.json").read_text())
    shutil.copytree(record["corpus"]["url"], tmp_path / "corpus")
    record["corpus"]["url"] = str(tmp_path / "corpus")
    (copy / "run.json").write_text(json.dumps(record))
    figures = ngram.baseline(Store.at(str(tmp_path / "corpus")), orders=[1, 4])
    expected = f"n-gram baseline: val {figures.nats[4]['val']:.4f} nats/char"

    result = CliRunner().invoke(cli, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    meta = render(copy / "report.html", "report-ngram").find_all("p", "meta")[0].all_text
    assert expected in meta and "order 4 interpolated Kneser-Ney" in meta

    the_run = Run(Store.at(str(copy)))
    job_spec = spec.load(the_run.spec_file.url)  # the run's own spec, as stored with it
    print_outcome(Outcome(the_run, require(the_run), leaderboard.read(the_run)), job_spec)
    assert expected in capsys.readouterr().out
