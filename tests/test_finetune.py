"""Fine-tuning: a run starts from a parent's weights (a run, a trial or a checkpoint, local or on S3), its corpus
is encoded with the parent's vocabulary (symbols it lacks extended, replaced or dropped), a parent of another
shape is refused, and the child names its parent in run.json, meta.json, `runs show` and the report."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import s3fs
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from rnnfarm import spec
from rnnfarm.cli import cli
from rnnfarm.corpus import shards
from rnnfarm.corpus.build import build
from rnnfarm.corpus.normalize import inherit_vocab
from rnnfarm.corpus.vocab import Vocab
from rnnfarm.engine import checkpoint
from rnnfarm.engine.loop import Job, LocalSession, train
from rnnfarm.engine.model import CharRNN
from rnnfarm.engine.parent import start_from
from rnnfarm.errors import UserError
from rnnfarm.launch import pipeline
from rnnfarm.layout import Run
from rnnfarm.storage import Store

from .conftest import make_spec

# A real English text of another kind than the parent's plays (news, from a wheel CORPORA.md pins): it holds
# '"', '(', ')', '[', ']' and most digits, which tiny Shakespeare's 65 symbols lack.
NEWS = "pypi://gensim==4.4.0/gensim/test/test_data/lee_background.cor"
CHILD_CORPUS = {"name": "files", "options": {"url": NEWS}}
NEW_SYMBOLS = set('"()/012456789<>[]')  # in the news, not in tiny Shakespeare
PARENT_SHAPE = {"layers": 1, "hidden": 32, "embedding": 16}  # make_spec's model


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args))


def write_spec(path: Path, job: spec.JobSpec) -> str:
    path.write_text(yaml.safe_dump(job.model_dump(mode="json", exclude_none=True)))
    return str(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def parent(ray_local, tmp_path_factory) -> Path:
    """A tiny-Shakespeare run trained by Ray (1x32 LSTM, 30 steps): its run folder."""
    storage = tmp_path_factory.mktemp("parent")
    pipeline.run(make_spec(str(storage), name="parent"))
    return storage / "runs" / "parent"


def child_spec(
    storage: str, init_from: str, *, train: dict | None = None, corpus: dict | None = None, **sections
) -> spec.JobSpec:
    """A spec that fine-tunes the parent at ``init_from`` on the news."""
    train, corpus = {"init_from": init_from, **(train or {})}, {**CHILD_CORPUS, **(corpus or {})}
    return make_spec(storage, name="child", corpus=corpus, train=train, **sections)


def test_init_from_names_a_run_a_trial_or_a_checkpoint(parent, tmp_path):
    trial = parent / "trials" / "main"
    kept = json.loads((parent / "best" / "meta.json").read_text())["checkpoint"]
    for url, folder in [
        (parent, parent / "best"),  # a run: its best checkpoint
        (trial, trial / kept),  # a trial: its best kept checkpoint
        (trial / "checkpoint-000015", trial / "checkpoint-000015"),  # a checkpoint folder
    ]:
        found, vocab = pipeline.parent_of(child_spec(str(tmp_path), str(url)))
        assert found.store.url == str(folder)
        assert found.lineage["sha256"] == sha256(folder / "model.safetensors")
        assert found.lineage["url"] == str(url) and found.lineage["model"] == "1x32 lstm, embedding 16"
        assert len(vocab) == 65


def test_a_parent_whose_weights_differ_from_its_record_is_refused(parent, tmp_path):
    altered = tmp_path / "run"
    shutil.copytree(parent, altered)
    weights = altered / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(UserError, match="model.safetensors differs from the sha256 its meta.json records"):
        pipeline.parent_of(child_spec(str(tmp_path), str(altered)))


def test_a_fine_tune_runs_from_rnnfarm_run_and_names_its_parent(parent, tmp_path):
    job = child_spec(str(tmp_path / "storage"), str(parent), train={"steps": 20, "eval_every": 10})
    result = run_cli("run", write_spec(tmp_path / "child.yaml", job))
    assert result.exit_code == 0, result.output

    child = tmp_path / "storage" / "runs" / "child"
    parent_meta = json.loads((parent / "best" / "meta.json").read_text())
    expected = {
        "url": str(parent),
        "checkpoint": str(parent / "best"),
        "corpus": "shakespeare",
        "fingerprint": parent_meta["corpus"]["fingerprint"],
        "sha256": sha256(parent / "best" / "model.safetensors"),
        "step": parent_meta["step"],
    }
    record = json.loads((child / "run.json").read_text())
    meta = json.loads((child / "best" / "meta.json").read_text())
    for lineage in (record["parent"], meta["parent"]):
        assert {k: lineage[k] for k in expected} == expected

    shown = run_cli("runs", "show", str(child))
    assert shown.exit_code == 0, shown.output
    assert (
        f"  parent:   {parent} (1x32 lstm, embedding 16, step {parent_meta['step']}, corpus shakespeare "
        in shown.output
    )
    assert f"sha256 {expected['sha256'][:12]}..." in shown.output
    report = (child / "report.html").read_text()
    assert f"fine-tuned from <b>{parent}</b>" in report and expected["sha256"][:12] in report

    # The corpus was encoded with the parent's vocabulary, the news's own symbols appended.
    manifest = json.loads((Path(record["corpus"]["url"]) / "manifest.json").read_text())
    symbols = manifest["vocab"]["symbols"]
    assert symbols[:65] == parent_meta["vocab"]["symbols"] and set(symbols[65:]) == NEW_SYMBOLS
    assert manifest["vocab"]["inherited"] == {
        "parent_size": 65,
        "unknown": "extend",
        "added": "".join(sorted(NEW_SYMBOLS)),
        "dropped": 0,
    }


def test_every_trial_of_a_sweep_starts_from_the_parent(parent, tmp_path):
    job = child_spec(str(tmp_path / "storage"), str(parent), train={"steps": 10, "eval_every": 10})
    data = job.model_dump(mode="json", exclude_none=True)
    data["tune"] = {
        "space": {"train.lr": {"grid": [0.01, 0.001]}},
        "samples": 1,
        "scheduler": {"kind": "none"},
        "resources": {"workers": 1, "driver_cpus": 0},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(data))
    result = run_cli("run", str(tmp_path / "sweep.yaml"))
    assert result.exit_code == 0, result.output
    trials = sorted((tmp_path / "storage" / "runs" / "child" / "trials").iterdir())
    assert len(trials) == 2
    for trial in trials:
        meta = json.loads((trial / "checkpoint-000010" / "meta.json").read_text())
        assert meta["parent"]["sha256"] == sha256(parent / "best" / "model.safetensors")


def test_a_fine_tune_reads_its_parent_from_s3(parent, s3, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3.options())
    fs.put(str(parent), "rnnfarm-test/finetune/runs/parent", recursive=True)
    options = {"key": s3.access_key, "secret": s3.secret_key}  # the storage's credentials reach the parent too
    job = child_spec(
        "s3://rnnfarm-test/finetune",
        "s3://rnnfarm-test/finetune/runs/parent/trials/main",
        storage_options=options,
        train={"steps": 10, "eval_every": 10},
    )
    result = run_cli("run", write_spec(tmp_path / "child.yaml", job))
    assert result.exit_code == 0, result.output
    record = json.loads(fs.cat_file("rnnfarm-test/finetune/runs/child/run.json"))
    kept = json.loads((parent / "best" / "meta.json").read_text())["checkpoint"]
    assert record["parent"]["checkpoint"] == f"s3://rnnfarm-test/finetune/runs/parent/trials/main/{kept}"
    assert record["parent"]["sha256"] == sha256(parent / "trials" / "main" / kept / "model.safetensors")


@pytest.fixture(scope="module")
def news(tmp_path_factory, trained_checkpoint):
    """The news encoded with the vocabulary of the conftest's trained checkpoint (tiny Shakespeare's), under
    each policy, with the parent's vocabulary."""
    storage = Store.at(str(tmp_path_factory.mktemp("news")))
    theirs = Vocab.from_json(checkpoint.load_meta(trained_checkpoint)["vocab"])
    built = {
        unknown: build(storage, make_spec(storage.url, corpus={**CHILD_CORPUS, "unknown": unknown}).corpus, theirs)
        for unknown in ("extend", "replace", "drop")
    }
    return theirs, built, build(storage, make_spec(storage.url, corpus=CHILD_CORPUS).corpus)


