"""`rnnfarm serve`: a Ray Serve application that generates text from one checkpoint, requests batched across clients.

Each replica loads the checkpoint once and runs a step loop in a thread of its own. Every request being
generated is one row of the model's state: one forward pass steps every row, so a replica serves many
requests at once and its throughput grows with concurrency. A request joins between two steps (its
prime read alone, as `rnnfarm sample` reads it) and leaves as soon as its text is complete.

Each row draws with its own CPU torch.Generator, through the draw `rnnfarm sample` makes (``draw``), so a
request's text follows from its own settings and seed. What else is in the batch changes only the last
bits of its logits (the matrix products of a batched step round differently from those of a batch of one,
by about 1e-7 of a logit), which flips a draw only where two characters tie that closely; bench/serve.py
counts the characters where served texts differ from the plain loop's.

A replica runs its model on the GPU torch sees in it (Ray gives it one with ``gpus_per_replica``), else on
its CPU. The draw stays on the CPU, so a seed draws the same noise there: on a GPU only the logits differ
from the CPU's (cuDNN and cuBLAS round otherwise), with the same effect as batching's.

With ``stop``, a request asks for ``n`` records, made as `rnnfarm sample --stop` makes them (see
insight.records): one job per try, drawn in turn with the request's one generator, each ending at its first
stop string, so a seeded request gives the records `rnnfarm sample` prints. ``novel`` and ``novelty`` need the
index of the train split: a replica opens it at the first request that asks (from the checkpoint's recorded
corpus, or the ``corpus`` the server was given); where there is none, such a request is refused in one line.

HTTP: ``POST /generate`` (JSON in; JSON out, or the text itself as it is generated, chunked
``text/plain``, with ``stream: true``; records stream one a line, escaped), ``GET /healthz``, ``GET /model``
(the model card).
"""

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ray import serve
from torch import Tensor

from .. import redact
from ..corpus import novelty as meter
from ..corpus.vocab import Vocab
from ..engine import checkpoint
from ..engine.device import out_of_memory_line, pick
from ..engine.model import CharRNN, State, draw, native_rnn_kernels
from ..errors import UserError
from ..insight import records
from ..insight.records import Cut
from ..insight.sample import local_checkpoint

APP_NAME = "rnnfarm"
EXAMPLE = '{"prime": "ROMEO:", "length": 200, "seed": 1}'
FLUSH_S = 0.05  # a stream is sent what it has this often
logger = logging.getLogger("rnnfarm.serve")


class GenerateRequest(BaseModel):
    """The body of ``POST /generate``; the fields mean what `rnnfarm sample`'s options of the same name mean."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prime: str = Field("\n", min_length=1, description="Text to start from (characters of the vocabulary).")
    length: int = Field(500, ge=1, description="Characters to generate (at most the server's --max-length).")
    temperature: float = Field(1.0, gt=0, allow_inf_nan=False, description="Below 1: likelier characters.")
    top_k: int | None = Field(None, ge=1, description="Draw among the k likeliest characters only.")
    seed: int | None = Field(None, ge=0, lt=2**64, description="The same seed draws the same text.")
    stream: bool = Field(False, description="Send the text as it is generated (chunked text/plain).")
    stop: list[Annotated[str, Field(min_length=1)]] = Field([], description="Make records ending at these strings.")
    n: int = Field(1, ge=1, description="With stop: how many records.")
    unique: bool = Field(False, description="With stop: no record twice.")
    novel: bool = Field(False, description="With stop: no record that is a whole record of the train text.")
    tries: int | None = Field(None, ge=1, description="With stop: the most samples to draw (default 10 per record).")
    novelty: bool = Field(False, description="Add the novelty meter of the text, or of each record (not streamed).")

    @model_validator(mode="after")
    def _records_need_stop(self) -> Self:
        if not self.stop and (self.n > 1 or self.unique or self.novel or self.tries):
            raise ValueError("n, unique, novel and tries choose among records: give stop too")
        if self.tries is not None and self.tries < self.n:
            raise ValueError(f"tries {self.tries} is below n {self.n}: each record takes at least one try")
        if self.novelty and self.stream:
            raise ValueError("novelty comes with the whole text: leave stream out")
        return self


class ServeArgs(BaseModel):
    """What one application serves, and how: the ``args`` of a Serve config file naming ``app``."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str = Field(description="A checkpoint folder, or a run (its best checkpoint), at any storage URL.")
    replicas: int = Field(1, ge=1, description="Replicas, each with its own copy of the model.")
    cpus_per_replica: float = Field(1.0, gt=0, description="CPUs Ray reserves for each replica.")
    gpus_per_replica: float = Field(
        0.0, ge=0, description="GPUs Ray reserves for each replica (a fraction shares one); the model runs there."
    )
    max_length: int = Field(2000, ge=1, description="Longest text one request may ask for.")
    max_batch: int = Field(64, ge=1, description="Requests one replica generates at once (rows of its batch).")
    corpus: str | None = Field(None, description="For novel/novelty: the corpus folder, if not the recorded one.")

    @field_validator("gpus_per_replica")
    @classmethod
    def _whole_above_one(cls, gpus: float) -> float:
        if gpus > 1 and not gpus.is_integer():  # Ray shares a GPU in fractions of one, never across two
            raise UserError(f"--gpus-per-replica {gpus:g}: above 1, give a whole number of GPUs (or a fraction of one)")
        return gpus


