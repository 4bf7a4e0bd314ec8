"""Property-based tests of the spec schema: whatever YAML gives, the spec is valid or refused in one line.

Hypothesis edits a valid spec at the schema's own paths (every field of every section, found by walking
the pydantic models), adds unknown keys, drops sections and replaces them with anything YAML can hold.
Parsing must give a JobSpec that survives its own round trip, or a UserError of one line naming the
YAML path at fault; never another exception. Raw YAML text (tags, aliases, nesting) must do the same.
"""

from __future__ import annotations

import typing

import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from rnnfarm import spec
from rnnfarm.errors import UserError

FUZZ = settings(max_examples=300, deadline=None, database=None)

BASE = {
    "name": "fuzz",
    "storage": "/tmp/rnnfarm-fuzz",
    "corpus": {"name": "shakespeare", "options": {"variant": "tiny"}},
    "model": {"layers": 1, "hidden": 32},
    "train": {"steps": 30, "eval_every": 15},
    "samples": {"temperatures": [0.8]},
    "cluster": {"workers": 1},
    "tune": {"space": {"model.hidden": {"choice": [16, 32]}}, "samples": 2},
}


def paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every field path of a spec model, nested sections included (``("train", "batch_size")``...)."""
    found = []
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        found.append(path)
        for inner in typing.get_args(field.annotation) or (field.annotation,):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                found.extend(paths(inner, path))
    return found


PATHS = paths(spec.JobSpec)
# What yaml.safe_load can hand over: plain scalars, dates, bytes (!!binary), and nested lists and mappings.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([0, -1, 1, 2, 0.0, -0.0, 0.5, 1.0, 1e-300, 1e308, 2**63, float("inf"), float("nan")])
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["", "lstm", "auto", "local", "\n", "../escape", "model.hidden", "x" * 200])
    | st.dates()
    | st.datetimes()
    | st.binary(max_size=8)
)
KEYS = st.text(max_size=8) | st.integers() | st.sampled_from(["hiden", " ", "a\nb", "\r", "x: y", "../x", "é"])
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=10,
)
DISTRIBUTIONS = st.dictionaries(
    st.sampled_from([*spec.TUNABLE, "model.width", "train.steps", "model.hidden\nmodel.layers"]),
    st.sampled_from([{"choice": [16, 32]}, {"grid": [0.0, 0.1]}, {"uniform": [0.0, 0.2]}, {"loguniform": [1e-3, 0.1]}])
    | st.dictionaries(st.sampled_from(["choice", "grid", "uniform", "loguniform", "range"]), VALUES, max_size=2),
    max_size=3,
)


def put(data: dict, path: tuple[str, ...], value) -> None:
    """Set ``value`` at ``path``, making (or replacing with) mappings on the way."""
    for key in path[:-1]:
        if not isinstance(data.get(key), dict):
            data[key] = {}
        data = data[key]
    data[path[-1]] = value


@st.composite
def edited_specs(draw) -> dict:
    data = yaml.safe_load(yaml.safe_dump(BASE))  # a deep copy
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["value", "value", "unknown key", "drop", "space"]))
        path = draw(st.sampled_from(PATHS))
        if kind == "value":
            put(data, path, draw(VALUES))
        elif kind == "unknown key":
            put(data, (*path[:-1], draw(KEYS)), draw(VALUES))
        elif kind == "drop":
            data.pop(path[0], None)
        else:
            put(data, ("tune", "space"), draw(DISTRIBUTIONS))
    return data


def parsed_or_refused_in_one_line(data) -> None:
    try:
        job = spec.parse(data, "job.yaml")
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        if isinstance(data, dict):  # first a YAML path: a key of the document, or a section the schema requires
            sections = {str(key) for key in data} | {repr(str(key)) for key in data} | set(spec.JobSpec.model_fields)
            assert any(message.startswith(f"job.yaml: {key}") for key in sections), message
        else:
            assert message.startswith("job.yaml: the spec must be a YAML mapping"), message
        return
    echoed = spec.dump(job)
    assert spec.parse(yaml.safe_load(echoed)) == job  # what a run stores reads back as the same spec
    spec.dump(job, masked=True)


@FUZZ
@given(edited_specs())
@example({**BASE, "tune": {"space": {"model.hidden\nmodel.layers": {"choice": [1]}}}})  # a key quoted in a message
@example({**BASE, "model": {"hidden": 2**64, "dropout": float("nan")}, "train": {"steps": 10, "warmup_steps": 10}})
def test_an_edited_spec_is_valid_or_refused_in_one_line_naming_its_path(data):
    parsed_or_refused_in_one_line(data)


@FUZZ
@given(VALUES)
def test_any_document_yaml_can_hold_is_valid_or_refused_in_one_line(data):
    parsed_or_refused_in_one_line(data)


YAML_PIECES = st.sampled_from(
    [
        "name: x\n",
        "train:\n",
        "  steps: ",
        "  batch_size: -1\n",
        "model: {hidden: ",
        "}",
        "[",
        "]",
        "&a ",
        "*a",
        "!!python/object/apply:os.system ['true']",
        "!!binary aGVsbG8=",
        "!!set {a, b}",
        "? ",
        ": ",
        "- ",
        "\t",
        "\n",
        "'",
        '"',
        "#",
        "%YAML 1.1\n---\n",
        "2026-11-26",
        "~",
        ".inf",
        "<<: *a\n",
    ]
)


@FUZZ
@given(st.lists(YAML_PIECES | st.text(max_size=5), max_size=20).map("".join))
def test_any_yaml_text_is_read_safely_or_refused_in_one_line(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        job = spec.load(path)
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{path}: "), str(exc)
    else:
        assert isinstance(job, spec.JobSpec)


def test_the_fuzzed_paths_cover_every_section_of_the_schema():
    assert {p[0] for p in PATHS} == set(spec.JobSpec.model_fields)
    assert ("train", "batch_size") in PATHS and ("corpus", "normalize", "invalid_utf8") in PATHS
    assert ("tune", "resources", "driver_cpus") in PATHS and ("tune", "scheduler", "grace_period") in PATHS
