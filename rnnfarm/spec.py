"""The job spec: YAML into pydantic models. Unknown keys are refused; errors name the YAML path."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError
from .redact import is_secret_key, redact

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"  # a run's or a corpus's name: it names a folder on storage
NAME_HELP = "must be letters, digits, '.', '_' or '-' (at most 100)"
MAX_VALUES = 100_000  # values a spec may expand to (YAML aliases of aliases can make billions)

Positive = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Policy(BaseModel):
    """How raw text becomes training text, and how the vocabulary is chosen (``corpus.normalize`` applies it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: Literal["char", "byte"] = "char"
    unicode: Literal["NFC", "none"] = "NFC"
    invalid_utf8: Literal["replace", "drop", "error"] = "replace"
    max_vocab: Annotated[int, Field(ge=2)] | None = 1024
    min_count: Annotated[int, Field(ge=1)] = 1
    replacement: Annotated[str, Field(min_length=1, max_length=1)] = "\ufffd"
    separator: str | None = None  # between documents of a split; None: the corpus's own


class CorpusSpec(Section):
    """Which corpus plugin builds the text, and its options."""

    name: str = "shakespeare"
    options: dict[str, Any] = Field(default_factory=dict)
    normalize: Policy = Field(default_factory=Policy)
    val: Annotated[float, Field(gt=0, lt=0.5)] = 0.1
    test: Annotated[float, Field(ge=0, lt=0.5)] = 0.0
    vocab_from: str | None = Field(
        None, description="a run, trial or checkpoint whose vocabulary encodes this corpus (default: train.init_from)"
    )
    unknown: Literal["extend", "replace", "drop"] = Field(
        "extend",
        description="with vocab_from, symbols the vocabulary lacks: extend adds them (new ids after its own), "
        "replace maps them to one replacement symbol, drop leaves them out (counted in the manifest)",
    )


class ModelSpec(Section):
    """Embedding -> stacked recurrent layers with dropout between them -> linear head."""

    cell: Literal["lstm", "gru", "rnn"] = "lstm"
    layers: Positive = 2
    hidden: Positive = 256
    embedding: Positive = 64
    dropout: Fraction = 0.0
    weight_drop: Fraction = Field(
        0.0, description="DropConnect on the recurrent matrices: a fraction of their weights, resampled every step"
    )
    dropout_input: Fraction = Field(
        0.0, description="locked dropout on the embedded input: one mask per sequence, the same at every step"
    )
    dropout_between: Fraction = Field(
        0.0, description="locked dropout on the output of each recurrent layer but the last: one mask per sequence"
    )
    dropout_embedding: Fraction = Field(
        0.0, description="drops whole symbols: a fraction of the embedding's rows is zeroed for a training step"
    )


class AverageSpec(Section):
    """Weight averaging: evaluation, the best checkpoint and sampling use the averaged weights."""

    kind: Literal["none", "ema", "swa"] = Field("none", description="ema: a moving average; swa: a mean from start on")
    decay: float = Field(0.999, gt=0, lt=1, description="ema: the weight the average keeps at each step")
    start: int = Field(0, ge=0, description="swa: the step after which the weights are averaged")


class TrainSpec(Section):
    """Per-worker batch and the optimization schedule."""

    steps: Positive = 1000
    batch_size: Positive = 32
    seq_len: Positive = 128
    optimizer: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"
    lr: PositiveFloat = 2e-3
    # adam, rmsprop: an L2 term in every gradient; adamw: decoupled decay of the weight matrices only
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
    max_rollbacks: int = Field(
        3, ge=0, description="rollbacks to the last good checkpoint a diverging run may take before it stops"
    )
    rollback_lr_factor: float = Field(0.5, gt=0, lt=1, description="each rollback multiplies the learning rate by this")
    explode_factor: float = Field(
        3.0,
        gt=1,
        description="an interval's train loss over this many times the lowest so far (first: ln vocab) diverged",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="what runs: see README, Precision")
    state_reset: float = Field(
        0.0,
        ge=0,
        le=1,
        description="cold starts: the chance, per stream and batch, that training starts the stream's carried "
        "state again from zero (0: never, the state is carried through an epoch; 1: every batch from zero)",
    )
    seed: int = 1337
    average: AverageSpec = Field(default_factory=AverageSpec, description="weight averaging (ema or swa)")
    init_from: str | None = Field(
        None,
        description="start from the weights of a run (its best), a trial (its folder in the run) or a checkpoint "
        "at any storage URL; the optimizer, step and schedule start fresh",
    )

    @model_validator(mode="after")
    def _warmup_within_steps(self) -> TrainSpec:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be < steps ({self.steps})")
        return self


class EvalSpec(Section):
    """How a split is cut for evaluation: the same whatever the batch and the workers, so losses compare.

    By default the split is cut into contiguous streams, the state carried through each (char-rnn's way, with
    a fixed number of streams). With ``windows`` it is scored in that many random windows instead, each from a
    zero state (nanoGPT's way: 12800 windows of 256 characters)."""

    streams: Positive = Field(64, description="contiguous streams the split is cut into, shared among the workers")
    warmup: int = Field(
        0, ge=0, description="targets at the start of each stream or window that build up the state, unscored"
    )
    windows: Positive | None = Field(None, description="random windows scored instead of streams, none: streams")
    window: Positive = Field(256, description="targets a random window scores (with windows)")
    seed: int = Field(0, description="the draw of the random windows (with windows)")

    @model_validator(mode="after")
    def _warmup_within_a_window(self) -> EvalSpec:
        if self.windows is not None and self.warmup >= self.window:
            raise ValueError(f"warmup ({self.warmup}) must be < window ({self.window}): a window would score nothing")
        return self

    def describe(self) -> str:
        """The cut in words, as `rnnfarm evaluate` prints it."""
        if self.windows is None:
            return f"{self.streams} streams, {self.warmup} warm-up targets each"
        return f"{self.windows} random windows of {self.window}, seed {self.seed}, {self.warmup} warm-up targets each"


class SampleSpec(Section):
    """What to generate at each evaluation."""

    temperatures: Annotated[list[PositiveFloat], Field(min_length=1)] = [0.5, 0.8, 1.0]
    length: Positive = 300
    prime: str = "\n"
    novelty: bool = Field(True, description="Measure each sample's copying from the train split (an index of it).")


ADDRESS = re.compile(r"^(local|auto|https?://[^\s/?#]+/?)$")
VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ADDRESS_HELP = "local, auto, or the URL of a Ray cluster's dashboard (http://HEAD:8265)"


def looks_secret(name: str) -> bool:
    """Whether a variable's name says it holds a credential (``AWS_SECRET_ACCESS_KEY``, ``HF_TOKEN``...)."""
    lowered = name.lower()
    return is_secret_key(lowered) or any(part in lowered for part in ("secret", "token", "password", "key"))


GPUs = Annotated[float, Field(ge=0)]
GPUS_HELP = "GPUs each worker holds: a fraction (0.25) lets trials share one GPU; above 1, a whole number"
USE_GPU_HELP = "follows gpus_per_worker; `use_gpu: true` alone means one GPU per worker"


class Workers(Section):
    """The GPU rules of a worker group (a run's, or each trial's of a sweep), on the fields its subclass has:
    ``workers``, ``gpus_per_worker``, ``use_gpu``."""

    @model_validator(mode="before")
    @classmethod
    def _gpus_given(cls, data: Any) -> Any:
        """``gpus_per_worker`` and ``use_gpu`` completed from whichever of them is given (``use_gpu: true``
        alone: one GPU per worker); where both are, the check after compares them."""
        if not isinstance(data, dict):
            return data
        gpus, use_gpu = data.get("gpus_per_worker"), data.get("use_gpu")
        if gpus is None and use_gpu is True:
            return {**data, "gpus_per_worker": 1.0}
        if use_gpu is None and isinstance(gpus, int | float) and not isinstance(gpus, bool):
            return {**data, "use_gpu": gpus > 0}
        return data

    @model_validator(mode="after")
    def _gpus_fit_the_workers(self) -> Workers:
        """``use_gpu`` agrees with ``gpus_per_worker``; past one GPU only whole GPUs (Ray shares a single GPU
        only); and no two ranks of one run on one GPU, which NCCL refuses ("Duplicate GPU detected"): fractions
        are for trials that share a GPU, each on one worker."""
        workers, gpus = self.workers, self.gpus_per_worker
        if self.use_gpu != (gpus > 0):
            raise ValueError(
                f"use_gpu: {str(self.use_gpu).lower()} contradicts gpus_per_worker: {gpus:g}: "
                "give gpus_per_worker alone (0: no GPU)"
            )
        if gpus > 1 and not gpus.is_integer():
            raise ValueError(f"gpus_per_worker: {gpus:g}: above 1, a worker takes whole GPUs (Ray shares only one)")
        if workers > 1 and 0 < gpus < 1:
            raise ValueError(
                f"{workers} workers at gpus_per_worker {gpus:g} could put two ranks on one GPU, which NCCL "
                "refuses: give each worker a whole GPU (gpus_per_worker: 1) or train on workers: 1 "
                "(fractions share a GPU between trials)"
            )
        return self


class ClusterSpec(Workers):
    """Where the job runs: ``local`` starts an embedded Ray, ``auto`` joins the Ray cluster this machine is part
    of, and a dashboard URL submits the job to that cluster through the Ray Jobs API.

    The fields after ``threads_per_worker`` shape a submitted job: what code it runs (``installed``: the
    cluster's image has rnnfarm; ``source``: this checkout's packages travel with the job), Ray runtime-env
    additions (pip packages, variables that are no secret), the names of variables whose values travel
    from here to every Ray worker of the job, the driver's own resources, the variable holding the cluster's
    auth token, and whether a storage folder is one every node mounts at the same path. The last two say how
    long workers may wait to be placed, and whether the cluster grows while they wait.
    """

    address: str = "local"
    workers: Positive = 2
    cpus_per_worker: PositiveFloat = 1.0
    gpus_per_worker: GPUs = Field(0.0, description=GPUS_HELP)
    use_gpu: bool = Field(False, description=USE_GPU_HELP)
    threads_per_worker: Positive | None = None
    code: Literal["installed", "source"] = "installed"
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    forward_env: list[str] = Field(default_factory=list)
    entrypoint_cpus: Annotated[float, Field(ge=0)] = 0.0
    entrypoint_resources: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    token_env: str = "RAY_AUTH_TOKEN"
    storage_shared: bool = False
    placement_timeout_s: PositiveFloat = Field(
        60.0, description="how long a run's workers may wait for room before the run fails, naming what holds it"
    )
    autoscaling: bool = Field(
        False, description="the cluster adds nodes for waiting work (an autoscaler, KubeRay): waiting has no limit"
    )

    @field_validator("address")
    @classmethod
    def _known_address(cls, value: str) -> str:
        if not ADDRESS.match(value):
            raise ValueError(f"must be {ADDRESS_HELP}")
        return value

    @field_validator("forward_env", "token_env")
    @classmethod
    def _variable_names(cls, value: str | list[str]) -> str | list[str]:
        for name in [value] if isinstance(value, str) else value:
            if not VARIABLE.match(name):
                raise ValueError(f"{name!r} is not an environment variable's name")
        return value

    @model_validator(mode="after")
    def _runtime_env_holds_no_secret(self) -> ClusterSpec:
        if "working_dir" in self.runtime_env:
            raise ValueError("runtime_env.working_dir: the job's working_dir carries its spec; ship code as py_modules")
        env_vars = self.runtime_env.get("env_vars", {})
        if not isinstance(env_vars, dict) or not all(isinstance(v, str) for v in env_vars.values()):
            raise ValueError("runtime_env.env_vars: must map names to string values")
        for name in env_vars:
            if looks_secret(name):
                raise ValueError(
                    f"runtime_env.env_vars.{name}: a credential written in the spec is stored with the run; "
                    f"list {name} in cluster.forward_env and set it in the environment instead"
                )
            if name in self.forward_env:
                raise ValueError(f"runtime_env.env_vars.{name}: also in forward_env; give it in one place")
        return self


class Distribution(Section):
    """One search dimension: exactly one of a list to choose from, a grid, or a (log-)uniform range.

    On an integer setting a range draws integers, bounds included.
    """

    choice: Annotated[list[Any], Field(min_length=1)] | None = None
    grid: Annotated[list[Any], Field(min_length=1)] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Distribution:
        given = [name for name in ("choice", "grid", "uniform", "loguniform") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of choice, grid, uniform, loguniform")
        for name in ("uniform", "loguniform"):
            bounds = getattr(self, name)
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{name} needs [low, high] with low < high")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform needs a low bound > 0")
        return self

    @property
    def candidates(self) -> list[Any]:
        """Values that show whether the dimension fits its setting: every listed value, or both bounds."""
        return list(self.choice or self.grid or self.uniform or self.loguniform)


TUNABLE = (
    "model.cell",
    "model.layers",
    "model.hidden",
    "model.embedding",
    "model.dropout",
    "model.weight_drop",
    "model.dropout_input",
    "model.dropout_between",
    "model.dropout_embedding",
    "train.lr",
    "train.seq_len",
    "train.batch_size",
    "train.weight_decay",
    "train.state_reset",
    "train.average.kind",
    "train.average.decay",
    "train.average.start",
)
SHAPE = ("cell", "layers", "hidden", "embedding")  # the model settings a parent's weights fix (train.init_from)


class SchedulerSpec(Section):
    """ASHA stops trials whose val loss trails at a rung; rungs are counted in training steps."""

    kind: Literal["asha", "none"] = "asha"
    grace_period: Positive | None = None  # steps before a trial can be stopped (default: train.eval_every)
    reduction_factor: Annotated[float, Field(gt=1)] = 2.0


class TrialResources(Workers):
    """What one trial holds: its Train workers, and the driver function that launches them.

    The driver mostly waits; ``driver_cpus: 0`` lets trials use every core for workers (it then
    reserves a little memory instead of CPU).
    """

    workers: Positive = 1
    cpus_per_worker: PositiveFloat = 1.0
    gpus_per_worker: GPUs = Field(0.0, description=GPUS_HELP)
    use_gpu: bool = Field(False, description=USE_GPU_HELP)
    driver_cpus: Annotated[float, Field(ge=0, le=1)] = 0.01


class TuneSpec(Section):
    """A sweep: each trial trains the spec's model with the sampled settings applied."""

    space: Annotated[dict[str, Distribution], Field(min_length=1)]
    samples: Positive = 4
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    concurrency: Positive | None = None
    time_budget_s: PositiveFloat | None = None
    resources: TrialResources = Field(default_factory=TrialResources)
    seed: int = 0


class JobSpec(Section):
    name: Annotated[str, Field(pattern=NAME)]
    storage: str = "./rnnfarm-data"
    storage_options: dict[str, Any] = Field(default_factory=dict, repr=False)  # may hold credentials
    corpus: CorpusSpec = Field(default_factory=CorpusSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    samples: SampleSpec = Field(default_factory=SampleSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    tune: TuneSpec | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (for Ray: Tune keeps its trials' arguments on storage), credentials are masked, here and in
        the corpus plugin's options: trials read storage through Stores, whose credentials are sealed."""
        state = super().__getstate__()
        fields = dict(state["__dict__"])
        fields["storage_options"] = redact(fields["storage_options"])
        fields["corpus"] = fields["corpus"].model_copy(update={"options": redact(fields["corpus"].options)})
        return {**state, "__dict__": fields}

    @model_validator(mode="after")
    def _space_fits_the_spec(self) -> JobSpec:
        if self.tune is None:
            return self
        for key, dist in self.tune.space.items():
            if key not in TUNABLE:
                raise ValueError(f"tune.space.{key}: not a tunable setting (tunable: {', '.join(TUNABLE)})")
            if key.removeprefix("model.") in SHAPE and self.train.init_from is not None:
                shape = ", ".join(f"model.{k}" for k in SHAPE)
                raise ValueError(
                    f"tune.space.{key}: with train.init_from every trial starts from the parent's weights, so "
                    f"the shape ({shape}) is the parent's: search other settings, such as train.lr"
                )
            for value in dist.candidates:
                try:
                    with_settings(self, {key: value})
                except ValidationError as exc:
                    raise ValueError(f"tune.space.{key}: {value!r} {_describe(exc.errors()[0])}") from None
        return self


def apply_settings(data: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A copy of a spec's data with dotted settings (``model.hidden: 256``) applied."""
    data = copy.deepcopy(data)
    for key, value in settings.items():
        *sections, field = key.split(".")
        where = data
        for section in sections:
            where = where.setdefault(section, {})
        where[field] = value
    return data


def with_settings(spec: JobSpec, settings: dict[str, Any]) -> JobSpec:
    """A single-model spec: this one with dotted settings applied, and no sweep."""
    return JobSpec.model_validate(apply_settings({**spec.model_dump(), "tune": None}, settings))


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
        return NAME_HELP
    if kind == "too_short":
        return "must not be empty"
    message = error["msg"]
    return message.removeprefix("Value error, ")


def _key(part: Any) -> str:
    """One part of a YAML path as the message shows it: a key that is not plain text is quoted."""
    text = str(part)
    return text if text.isprintable() and text.strip() == text and text else repr(text)


def _format(exc: ValidationError, source: str) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(_key(p) for p in error["loc"])
        problems.append(f"{where}: {_describe(error)}" if where else _describe(error))
    return one_line(f"{source}: " + "; ".join(problems))


def one_line(message: str) -> str:
    """A message kept to one line: line breaks (from a key or value it quotes) are written as escapes."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def run_name(name: str, source: str = "--name") -> str:
    """``name`` if it can name a run (a folder on storage: no ``/``, no ``..``); a UserError otherwise."""
    if not re.match(NAME, name):
        raise UserError(one_line(f"{source} {name!r}: a run's name {NAME_HELP}"))
    return name


def parse(data: Any, source: str = "spec") -> JobSpec:
    """Validate a mapping (already loaded from YAML) into a JobSpec."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: the spec must be a YAML mapping of sections, got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format(exc, source)) from None


def read_yaml(text: str, source: str) -> Any:
    """YAML as plain data, read safely: no tag makes a Python object (``!!python/...`` is refused), and a
    document nested too deeply or expanding past ``MAX_VALUES`` values is refused, each in one line."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(one_line(f"{source}: {problem}{where}")) from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply to read") from None
    todo, count = [data], 0
    while todo:  # counted as a reader would walk it: each use of an alias counts again
        item = todo.pop()
        count += 1
        if count > MAX_VALUES:
            raise UserError(f"{source}: expands to more than {MAX_VALUES:,} values (aliases of aliases?): write it out")
        if isinstance(item, dict):
            todo.extend(item.items())
        elif isinstance(item, list | tuple):
            todo.extend(item)
    return data


def load(path: str | Path) -> JobSpec:
    """Read and validate a YAML spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such spec file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(one_line(f"{path}: cannot read the spec ({exc})")) from None
    return parse(read_yaml(text, str(path)), str(path))


def dump(spec: JobSpec, masked: bool = False) -> str:
    """The spec as YAML; ``masked``: with every credential in it masked, at any depth (as a run keeps it)."""
    data = spec.model_dump(mode="json")
    return yaml.safe_dump(redact(data) if masked else data, sort_keys=False, allow_unicode=True)