# ---- the step loop: plain torch, no Ray -------------------------------------------------------------------


@dataclass(eq=False)
class Job:
    """One request being generated: its settings, its generator, and where its text goes."""

    ids: Tensor  # the prime's token ids
    length: int
    temperature: float
    top_k: int | None
    generator: torch.Generator
    decode: Callable[[int], str]
    stream: bool
    text: list[str] = field(default_factory=list)
    left: int = 0
    error: str | None = None
    sent_at: float | None = None  # when the stream was last sent text
    cancelled: bool = False  # its client went away
    cut: Cut | None = None  # a record's job: it ends where a stop string ends


Delivery = tuple[Job, str, bool]  # a job, text it has not been sent yet, whether it is complete


def state_rows(state: State, index: Tensor) -> State:
    return tuple(s.index_select(1, index) for s in state) if isinstance(state, tuple) else state.index_select(1, index)


def state_joined(state: State | None, other: State) -> State:
    if state is None:
        return other
    if isinstance(state, tuple):
        return tuple(torch.cat([s, o], dim=1) for s, o in zip(state, other, strict=True))
    return torch.cat([state, other], dim=1)


class Stepper:
    """Generates every submitted job, one batched forward pass per character of all of them, in a thread."""

    def __init__(self, model: CharRNN, dispatch: Callable[[list[Delivery]], None], *, max_batch: int) -> None:
        self.model, self.dispatch, self.max_batch = model.eval(), dispatch, max_batch
        self.device = next(model.parameters()).device
        self.incoming: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="rnnfarm-stepper", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        job.left = job.length
        self.incoming.put(job)

    def stop(self) -> None:
        self.incoming.put(None)
        self.thread.join()

    @torch.no_grad()
    def _loop(self) -> None:
        active: list[Job] = []
        state: State | None = None
        last: Tensor | None = None  # (rows, V): the logits each row draws its next token from
        while True:
            reading: Job | None = None  # the job whose prime is being read
            try:
                # Admit waiting jobs (waiting for one only when there is nothing to step); each prime is read
                # alone, batch 1, exactly as rnnfarm.model.generate reads it.
                while len(active) < self.max_batch:
                    try:
                        reading = self.incoming.get(block=not active)
                    except queue.Empty:
                        break
                    if reading is None:
                        return
                    with native_rnn_kernels():
                        logits, row_state = self.model(reading.ids.view(1, -1).to(self.device))
                    active.append(reading)
                    reading = None
                    state = state_joined(state, row_state)
                    row_last = logits[:, -1].float().cpu()
                    last = row_last if last is None else torch.cat([last, row_last])
                active, state, last = self._step(active, state, last)
            except Exception as exc:  # a failed step fails the jobs in it, never the replica
                failed = active if reading is None else [*active, reading]
                batch = f"one prime of {len(reading.ids)} characters" if reading else f"{len(active)} requests"
                why = self._why(exc, batch)
                for job in failed:
                    job.error = why
                self.dispatch([(job, "", True) for job in failed])
                active, state, last = [], None, None

    def _why(self, exc: Exception, batch: str) -> str:
        """Why a step failed, in one line; running out of the device's memory says what to lower."""
        if isinstance(exc, torch.OutOfMemoryError):
            lower = "the server's --max-batch or the primes"
            why = out_of_memory_line(self.device, batch=batch, model=self.model, lower=lower)
            logger.warning(why)
            return why
        logger.exception("generation step failed")
        return f"generation failed: {exc}"

    def _step(self, active: list[Job], state: State, last: Tensor) -> tuple[list[Job], State | None, Tensor | None]:
        """Draw one token for every active job, send on what it completes, and step the rows still going."""
        vocab_size = last.shape[1]
        temperature = torch.tensor([j.temperature for j in active], dtype=torch.float32)
        top_k = None
        if any(j.top_k is not None for j in active):
            top_k = torch.tensor([min(j.top_k or vocab_size, vocab_size) for j in active])
        tokens = draw(last, temperature, top_k, [j.generator for j in active])
        deliveries: list[Delivery] = []
        going: list[int] = []
        now = time.monotonic()
        for row, (job, token) in enumerate(zip(active, tokens.tolist(), strict=True)):
            text = job.decode(token)
            job.left -= 1
            ended = job.cut is not None and job.cut.feed(text)
            done = job.left == 0 or job.cancelled or ended
            job.text.append(text)
            # A stream is sent its first character at once, then what it has every FLUSH_S: each piece
            # crosses from the replica to Serve's proxy on its own, and one per character would cost more
            # than the step that drew it.
            due = done or (job.stream and (job.sent_at is None or now - job.sent_at >= FLUSH_S))
            if due and ((chunk := "".join(job.text)) or done):
                deliveries.append((job, chunk, done))
                job.text, job.sent_at = [], now
            if not done:
                going.append(row)
        if deliveries:
            self.dispatch(deliveries)
        if not going:
            return [], None, None
        index = torch.tensor(going)
        state = state_rows(state, index.to(self.device)) if len(going) < len(active) else state
        with native_rnn_kernels():
            logits, state = self.model(tokens[index].view(-1, 1).to(self.device), state)
        return [active[i] for i in going], state, logits[:, -1].float().cpu()