def test_new_symbols_get_ids_after_the_parents_and_the_parents_keep_theirs(news):
    theirs, built, own = news
    vocab = Vocab.from_json(built["extend"].manifest["vocab"])
    assert vocab.symbols[:65] == theirs.symbols and set(vocab.symbols[65:]) == NEW_SYMBOLS
    assert list(vocab.symbols[65:]) == sorted(NEW_SYMBOLS)
    text = 'ROMEO said (in 1597): "a $5 note"\n'
    ids = vocab.encode(text)
    assert [int(i) for i, ch in zip(ids, text, strict=True) if ch in theirs.symbols] == [
        int(i) for i in theirs.encode("".join(ch for ch in text if ch in theirs.symbols))
    ]
    assert all(ids[i] >= 65 for i, ch in enumerate(text) if ch in NEW_SYMBOLS)
    assert vocab.decode(ids) == text
    # Each vocabulary is its own corpus: the fingerprint counts the parent's vocabulary and the policy.
    fingerprints = {b.fingerprint for b in built.values()} | {own.fingerprint}
    assert len(fingerprints) == 4


def test_replace_maps_what_the_parent_lacks_to_one_symbol_and_drop_leaves_it_out_counted(news):
    theirs, built, own = news
    text = shards.read_split(own.folder, own.manifest, "train")
    unknown = sum(ch not in theirs.symbols for ch in text)
    assert unknown > 1000

    replaced = built["replace"].manifest["vocab"]
    assert replaced["symbols"] == "".join(theirs.symbols) + "\ufffd" and replaced["replacement"] == "\ufffd"
    assert replaced["inherited"]["added"] == "\ufffd"
    vocab = Vocab.from_json(replaced)
    ids = shards.read_tokens(built["replace"].folder, built["replace"].manifest, "train", 0, len(text), vocab)
    assert int((ids == 65).sum()) == unknown

    dropped = built["drop"].manifest["vocab"]
    assert dropped["symbols"] == "".join(theirs.symbols) and dropped["inherited"]["added"] == ""
    kept = shards.read_split(built["drop"].folder, built["drop"].manifest, "train")
    kept += shards.read_split(built["drop"].folder, built["drop"].manifest, "val")
    everything = text + shards.read_split(own.folder, own.manifest, "val")
    assert dropped["inherited"]["dropped"] == sum(ch not in theirs.symbols for ch in everything)
    assert kept == "".join(ch for ch in everything if ch in theirs.symbols)


