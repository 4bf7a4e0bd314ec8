"""`rnnfarm serve`: a real Ray Serve application on the suite's local Ray, asked over HTTP with a real client.

The replica asks for half of the suite's Ray's one logical GPU: Ray really gives it, and torch in the replica
finds no CUDA there, so the model runs on the CPU (on a GPU machine the same replica runs it on its GPU)."""

from __future__ import annotations

import json
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch
from click.testing import CliRunner

from rnnfarm.cli import cli
from rnnfarm.corpus import novelty
from rnnfarm.corpus.vocab import Vocab
from rnnfarm.engine.model import CharRNN, draw
from rnnfarm.insight.records import escape
from rnnfarm.insight.sample import characters
from rnnfarm.launch.pipeline import free_ports
from rnnfarm.serving import serve as serving
from rnnfarm.spec import ModelSpec

MAX_LENGTH = 1_000_000  # long enough for a stream that outlasts the test's wait


@pytest.fixture(scope="module")
def server(ray_local, trained_checkpoint, shakespeare):
    args = serving.ServeArgs(
        checkpoint=str(trained_checkpoint),
        cpus_per_replica=0.5,
        gpus_per_replica=0.5,
        max_length=MAX_LENGTH,
        corpus=shakespeare.folder.url,  # the checkpoint's run storage has no corpus: for novel and novelty
    )
    served = serving.start(args, port=free_ports(1)[0])
    yield served.url
    serving.stop()  # the replica's CPU and GPU go back to the other tests' Ray


