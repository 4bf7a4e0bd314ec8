"""What `rnnfarm corpus list|build|show` print: plain text tables from the registry and manifests."""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from ..storage import Store
from ..tables import table
from . import registry, shards


def corpora() -> list[str]:
    rows = [["name", "version", "distribution", "description"]]
    for name, corpus in sorted(registry.corpora().items()):
        rows.append([name, corpus.version, registry.distribution(corpus), corpus.description])
    return table(rows)


def _symbol(s: str, level: str) -> str:
    """A symbol, quoted: 'e', '\\n', and at byte level '\\xc3'."""
    return repr(bytes([ord(s)]))[1:] if level == "byte" else repr(s)


def splits(manifest: dict[str, Any]) -> list[str]:
    rows = [["split", "documents", "chars", "share", "bytes", "tokens", "shards"]]
    for name, split in manifest["splits"].items():
        rows.append(
            [
                name,
                f"{split['documents']:,}",
                f"{split['chars']:,}",
                f"{split['share']:.2%}",
                f"{split['bytes']:,}",
                f"{split['tokens']:,}",
                str(len(split["shards"])),
            ]
        )
    return table(rows, right={1, 2, 3, 4, 5, 6})


def summary(folder: Store, manifest: dict[str, Any], skipped: bool) -> list[str]:
    vocab, state = manifest["vocab"], "already built" if skipped else "built"
    return [
        f"{state}: corpus {manifest['corpus']} (plugin version {manifest['version']}, {manifest['distribution']}), "
        f"fingerprint {manifest['fingerprint']}",
        f"location: {folder.url}",
        *splits(manifest),
        f"vocabulary: {len(vocab['symbols'])} symbols ({vocab['level']} level), {vocab['replaced']:,} tokens replaced",
        f"source: {manifest['source']['url']} (sha256 {manifest['source']['sha256']})",
    ]


def show(folder: Store) -> list[str]:
    """Everything a manifest says about a built corpus."""
    if not (folder / shards.MANIFEST).exists():
        builds = [c.name for c in folder.list() if (c / shards.MANIFEST).exists()]
        if builds:
            raise UserError(
                f"{folder.url} holds builds {', '.join(builds)}: show one of them ({folder.url}/{builds[0]})"
            )
    manifest = shards.load_manifest(folder)
    vocab, policy, source = manifest["vocab"], manifest["normalization"], manifest["source"]
    invalid = manifest["invalid_utf8"]
    splitting = manifest["splitting"]
    lines = [
        f"corpus:        {manifest['corpus']} (plugin version {manifest['version']}, {manifest['distribution']})",
        f"description:   {manifest['description']}",
        f"location:      {folder.url}",
        f"fingerprint:   {manifest['fingerprint']}",
        f"built:         {manifest['created']} in {manifest['build_seconds']} s",
        f"options:       {manifest['options']}",
        f"source:        {source['url']}",
        f"  sha256:      {source['sha256']} ({source['files']} file{'s' if source['files'] != 1 else ''})",
        "normalization: " + ", ".join(f"{k}={v!r}" for k, v in policy.items()),
        f"invalid UTF-8: {invalid['bytes']:,} bytes in {invalid['documents']:,} documents ({invalid['policy']})",
        f"splits:        by {splitting['by']}, target shares of the characters val {splitting['val']:.2%}, "
        f"test {splitting['test']:.2%}; {manifest['documents']:,} documents",
        *("  " + line for line in splits(manifest)),
        f"vocabulary:    {len(vocab['symbols'])} symbols ({vocab['level']} level), "
        f"replacement {vocab['replacement']!r}, {vocab['replaced']:,} tokens replaced",
    ]
    ranked = sorted(vocab["counts"].items(), key=lambda kv: (-kv[1], kv[0]))
    cells = [f"{_symbol(s, vocab['level'])} {c:,}" for s, c in ranked]
    width = max(len(c) for c in cells) + 2
    per_line = max(1, 100 // width)
    for i in range(0, len(cells), per_line):
        lines.append("  " + "".join(c.ljust(width) for c in cells[i : i + per_line]).rstrip())
    return lines
