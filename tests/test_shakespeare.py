"""The shakespeare plugin builds tiny Shakespeare into checked Arrow shards and a manifest."""

from __future__ import annotations

import hashlib
import json

import pytest

from rnnfarm.corpus import registry, shards
from rnnfarm.corpus.build import build
from rnnfarm.corpus.sources import cache_dir
from rnnfarm.errors import UserError
from rnnfarm.storage import Store
from rnnfarm_plugins.shakespeare import TINY_SHA256

from .conftest import make_spec


def tiny_text() -> str:
    """The original file, from the checksum-keyed cache the build filled."""
    path = next((cache_dir() / "by-sha256" / TINY_SHA256).glob("*"))
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == TINY_SHA256
    return data.decode("utf-8")


def test_registered_through_the_entry_point_group():
    corpus = registry.get("shakespeare")
    assert registry.distribution(corpus).startswith("rnnfarm ")


def test_unknown_plugin_is_a_clear_error():
    with pytest.raises(UserError, match="unknown corpus plugin 'shakespear' .*installed: .*shakespeare"):
        registry.get("shakespear")


def test_vocabulary_is_exactly_the_65_symbols_of_the_file(shakespeare):
    text = tiny_text()
    vocab = shakespeare.manifest["vocab"]
    assert len(text) == 1115394
    assert vocab["symbols"] == "".join(sorted(set(text)))
    assert len(vocab["symbols"]) == 65
    assert vocab["counts"]["e"] == text.count("e")
    assert vocab["replaced"] == 0


def test_val_is_the_last_tenth_as_nanogpt_splits_it(shakespeare):
    text = tiny_text()
    cut = int(len(text) * 0.9)
    assert shards.read_split(shakespeare.folder, shakespeare.manifest, "train") == text[:cut]
    assert shards.read_split(shakespeare.folder, shakespeare.manifest, "val") == text[cut:]
    assert shakespeare.manifest["splits"]["val"]["chars"] == 111540


def test_manifest_records_source_checksum_and_shard_checksums(shakespeare):
    manifest = shakespeare.manifest
    assert manifest["source"]["sha256"] == TINY_SHA256
    assert shakespeare.folder.name == manifest["fingerprint"]
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            data = (shakespeare.folder / shard["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"]


def test_same_inputs_are_skipped_and_other_options_get_their_own_folder(shakespeare):
    again = build(shakespeare.folder.parent.parent.parent, make_spec(shakespeare.folder.url).corpus)
    assert again.skipped and again.folder == shakespeare.folder
    other = build(
        shakespeare.folder.parent.parent.parent,
        make_spec("unused", corpus={"name": "shakespeare", "val": 0.2}).corpus,
    )
    assert not other.skipped and other.fingerprint != shakespeare.fingerprint
    assert other.manifest["splits"]["val"]["chars"] == len(tiny_text()) - int(len(tiny_text()) * 0.8)


def test_a_corrupt_shard_is_named(shakespeare, tmp_path):
    copy = Store.at(str(tmp_path / "copy"))
    shakespeare.folder.download(copy.url)
    shard = shakespeare.manifest["splits"]["val"]["shards"][0]
    path = tmp_path / "copy" / shard["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=f"shard .*{shard['path']} is corrupt"):
        shards.read_split(copy, shards.load_manifest(copy), "val")


def test_a_folder_without_manifest_is_not_trusted(shakespeare, tmp_path):
    copy = Store.at(str(tmp_path / "copy"))
    shakespeare.folder.download(copy.url)
    (tmp_path / "copy" / shards.MANIFEST).unlink()
    with pytest.raises(UserError, match="no manifest.json here"):
        shards.load_manifest(copy)


def test_a_newer_manifest_format_is_refused(shakespeare, tmp_path):
    copy = Store.at(str(tmp_path / "copy"))
    shakespeare.folder.download(copy.url)
    manifest = json.loads((tmp_path / "copy" / shards.MANIFEST).read_text())
    (tmp_path / "copy" / shards.MANIFEST).write_text(json.dumps({**manifest, "format": 99}))
    with pytest.raises(UserError, match="newer than this rnnfarm reads"):
        shards.load_manifest(copy)


def test_unknown_plugin_option_is_refused(tmp_path):
    with pytest.raises(UserError, match="corpus.options.colour"):
        build(Store.at(str(tmp_path)), make_spec(str(tmp_path), corpus={"options": {"colour": "red"}}).corpus)
