"""Storage on a local S3 server (SeaweedFS on 127.0.0.1), each rnnfarm path against the plain way, same run.

1. A checkpoint folder uploaded and downloaded as Ray Train does (``pyarrow.fs.copy_files``): through
   ``Store.pyarrow()`` (pyarrow's fsspec handler over s3fs, what rnnfarm gives Ray), through pyarrow's
   native ``S3FileSystem``, and with plain s3fs ``put``/``get`` as the baseline.
2. Small objects (sample archives) written whole (``Store.write_json``: a local temporary file, then
   one PUT) against one plain s3fs ``pipe_file`` each.
3. ``rnnfarm pull`` of a run (temporary names, sha256 checked) against plain s3fs ``get`` of the same files.

    .venv/bin/python bench/storage.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.fs
import s3fs

from rnnfarm.runs.pull import pull
from rnnfarm.storage import Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the development S3 server lives with the tests
from tests import s3local  # noqa: E402

BUCKET = "bench"
# The checkpoint of deploy/local.yaml's model (2x256 LSTM, 64-dim embedding, 65 symbols): 0.9 M parameters.
CHECKPOINT = {"model.safetensors": 3_560_000, "optimizer.safetensors": 7_120_000, "meta.json": 3_000}
LARGE = {"model.safetensors": 64 << 20, "optimizer.safetensors": 128 << 20, "meta.json": 3_000}


def timed(fn, repeats: int) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_folder(root: Path, sizes: dict[str, int]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        (root / name).write_bytes(os.urandom(size))
    return root


def checkpoints(server: s3local.LocalS3, work: Path, label: str, sizes: dict[str, int], repeats: int) -> None:
    folder = make_folder(work / label, sizes)
    total = sum(sizes.values())
    plain = s3fs.S3FileSystem(skip_instance_cache=True, **server.options())
    handler, root = Store.at(f"s3://{BUCKET}/ckpt", server.options()).pyarrow()
    native = pyarrow.fs.S3FileSystem(
        access_key=server.access_key, secret_key=server.secret_key, endpoint_override=server.endpoint
    )
    ways = {
        "s3fs put/get (baseline)": (
            lambda i: plain.put(str(folder), f"{BUCKET}/ckpt/plain-{i}", recursive=True),
            lambda i: plain.get(f"{BUCKET}/ckpt/plain-{i}", str(work / f"dl-plain-{label}-{i}"), recursive=True),
        ),
        "Store.pyarrow() (fsspec handler)": (
            lambda i: pyarrow.fs.copy_files(str(folder), f"{root}/handler-{i}", destination_filesystem=handler),
            lambda i: pyarrow.fs.copy_files(
                f"{root}/handler-{i}", str(make_folder(work / f"dl-h-{label}-{i}", {})), source_filesystem=handler
            ),
        ),
        "pyarrow S3FileSystem (native)": (
            lambda i: pyarrow.fs.copy_files(
                str(folder), f"{BUCKET}/ckpt/native-{i}", destination_filesystem=native, use_threads=False
            ),
            lambda i: pyarrow.fs.copy_files(
                f"{BUCKET}/ckpt/native-{i}", str(make_folder(work / f"dl-n-{label}-{i}", {})), source_filesystem=native
            ),
        ),
    }
    print(f"\ncheckpoint folder, {label} ({total / 1e6:.1f} MB, {len(sizes)} files), median of {repeats}:")
    base = None
    for name, (up, down) in ways.items():
        t_up, t_down = timed(up, repeats), timed(down, repeats)
        base = base or (t_up, t_down)
        print(
            f"  {name:<34} upload {t_up:6.3f} s ({total / t_up / 1e6:6.1f} MB/s, x{t_up / base[0]:.2f})   "
            f"download {t_down:6.3f} s ({total / t_down / 1e6:6.1f} MB/s, x{t_down / base[1]:.2f})"
        )
        plain.rm(f"{BUCKET}/ckpt", recursive=True)


def small_objects(server: s3local.LocalS3, repeats: int, count: int = 50) -> None:
    plain = s3fs.S3FileSystem(skip_instance_cache=True, **server.options())
    store = Store.at(f"s3://{BUCKET}/small", server.options())
    doc = {"step": 200, "samples": [{"temperature": 0.8, "prime": "\n", "text": "x" * 300}] * 3}
    data = (json.dumps(doc, indent=2) + "\n").encode()
    t_plain = timed(lambda r: [plain.pipe_file(f"{BUCKET}/small/p{r}-{i}.json", data) for i in range(count)], repeats)
    t_store = timed(lambda r: [(store / f"s{r}-{i}.json").write_json(doc) for i in range(count)], repeats)
    print(f"\n{count} sample archives ({len(data)} B each), median of {repeats}:")
    print(f"  s3fs pipe_file (baseline)          {t_plain:6.3f} s ({t_plain / count * 1e3:5.1f} ms each)")
    each = t_store / count * 1e3
    print(f"  Store.write_json (whole objects)   {t_store:6.3f} s ({each:5.1f} ms each, x{t_store / t_plain:.2f})")


def pulls(server: s3local.LocalS3, work: Path, repeats: int, trials: int = 4, evals: int = 10) -> None:
    """A run of ``trials`` x ``evals`` sample archives and a best/ of the local.yaml model's size."""
    plain = s3fs.S3FileSystem(skip_instance_cache=True, **server.options())
    run = f"{BUCKET}/runs/r"
    model = os.urandom(CHECKPOINT["model.safetensors"])
    sums = {"best/model.safetensors": model}
    for t in range(trials):
        for e in range(evals):
            sums[f"trials/t{t}/samples/step-{e:06d}.json"] = json.dumps({"step": e, "text": "y" * 900}).encode()
    meta = {"files": {"model.safetensors": {"sha256": hashlib.sha256(model).hexdigest(), "size": len(model)}}}
    sums["best/meta.json"] = json.dumps(meta).encode()
    for name, data in sums.items():
        plain.pipe_file(f"{run}/{name}", data)
    plain.pipe_file(f"{run}/run.json", b'{"name": "r", "status": "completed"}')
    listing = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in sorted(sums.items()))
    plain.pipe_file(f"{run}/SHA256SUMS", listing.encode())
    names = [*sums, "run.json", "SHA256SUMS"]
    total = sum(len(d) for d in sums.values())

    def fresh(i: int, kind: str) -> Path:
        dest = work / f"pull-{kind}-{i}"
        shutil.rmtree(dest, ignore_errors=True)
        return dest

    sources = [f"{run}/{n}" for n in names]
    t_plain = timed(lambda i: plain.get(sources, [str(fresh(i, "p") / n) for n in names]), repeats)
    t_pull = timed(lambda i: pull(f"s3://{run}", fresh(i, "r"), options=server.options()), repeats)
    print(f"\npull of a run: {len(names)} files, {total / 1e6:.1f} MB, median of {repeats}:")
    print(f"  s3fs get of the same files (baseline) {t_plain:6.3f} s")
    print(f"  rnnfarm pull (verified)               {t_pull:6.3f} s (x{t_pull / t_plain:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rnnfarm-bench-") as tmp:
        work = Path(tmp)
        server = s3local.start(work / "s3")
        try:
            server.create_bucket(BUCKET)
            checkpoints(server, work, "local.yaml model", CHECKPOINT, args.repeats)
            checkpoints(server, work, "large", LARGE, max(1, args.repeats // 2))
            small_objects(server, args.repeats)
            pulls(server, work, args.repeats)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
