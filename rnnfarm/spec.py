"""The job spec: YAML into pydantic models. Unknown keys are refused; errors name the YAML path."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .corpus.normalize import Policy
from .errors import UserError

Positive = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CorpusSpec(Section):
    """Which corpus plugin builds the text, and its options."""

    name: str = "shakespeare"
    options: dict[str, Any] = Field(default_factory=dict)
    normalize: Policy = Field(default_factory=Policy)
    val: Annotated[float, Field(gt=0, lt=0.5)] = 0.1
    test: Annotated[float, Field(ge=0, lt=0.5)] = 0.0


class ModelSpec(Section):
    """Embedding -> stacked recurrent layers with dropout between them -> linear head."""

    cell: Literal["lstm", "gru", "rnn"] = "lstm"
    layers: Positive = 2
    hidden: Positive = 256
    embedding: Positive = 64
    dropout: Fraction = 0.0


class TrainSpec(Section):
    """Per-worker batch and the optimization schedule."""

    steps: Positive = 1000
    batch_size: Positive = 32
    seq_len: Positive = 128
    optimizer: Literal["adam", "rmsprop"] = "adam"
    lr: PositiveFloat = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    grad_clip: PositiveFloat | None = 1.0
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    decay: Literal["cosine", "step", "none"] = "cosine"
    min_lr_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1  # cosine: the last learning rate, as a fraction of lr
    decay_every: Positive = 1000  # step: multiply the learning rate by decay_rate every this many steps
    decay_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    eval_every: Positive = 200
    log_every: Positive = 50
    keep_best: Positive = 2
    max_failures: Annotated[int, Field(ge=-1)] = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: int = 1337

    @model_validator(mode="after")
    def _warmup_within_steps(self) -> TrainSpec:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")
        return self


class SampleSpec(Section):
    """What to generate at each evaluation."""

    temperatures: Annotated[list[PositiveFloat], Field(min_length=1)] = [0.5, 0.8, 1.0]
    length: Positive = 300
    prime: str = "\n"


class ClusterSpec(Section):
    """Where the job runs: ``local`` starts an embedded Ray; a Ray address submits to a cluster."""

    address: str = "local"
    workers: Positive = 2
    use_gpu: bool = False
    cpus_per_worker: PositiveFloat = 1.0
    threads_per_worker: Positive | None = None


class JobSpec(Section):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
    storage: str = "./rnnfarm-data"
    storage_options: dict[str, Any] = Field(default_factory=dict)
    corpus: CorpusSpec = Field(default_factory=CorpusSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    samples: SampleSpec = Field(default_factory=SampleSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)


def _describe(error: dict[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    comparisons = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in comparisons:
        bound = next(iter(ctx.values()))
        return f"must be {comparisons[kind]} {bound}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known key"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "must be an integer"
    if kind in ("float_type", "float_parsing"):
        return "must be a number"
    if kind in ("bool_type", "bool_parsing"):
        return "must be true or false"
    if kind == "string_pattern_mismatch":
        return "must be letters, digits, '.', '_' or '-' (at most 100)"
    if kind == "too_short":
        return "must not be empty"
    message = error["msg"]
    return message.removeprefix("Value error, ")


def _format(exc: ValidationError, source: str) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        problems.append(f"{where}: {_describe(error)}")
    return f"{source}: " + "; ".join(problems)


def parse(data: Any, source: str = "spec") -> JobSpec:
    """Validate a mapping (already loaded from YAML) into a JobSpec."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: the spec must be a YAML mapping of sections, got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format(exc, source)) from None


def load(path: str | Path) -> JobSpec:
    """Read and validate a YAML spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such spec file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the spec ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{path}: {problem}{where}") from None
    return parse(data, str(path))


def dump(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