# ---- the Serve deployment ------------------------------------------------------------------------------------

api = FastAPI(title="rnnfarm", docs_url=None, redoc_url=None)


def refused(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def one_line(exc: ValidationError) -> str:
    """The first problem of a request body, in one line that names the field."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    if first["type"] == "extra_forbidden":
        return f"unknown field {where!r}: the fields are {', '.join(GenerateRequest.model_fields)}"
    return f"{where}: {first['msg']}"


def model_card(meta: dict[str, Any], vocab: Vocab, model: CharRNN, max_length: int) -> dict[str, Any]:
    """What a client needs to know about the model behind the endpoint (no spec, no storage)."""
    return {
        "model": meta["model"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": {"level": vocab.level, "size": len(vocab), "symbols": "".join(vocab.symbols)},
        "step": meta.get("step"),
        "val_loss": meta.get("val_loss"),
        "corpus": meta.get("corpus"),
        "max_length": max_length,
        "device": next(model.parameters()).device.type,  # where this replica runs the model: cpu or cuda
    }


@serve.deployment(name="TextGenerator")
@serve.ingress(api)
class TextGenerator:
    """One replica: the model, loaded once, and its step loop."""

    def __init__(self, args: ServeArgs) -> None:
        torch.set_grad_enabled(False)
        # What torch sees here, not what was asked: Ray gives the replica its GPUs (CUDA_VISIBLE_DEVICES),
        # and a GPU Ray only counts (a logical one) is no device
        device = pick()
        with local_checkpoint(args.checkpoint) as folder:
            model, self.vocab, meta = checkpoint.load_model(folder, device)
        self.meta, self.corpus = meta, args.corpus
        self.index: meter.Index | str | None = None  # the train split's index, or why there is none
        self.index_lock = threading.Lock()
        self.max_length = args.max_length
        self.card = model_card(meta, self.vocab, model, args.max_length)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queues: dict[Job, asyncio.Queue] = {}
        self.stepper = Stepper(model, self._dispatch, max_batch=args.max_batch)

    def _dispatch(self, deliveries: list[Delivery]) -> None:
        """From the step loop's thread: hand each job's text to its request, on the event loop."""

        def put() -> None:
            for job, text, done in deliveries:
                if (q := self.queues.get(job)) is not None:
                    q.put_nowait((text, done))

        self.loop.call_soon_threadsafe(put)

    @api.get("/healthz")
    def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/model")
    def model(self) -> dict[str, Any]:
        return self.card

    @api.post("/generate")
    async def generate(self, request: Request):
        started = time.perf_counter()
        try:
            body = await request.json()
        except ValueError as exc:
            return refused(f"the body is not JSON ({exc}): send an object such as {EXAMPLE}")
        if not isinstance(body, dict):
            return refused(f"the body must be a JSON object such as {EXAMPLE}")
        try:
            asked = GenerateRequest.model_validate(body)
        except ValidationError as exc:
            return refused(one_line(exc))
        if asked.length > self.max_length:
            return refused(f"length {asked.length} is above this server's maximum, {self.max_length} (--max-length)")
        try:
            ids = torch.from_numpy(self.vocab.encode(asked.prime, strict=True).astype("int64"))
        except UserError as exc:
            return refused(f"prime: {exc}")
        generator = torch.Generator()
        if asked.seed is None:
            generator.seed()
        else:
            generator.manual_seed(asked.seed)
        self.loop = asyncio.get_running_loop()
        index = None
        if asked.novel or asked.novelty:
            index = await asyncio.to_thread(self._index)
            if isinstance(index, str):
                return refused(f"{'novel' if asked.novel else 'novelty'}: {index}")
        if asked.stop:
            return await self._records(asked, ids, generator, index, started)
        job = self._job(asked, ids, generator)
        if asked.stream:
            return StreamingResponse(self._text(job), media_type="text/plain; charset=utf-8")
        text = "".join([chunk async for chunk in self._text(job)])
        if job.error:
            return refused(job.error, status=500)
        metered = {"novelty": index.meter(text).to_json()} if asked.novelty else {}
        return {"text": text, "chars": len(text), "seconds": round(time.perf_counter() - started, 6), **metered}

    def _job(self, asked: GenerateRequest, ids: Tensor, generator: torch.Generator, cut: Cut | None = None) -> Job:
        """A job submitted to the step loop, its text to be read with ``_text``."""
        decode = self.vocab.decoder()
        job = Job(ids, asked.length, asked.temperature, asked.top_k, generator, decode, asked.stream, cut=cut)
        self.queues[job] = asyncio.Queue()
        self.stepper.submit(job)
        return job

    def _index(self) -> meter.Index | str:
        """The train split's index, opened at the first request that needs it; or why there is none."""
        with self.index_lock:
            if self.index is None:
                try:
                    self.index = meter.open_index(meter.corpus_of(self.meta, self.corpus))
                except UserError as exc:
                    self.index = redact.scrub(str(exc))
            return self.index

    async def _records(
        self, asked: GenerateRequest, ids: Tensor, generator: torch.Generator, index: meter.Index | None, started: float
    ):
        """The records a request asks for: as a JSON list, or streamed one a line (escaped) as each is kept."""
        stops = tuple(asked.stop)
        novel = (lambda r: not index.is_record(r, stops)) if asked.novel else None
        keeper = records.Keeper(unique=asked.unique, novel=novel)
        tries = asked.tries or records.default_tries(asked.n)
        search = records.Search(prime=asked.prime, stops=stops, count=asked.n, keeper=keeper, tries=tries)

        async def found() -> AsyncIterator[str]:
            while search.going():
                job = self._job(asked, ids, generator, cut=search.cut())
                async for _ in self._text(job):
                    pass
                if job.error:
                    raise RuntimeError(job.error)
                if (record := search.offer(job.cut)) is not None:
                    yield record

        if asked.stream:

            async def lines() -> AsyncIterator[str]:
                async for record in found():
                    yield records.escape(record) + "\n"
                if error := search.shortfall():
                    yield f"error: {error}\n"

            return StreamingResponse(lines(), media_type="text/plain; charset=utf-8")
        try:
            kept = [record async for record in found()]
        except RuntimeError as exc:
            return refused(str(exc), status=500)
        body: dict[str, Any] = {"records": kept, "tries": keeper.tries}
        if asked.novelty:
            body["novelty"] = [index.meter(r).to_json() for r in kept]
        body["seconds"] = round(time.perf_counter() - started, 6)
        if error := search.shortfall():
            return JSONResponse({"error": str(error), **body}, status_code=422)
        return body

    async def _text(self, job: Job) -> AsyncIterator[str]:
        """The job's text as the step loop sends it; a client that goes away frees its row at the next step."""
        try:
            while True:
                text, done = await self.queues[job].get()
                if text:
                    yield text
                if done:
                    return
        finally:
            job.cancelled = True
            self.queues.pop(job, None)

    def __del__(self) -> None:
        self.stepper.stop()


def app(args: dict[str, Any]) -> serve.Application:
    """The application a Serve config file names (``import_path: rnnfarm.serving.serve:app``, ``args``: ServeArgs)."""
    return application(ServeArgs.model_validate(args))


def application(args: ServeArgs) -> serve.Application:
    return TextGenerator.options(
        num_replicas=args.replicas,
        ray_actor_options={"num_cpus": args.cpus_per_replica, "num_gpus": args.gpus_per_replica},
        max_ongoing_requests=args.max_batch,
    ).bind(args)


# ---- running it ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    url: str
    args: ServeArgs


def start(args: ServeArgs, *, host: str = "127.0.0.1", port: int = 8000, address: str = "local") -> Served:
    """Run the application on this process's Ray and wait until every replica is ready; returns where it
    listens. ``address``: ``local`` (an embedded Ray when none is running) or ``auto`` (the Ray cluster this
    machine belongs to). ``stop`` ends it."""
    import ray

    from ..launch.pipeline import start_local_ray

    with local_checkpoint(args.checkpoint):  # a bad target is this caller's error, not a replica's
        pass
    if not ray.is_initialized():
        if address == "auto":
            ray.init(address="auto", logging_level="WARNING")
        else:
            start_local_ray()
    if address != "auto":  # a local Ray cannot grow: replicas it has no GPUs for would wait for ever
        gpus, asked = ray.cluster_resources().get("GPU", 0.0), args.replicas * args.gpus_per_replica
        if asked > gpus:
            raise UserError(
                f"--gpus-per-replica {args.gpus_per_replica:g} x {args.replicas} replica(s) asks for {asked:g} GPUs "
                f"and this Ray has {gpus:g}: lower --gpus-per-replica or --replicas, or serve on a Ray with GPUs"
            )
    quiet = {"log_level": "WARNING", "enable_access_log": False}  # Ray copies its actors' lines to this terminal
    serve.start(http_options={"host": host, "port": port}, logging_config=quiet)
    serve.run(application(args), name=APP_NAME, route_prefix="/", logging_config=quiet)
    return Served(f"http://{host}:{port}", args)


def stop() -> None:
    """End the application and Serve's proxy and controller, returning their CPUs to Ray."""
    serve.delete(APP_NAME)
    serve.shutdown()


# ---- on a remote cluster -----------------------------------------------------------------------------------


def config(args: ServeArgs, *, host: str, port: int) -> dict[str, Any]:
    """The Serve config (what Ray's `serve deploy` sends) that serves ``args`` from the head node's proxy."""
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": host, "port": port},
        "applications": [
            {"name": APP_NAME, "route_prefix": "/", "import_path": f"{__name__}:app", "args": args.model_dump()}
        ],
    }