def generate(url: str, **body) -> dict:
    reply = requests.post(f"{url}/generate", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()


def sampled(checkpoint, *args: str) -> str:
    result = CliRunner().invoke(cli, ["sample", str(checkpoint), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_seeded_text_equals_rnnfarm_sample_with_the_same_settings(server, trained_checkpoint):
    for body, options in [
        ({"prime": "ROMEO:", "length": 150, "temperature": 0.8, "seed": 7}, "--length 150 -t 0.8 --seed 7"),
        (
            {"prime": "\n", "length": 90, "temperature": 1.3, "top_k": 5, "seed": 2},
            "--length 90 -t 1.3 --top-k 5 --seed 2",
        ),
    ]:
        got = generate(server, **body)
        cli_text = sampled(trained_checkpoint, "--prime", body["prime"], *options.split())
        assert body["prime"] + got["text"] + "\n" == cli_text
        assert got["chars"] == body["length"] and got["seconds"] > 0


def test_streaming_delivers_the_first_characters_while_the_rest_is_still_being_generated(server):
    body = {"prime": "ROMEO:", "length": MAX_LENGTH, "seed": 3, "stream": True}
    with requests.post(f"{server}/generate", json=body, stream=True, timeout=120) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
        chunks = reply.iter_content(chunk_size=None, decode_unicode=True)
        first = ""
        while len(first) < 40:
            first += next(chunks)
        # A million characters take minutes here: the response is still open, its text far from complete.
        assert not reply.raw.closed and len(first) < MAX_LENGTH
    whole = generate(server, prime="ROMEO:", length=len(first), seed=3)["text"]
    assert first == whole  # the stream is the text a plain request gets


def test_32_concurrent_requests_all_complete_each_with_its_single_request_text(server):
    asked = [
        {"prime": "ROMEO:" if i % 2 else "\n", "length": 60 + i, "temperature": 0.5 + i / 20, "seed": i}
        | ({"top_k": 3 + i % 7} if i % 3 == 0 else {})
        for i in range(32)
    ]
    alone = [generate(server, **body)["text"] for body in asked]
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda body: generate(server, **body)["text"], asked))
    assert together == alone
    assert all(len(text) == body["length"] for text, body in zip(together, asked, strict=True))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "the body is not JSON"),
        ({"prime": "ROMEO:", "lenght": 10}, "unknown field 'lenght'"),
        ({"temperature": 0}, "temperature: Input should be greater than 0"),
        ({"length": 0}, "length: Input should be greater than or equal to 1"),
        ({"length": MAX_LENGTH + 1}, f"above this server's maximum, {MAX_LENGTH} (--max-length)"),
        ({"top_k": 0}, "top_k: Input should be greater than or equal to 1"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"length": "10"}, "length: Input should be a valid integer"),
        ({"prime": ""}, "prime: String should have at least 1 character"),
        ({"prime": "ROMEO€"}, "outside the model's vocabulary"),
        ([1, 2], "the body must be a JSON object"),
        ({"n": 3}, "n, unique, novel and tries choose among records: give stop too"),
        ({"stop": [""]}, "stop.0: String should have at least 1 character"),
        ({"stop": ["\n"], "n": 5, "tries": 2}, "tries 2 is below n 5"),
        ({"novelty": True, "stream": True}, "novelty comes with the whole text: leave stream out"),
    ],
)
def test_bad_requests_get_a_400_with_one_line_saying_what_is_wrong(server, body, message):
    data = body if isinstance(body, str) else json.dumps(body)
    reply = requests.post(f"{server}/generate", data=data, headers={"content-type": "application/json"}, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert message in error and "\n" not in error, error


def test_a_replica_holds_the_share_of_a_gpu_it_asks_ray_for_and_runs_where_torch_in_it_sees_a_device(server, ray_local):
    assert ray_local.cluster_resources()["GPU"] == 1
    assert ray_local.available_resources().get("GPU") == 0.5  # the replica holds its half
    device = requests.get(f"{server}/model", timeout=60).json()["device"]
    assert device == ("cuda" if torch.cuda.is_available() else "cpu")  # a GPU Ray only counts is no device


@pytest.mark.parametrize(
    ("gpus", "message"),
    [
        ("2", "--gpus-per-replica 2 x 1 replica(s) asks for 2 GPUs and this Ray has 1: lower --gpus-per-replica"),
        ("1.5", "--gpus-per-replica 1.5: above 1, give a whole number of GPUs (or a fraction of one)"),
    ],
)
def test_gpus_this_ray_cannot_give_a_replica_are_refused_in_one_line(ray_local, trained_checkpoint, gpus, message):
    result = CliRunner().invoke(cli, ["serve", str(trained_checkpoint), "--gpus-per-replica", gpus])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_step_that_runs_out_of_device_memory_fails_its_request_in_one_line_and_the_next_one_is_served():
    # Simulated: no GPU here, so torch.OutOfMemoryError is raised by the model's forward for a long prime.
    vocab = Vocab(("\n", *(chr(c) for c in range(32, 96))))
    torch.manual_seed(1)
    model = CharRNN(len(vocab), ModelSpec(layers=2, hidden=24, embedding=8)).eval()
    parameters = sum(p.numel() for p in model.parameters())
    forward = model.forward

    def runs_out_on_long_input(x, state=None):
        if x.shape[1] > 100:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return forward(x, state)

    model.forward = runs_out_on_long_input
    ended: queue.SimpleQueue = queue.SimpleQueue()
    stepper = serving.Stepper(model, lambda deliveries: [ended.put(d) for d in deliveries], max_batch=4)

    def job(prime: str) -> serving.Job:
        ids = torch.from_numpy(vocab.encode(prime).astype("int64"))
        return serving.Job(ids, 20, 1.0, None, torch.Generator().manual_seed(5), vocab.decoder(), False)

    try:
        long, short = job("A" * 500), job("AB")
        stepper.submit(long)
        failed, _, done = ended.get(timeout=60)
        stepper.submit(short)
        served, text, _ = ended.get(timeout=60)
    finally:
        stepper.stop()
    assert failed is long and done and served is short and short.error is None
    assert long.error == (
        f"out of memory on cpu with a batch of one prime of 500 characters and a model of {parameters:,} "
        "parameters: lower the server's --max-batch or the primes"
    )
    model.forward = forward
    assert text == "".join(characters(model, vocab, "AB", 20, generator=torch.Generator().manual_seed(5)))


def records_printed(checkpoint, *args: str) -> tuple[list[str], str]:
    """What `rnnfarm sample` prints: its records' lines, and its last line on stderr (empty when it found them all)."""
    result = CliRunner().invoke(cli, ["sample", str(checkpoint), *args])
    assert result.exit_code in (0, 2), result.output
    return result.stdout.splitlines(), result.stderr


@pytest.mark.parametrize(
    ("body", "options"),
    [
        (
            {"prime": "\n", "stop": ["\n"], "n": 6, "seed": 3, "unique": True},
            "-p \\n --stop \\n -n 6 --seed 3 --unique",
        ),
        (
            {"prime": "ROMEO:", "stop": ["\n\n", "?"], "n": 3, "seed": 1, "length": 300, "temperature": 0.8},
            "-p ROMEO: --stop \\n\\n --stop ? -n 3 --seed 1 -l 300 -t 0.8",
        ),
        ({"prime": "\n", "stop": ["\n"], "n": 4, "seed": 5, "novel": True}, "-p \\n --stop \\n -n 4 --seed 5 --novel"),
    ],
)
def test_seeded_records_equal_the_records_rnnfarm_sample_prints(server, trained_checkpoint, shakespeare, body, options):
    lines, _ = records_printed(trained_checkpoint, *options.split(), "--corpus", shakespeare.folder.url)
    got = generate(server, **body)
    assert [escape(r) for r in got["records"]] == lines and len(lines) == body["n"]
    with requests.post(f"{server}/generate", json={**body, "stream": True}, stream=True, timeout=120) as reply:
        assert reply.status_code == 200 and reply.text.splitlines() == lines


def test_records_a_model_cannot_give_come_back_with_a_422_saying_how_many_and_why(server, trained_checkpoint):
    body = {"prime": "\n", "stop": ["\n"], "n": 100, "unique": True, "length": 2, "seed": 1}
    options = ["-p", "\\n", "--stop", "\\n", "-n", "100", "--unique", "-l", "2", "--seed", "1"]
    lines, last = records_printed(trained_checkpoint, *options)
    reply = requests.post(f"{server}/generate", json=body, timeout=120)
    assert reply.status_code == 422 and [escape(r) for r in reply.json()["records"]] == lines
    assert "error: " + reply.json()["error"] + "\n" == last and reply.json()["tries"] == 1000
    streamed = requests.post(f"{server}/generate", json={**body, "stream": True}, timeout=120).text
    assert streamed == "".join(line + "\n" for line in lines) + last


def test_novelty_is_served_with_the_text_and_with_each_record(server, shakespeare):
    index = novelty.open_index(shakespeare.folder)
    got = generate(server, prime="ROMEO:", length=80, seed=4, novelty=True)
    assert got["novelty"] == index.meter(got["text"]).to_json()
    got = generate(server, prime="\n", stop=["\n"], n=2, seed=4, novelty=True)
    assert got["novelty"] == [index.meter(r).to_json() for r in got["records"]]


def test_health_and_the_model_card_are_served(server, trained_checkpoint):
    assert requests.get(f"{server}/healthz", timeout=60).json() == {"status": "ok"}
    card = requests.get(f"{server}/model", timeout=60).json()
    meta = json.loads((trained_checkpoint / "meta.json").read_text())
    assert card["model"] == meta["model"] and card["step"] == meta["step"] == 40
    assert card["vocab"]["size"] == len(meta["vocab"]["symbols"]) and card["max_length"] == MAX_LENGTH
    assert "spec" not in card


def test_a_batched_step_draws_for_each_row_what_torch_multinomial_draws_alone():
    torch.manual_seed(0)
    last = torch.randn(6, 65) * 3
    temperature = torch.tensor([0.5, 0.8, 1.0, 1.0, 1.3, 2.0])
    top_k = torch.tensor([65, 1, 5, 65, 64, 20])
    for seed in range(20):
        gens = [torch.Generator().manual_seed(seed * 10 + row) for row in range(6)]
        drawn = draw(last, temperature, top_k, gens).tolist()
        for row in range(6):
            scaled = last[row] / float(temperature[row])
            kth = torch.topk(scaled, int(top_k[row])).values[-1]
            probs = torch.softmax(scaled.masked_fill(scaled < kth, float("-inf")), dim=-1)
            alone = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed * 10 + row))
            assert drawn[row] == int(alone)