def test_the_childs_model_holds_the_parents_weights_on_the_parents_rows(news, trained_checkpoint, tmp_path):
    theirs, built, _ = news
    job = child_spec(str(tmp_path), str(trained_checkpoint), model={"layers": 2})
    found, _ = pipeline.parent_of(job)
    vocab = Vocab.from_json(built["extend"].manifest["vocab"])
    model = CharRNN(len(vocab), job.model)
    start_from(model, vocab, found)

    weights, mine = load_file(str(trained_checkpoint / "model.safetensors")), model.state_dict()
    for name, tensor in weights.items():
        assert torch.equal(mine[name][: len(tensor)], tensor), name  # old rows exactly, recurrent layers whole
    added = len(vocab) - 65
    assert torch.equal(mine["embed.weight"][65:], weights["embed.weight"].mean(0).expand(added, -1))
    assert torch.equal(mine["head.weight"][65:], weights["head.weight"].mean(0).expand(added, -1))
    assert (mine["head.bias"][65:] == weights["head.bias"].min()).all()

    # Trained from there in-process: the optimizer and the schedule start fresh, at step 0.
    session = LocalSession(tmp_path / "ckpt")
    job = job.model_copy(update={"train": job.train.model_copy(update={"steps": 4, "eval_every": 2})})
    train(Job(job, built["extend"].folder, Run(Store.at(str(tmp_path)) / "runs" / "c").trial(), found), session)
    assert [r["step"] for r in session.reports] == [2, 4]
    meta = checkpoint.load_meta(tmp_path / "ckpt" / "checkpoint-000004")
    assert meta["parent"]["sha256"] == sha256(trained_checkpoint / "model.safetensors")


def test_weights_replaced_after_the_run_started_are_refused_by_the_workers(trained_checkpoint, news, tmp_path):
    folder = tmp_path / "parent"
    shutil.copytree(trained_checkpoint, folder)
    found, _ = pipeline.parent_of(child_spec(str(tmp_path), str(folder), model={"layers": 2}))
    (folder / "model.safetensors").write_bytes(b"other weights")  # replaced once the run recorded it
    vocab = Vocab.from_json(news[1]["extend"].manifest["vocab"])
    with pytest.raises(UserError, match="its weights changed after the run started"):
        start_from(CharRNN(len(vocab), spec.ModelSpec(layers=2, hidden=32, embedding=16)), vocab, found)


