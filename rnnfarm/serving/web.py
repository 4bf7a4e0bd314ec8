"""``rnnfarm export --format web``: a static folder whose page writes text in the browser, offline.

The folder is the ONNX export (``export.py``) plus ``index.html`` (this package's ``page.html``, as it is)
and ONNX Runtime Web's wasm backend in ``ort/`` (``npm.py``). The page reads only files in its folder, so
it runs from any static host, or from file:// where the browser lets a page read its own folder.
"""

from __future__ import annotations

import os
import shutil
import uuid
from importlib import resources
from pathlib import Path

from . import export as onnx
from . import npm

PAGE, RUNTIME = "index.html", "ort"


def export(target: str, out: str | Path, *, options: dict | None = None, trial: str | None = None) -> onnx.Exported:
    """Export the model ``target`` names (see ``export.export``) with the page and its runtime into ``out``."""
    out = Path(out)
    runtime = npm.tarball()  # first, so a missing npm or a wrong tarball stops the export before it writes
    exported = onnx.export(target, out, options=options, trial=trial)
    stage = out / f".{RUNTIME}.{uuid.uuid4().hex[:12]}"
    try:
        npm.copy_files(stage, runtime)
        shutil.rmtree(out / RUNTIME, ignore_errors=True)
        os.replace(stage, out / RUNTIME)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    page = out / f".{PAGE}.{uuid.uuid4().hex[:12]}"
    page.write_bytes(resources.files(__package__).joinpath("page.html").read_bytes())
    os.replace(page, out / PAGE)  # last: a folder with its page holds everything the page reads
    return exported