def deploy(args: ServeArgs, address: str, *, host: str, port: int, timeout_s: float = 300) -> Served:
    """Serve ``args`` on the Ray cluster whose dashboard is at ``address`` and wait until it runs there.

    The replicas read the checkpoint on the cluster's nodes, with the nodes' own credentials: the target is
    a run or checkpoint on storage they reach (object storage, or a shared folder). The application stays
    when this process ends; ``undeploy`` (or Ray's `serve shutdown`) removes it.
    """
    from ..launch.submit import Cluster

    cluster = Cluster.at(address)
    cluster.deploy_serve(config(args, host=host, port=port))
    deadline = time.monotonic() + timeout_s
    status, message = "NOT_STARTED", ""
    while time.monotonic() < deadline:
        status, message = cluster.serve_status(APP_NAME)
        if status == "RUNNING":
            where = urlsplit(address).hostname if host in ("0.0.0.0", "::") else host
            return Served(f"http://{where}:{port}", args)
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            break
        time.sleep(1.0)
    reason = message.strip().splitlines()[-1] if message.strip() else f"still {status} after {timeout_s:g} s"
    raise UserError(f"the Ray cluster at {address} could not serve {args.checkpoint}: {redact.scrub(reason)}")


def undeploy(address: str) -> None:
    """Remove rnnfarm's application (and every other Serve application) from the cluster at ``address``."""
    from ..launch.submit import Cluster

    Cluster.at(address).delete_serve()