def test_extend_keeps_to_min_count_and_max_vocab_and_the_rest_becomes_the_replacement():
    theirs = Vocab(tuple("\n abc"))
    counts = {"a": 9, "b": 5, "x": 7, "y": 3, "z": 1}
    vocab, replaced, added = inherit_vocab(theirs, counts, spec.Policy(min_count=2, max_vocab=7), "extend")
    assert vocab.symbols == (*theirs.symbols, "x", "\ufffd") and added == ["x", "\ufffd"]  # y: no room
    assert vocab.replacement == "\ufffd" and replaced == 3 + 1
    vocab, replaced, added = inherit_vocab(theirs, counts, spec.Policy(min_count=2, max_vocab=None), "extend")
    assert vocab.symbols == (*theirs.symbols, "x", "y", "\ufffd") and replaced == 1  # z: under min_count


def test_vocab_from_alone_trains_from_scratch_on_the_parents_vocabulary(trained_checkpoint, tmp_path):
    job = make_spec(str(tmp_path), corpus={**CHILD_CORPUS, "vocab_from": str(trained_checkpoint)})
    found, vocab = pipeline.parent_of(job)
    assert found is None and vocab == Vocab.from_json(checkpoint.load_meta(trained_checkpoint)["vocab"])


def refused(tmp_path, job: spec.JobSpec, *extra: str) -> str:
    result = run_cli("run", write_spec(tmp_path / "job.yaml", job), *extra)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    return result.output


def test_a_parent_of_another_shape_is_refused_naming_both(trained_checkpoint, tmp_path):
    job = child_spec(str(tmp_path), str(trained_checkpoint), model={"layers": 2, "hidden": 48})
    assert refused(tmp_path, job) == (
        f"error: train.init_from {trained_checkpoint}: the parent is a 2x32 lstm, embedding 16, the spec's model a "
        "2x48 lstm, embedding 16: set model.cell, model.layers, model.hidden and model.embedding to the parent's\n"
    )


def test_a_missing_parent_is_refused(tmp_path):
    job = child_spec(str(tmp_path), str(tmp_path / "no-such-run"))
    assert refused(tmp_path, job).startswith(
        f"error: train.init_from: {tmp_path / 'no-such-run'}: neither a checkpoint"
    )


def test_what_a_policy_cannot_handle_is_refused(trained_checkpoint, tmp_path):
    job = child_spec(
        str(tmp_path), str(trained_checkpoint), model={"layers": 2}, corpus={"normalize": {"level": "byte"}}
    )
    assert "corpus.normalize.level is byte, but the parent's vocabulary is char-level" in refused(tmp_path, job)

    byte_parent = tmp_path / "byte-parent"  # an untrained byte-level model, saved as training saves one
    byte_parent.mkdir()
    model = spec.ModelSpec(**PARENT_SHAPE)
    checkpoint.save_model(byte_parent, CharRNN(256, model), Vocab(tuple(map(chr, range(256))), level="byte"), {})
    job = child_spec(str(tmp_path), str(byte_parent), corpus={"unknown": "drop", "normalize": {"level": "byte"}})
    assert "corpus.unknown: drop leaves characters out" in refused(tmp_path, job)


def test_a_sweep_over_the_shape_of_a_fine_tune_is_refused(trained_checkpoint, tmp_path):
    space = {"model.hidden": {"grid": [32, 64]}, "train.lr": {"grid": [0.01, 0.001]}}
    job = child_spec(str(tmp_path), str(trained_checkpoint)).model_dump(mode="json", exclude_none=True)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({**job, "tune": {"space": space}}))
    result = run_cli("run", str(tmp_path / "job.yaml"))
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "tune.space.model.hidden: with train.init_from every trial starts from the parent's weights" in result.output
    del space["model.hidden"]  # the learning rate keeps the shape
    spec.parse({**job, "tune": {"space": space}})


def test_a_parent_on_this_machine_is_refused_for_a_cluster_that_does_not_share_it(trained_checkpoint, tmp_path):
    job = child_spec("s3://bucket/prefix", str(trained_checkpoint))
    output = refused(tmp_path, job, "--address", "http://127.0.0.1:9")
    assert output == (
        f"error: train.init_from {trained_checkpoint}: a folder on this machine, which a cluster's nodes do not "
        "see: use object storage (s3://, gs://, az://), or set cluster.storage_shared: true for a folder every "
        "node mounts at this path\n"
    )


def test_the_deploy_example_fine_tunes_the_quality_run_in_its_shape():
    root = Path(__file__).resolve().parent.parent / "deploy"
    child, parent = spec.load(root / "finetune.yaml"), spec.load(root / "shakespeare-quality.yaml")
    assert child.train.init_from == f"{parent.storage}/runs/{parent.name}" and child.storage == parent.storage
    assert [getattr(child.model, k) for k in spec.SHAPE] == [getattr(parent.model, k) for k in spec.SHAPE]
    assert child.corpus.name == "files" and child.corpus.unknown == "extend"
