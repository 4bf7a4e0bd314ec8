"""ONNX Runtime Web's files for the exported page, from the npm registry: a pinned version, checked, cached.

``npm pack onnxruntime-web@VERSION`` fetches the package's tarball through the user's own npm configuration
(registry, mirror, proxy, credentials: whatever ``npm config`` says), as corpus sources come through the
user's pip configuration. The tarball's sha256 and npm integrity (sha512) must be the ones pinned here; it is
then kept in rnnfarm's cache under ``by-sha256/<sha256>/`` and the page's files are read out of it. Without
npm, the same tarball placed at that path by hand is used as it is (after the same checks).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ..corpus.sources import cache_dir
from ..errors import UserError

PACKAGE, VERSION = "onnxruntime-web", "1.30.0"
SHA256 = "d2228df7e4616bc3348bf504ee888f3bec43789a273f0a63f3e68d203ce3bf71"
INTEGRITY = "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
TARBALL = f"{PACKAGE}-{VERSION}.tgz"
# The wasm backend only (CPU, no GPU): the loader, the Emscripten glue it imports, and the runtime itself.
FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
NPM_TIMEOUT_S = 600


def cached_path() -> Path:
    return cache_dir() / "by-sha256" / SHA256 / TARBALL


def verify(path: Path, what: str) -> None:
    """A UserError unless ``path`` has the pinned sha256 and npm integrity."""
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if sha256 != SHA256 or integrity != INTEGRITY:
        raise UserError(
            f"{what}: sha256 {sha256[:12]}... is not the pinned {SHA256[:12]}... of {PACKAGE}@{VERSION}: "
            "the registry your npm configuration names served another file; check `npm config get registry`"
        )


def pack(folder: Path) -> Path:
    """``npm pack`` the pinned version into ``folder``: the tarball's path."""
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(
            f"npm not found: the page needs {PACKAGE}@{VERSION} from the npm registry; install npm "
            f"(Debian: apt-get install npm), or put {TARBALL} (sha256 {SHA256}) at {cached_path()}"
        )
    try:
        done = subprocess.run(
            [npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(folder)],
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"npm pack {PACKAGE}@{VERSION} took over {NPM_TIMEOUT_S} s: check npm's registry") from None
    if done.returncode != 0 or not (folder / TARBALL).exists():
        said = [re.sub(r"^npm (error|ERR!) ?", "", line) for line in done.stderr.splitlines()]
        reason = next((line for line in said if line and not re.match(r"(code|syscall|errno) ", line)), "failed")
        raise UserError(f"npm pack {PACKAGE}@{VERSION}: {reason.strip()} (check `npm config get registry`)")
    return folder / TARBALL


def tarball() -> Path:
    """The pinned tarball in the cache, fetched with npm when it is not there yet; checked either way."""
    cached = cached_path()
    if cached.exists():
        verify(cached, str(cached))
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".npm-pack-") as tmp:
        packed = pack(Path(tmp))
        verify(packed, f"npm pack {PACKAGE}@{VERSION}")
        os.replace(packed, cached)
    return cached


def copy_files(dest: Path, checked: Path) -> list[Path]:
    """Write the page's ONNX Runtime Web files into ``dest``, read from ``checked`` (what ``tarball`` gave)."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(checked, "r:gz") as archive:
        for name in FILES:
            member = archive.extractfile(f"package/dist/{name}")
            assert member is not None, f"{TARBALL} lacks dist/{name}"  # the pinned, checked tarball has it
            (dest / name).write_bytes(member.read())
            written.append(dest / name)
    return written