def test_the_step_loop_gives_each_gru_job_the_text_sample_draws_alone_whatever_runs_beside_it():
    vocab = Vocab(("\n", *(chr(c) for c in range(32, 96))))
    torch.manual_seed(1)
    model = CharRNN(len(vocab), ModelSpec(cell="gru", layers=2, hidden=24, embedding=8)).eval()
    done: dict[serving.Job, str] = {}
    finished = threading.Semaphore(0)

    def dispatch(deliveries):
        for job, text, complete in deliveries:
            if complete:
                done[job] = text
                finished.release()

    def job(seed: int) -> serving.Job:
        ids = torch.from_numpy(vocab.encode("AB").astype("int64"))
        return serving.Job(ids, 30 + seed, 1.0, None, torch.Generator().manual_seed(seed), vocab.decoder(), False)

    stepper = serving.Stepper(model, dispatch, max_batch=3)
    jobs = [job(seed) for seed in range(8)]  # more than max_batch: the rest wait their turn
    try:
        for j in jobs:
            stepper.submit(j)
        for _ in jobs:
            assert finished.acquire(timeout=60)
    finally:
        stepper.stop()
    for seed, j in enumerate(jobs):
        alone = characters(model, vocab, "AB", 30 + seed, generator=torch.Generator().manual_seed(seed))
        assert done[j] == "".join(alone)


def test_the_serve_command_refuses_a_target_that_is_no_checkpoint_in_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "nothing"), "--port", "8123"])
    assert result.exit_code == 2 and "neither a checkpoint nor a run" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_server_not_told_where_the_corpus_is_refuses_novel_and_novelty_in_one_line(server, trained_checkpoint):
    """Last in this file: it deploys the application again without ``corpus``. The suite's checkpoint was
    trained apart from its run's storage, so the replica finds no train split to index."""
    unindexed = serving.ServeArgs(
        checkpoint=str(trained_checkpoint), cpus_per_replica=0.5, gpus_per_replica=0.5, max_length=MAX_LENGTH
    )
    serving.start(unindexed, port=int(server.rsplit(":", 1)[1]))
    for field in ("novel", "novelty"):
        reply = requests.post(f"{server}/generate", json={"prime": "\n", "stop": ["\n"], field: True}, timeout=120)
        error = reply.json()["error"]
        assert reply.status_code == 400 and "\n" not in error, error
        assert error.startswith(f"{field}: ") and "give --corpus URL" in error, error
    assert "text" in generate(server, prime="ROMEO:", length=20, seed=1)  # the rest is served as before
