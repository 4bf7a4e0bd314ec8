"""bench/gpu_carry.py's offline check of the GPU carry, and its slim Ray wheel, on small wheels made here: a
requirement is met only by a carried wheel, the machine's package in a fitting version, or a listed exclusion;
markers are read for the target Python and extras are followed."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import bench_script


@pytest.fixture(scope="module")
def carry():
    return bench_script("gpu_carry.py", "gpu_carry")


def wheel(folder: Path, name: str, version: str, requires: list[str], files: dict[str, str] | None = None) -> Path:
    """A pure wheel holding ``files`` and METADATA with ``requires``; its RECORD lists every file."""
    info = f"{name}-{version}.dist-info"
    meta = [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}"] + [f"Requires-Dist: {r}" for r in requires]
    contents = {**(files or {}), f"{info}/METADATA": "\n".join(meta) + "\n"}
    contents[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    contents[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in contents) + f"{info}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for member, text in contents.items():
            z.writestr(member, text)
    return path


def checked(carry, tmp_path: Path, wheels: dict[str, tuple[str, list[str]]], image: str, python="3.12"):
    (tmp_path / "wheels").mkdir()
    for name, (version, requires) in wheels.items():
        wheel(tmp_path / "wheels", name, version, requires)
    listed = tmp_path / "image.txt"
    listed.write_text("# the machine\n" + image)
    return carry.Walk(carry.carried_in(tmp_path), carry.read_image(listed), {}, carry.target_env(python)).run()


RNNFARM = ["torch>=2.4", "ray[serve]==2.60.0", "s3fs>=2024.2", "numpy>=1.26", 'tomli>=2; python_version < "3.11"']
RAY = ["click>=7", 'fastapi>=0.1; extra == "serve"', 'memray; extra == "observability"']


def test_every_requirement_is_met_by_the_carry_the_machines_packages_or_an_exclusion(carry, tmp_path):
    wheels = {"rnnfarm": ("0.1.0", RNNFARM), "ray": ("2.60.0", RAY), "fastapi": ("0.1.0", ["pydantic"])}
    check = checked(carry, tmp_path, wheels, "torch 2.11.0\nnumpy 2.5.2\nclick\npydantic\n")
    assert check.unmet == []
    text = "\n".join(check.lines)
    assert "ray[serve]==2.60.0" in text and "carried 2.60.0" in text
    assert "fastapi>=0.1" in text and "(by ray[serve])" in text  # the extra asked for is followed...
    assert "memray" not in text  # ...and no other
    assert "tomli" not in text  # its marker is false on the target Python
    assert "s3fs>=2024.2" in text and "left out: S3 storage only" in text
    assert "the machine's torch 2.11.0" in text and "the machine's click (its version not listed)" in text
    assert check.counts == {"carried": 2, "image": 2, "unread": 2, "excluded": 1}


def test_a_machine_package_in_a_version_outside_the_range_or_a_requirement_nothing_meets_is_unmet(carry, tmp_path):
    wheels = {"rnnfarm": ("0.1.0", RNNFARM), "ray": ("2.60.0", RAY)}  # fastapi is not carried
    check = checked(carry, tmp_path, wheels, "torch 2.11.0\nnumpy 1.21.0\nclick\n")
    assert sorted(check.unmet) == [
        'fastapi>=0.1; extra == "serve" (by ray[serve]): neither carried, on the machine, nor left out',
        "numpy>=1.26 (by rnnfarm): neither carried, on the machine, nor left out",
    ]


def test_markers_are_read_for_the_target_python(carry, tmp_path):
    wheels = {"rnnfarm": ("0.1.0", RNNFARM), "ray": ("2.60.0", RAY), "fastapi": ("0.1.0", [])}
    check = checked(carry, tmp_path, wheels, "torch 2.11.0\nnumpy 2.5.2\nclick\n", python="3.10")
    (unmet,) = check.unmet
    assert unmet == 'tomli>=2; python_version < "3.11" (by rnnfarm): neither carried, on the machine, nor left out'


def test_the_slim_ray_wheel_drops_its_folders_lists_only_what_stays_and_installs_offline(carry, tmp_path):
    files = {
        "ray/__init__.py": "",
        "ray/jars/ray_dist.jar": "java",
        "ray/rllib/__init__.py": "rl",
        "ray/dashboard/client/build/index.html": "<html>",
        "ray/dashboard/client/build/static/css/main.css": "",
        "ray/dashboard/client/build/static/js/main.js": "script",
    }
    path = wheel(tmp_path, "ray", "2.60.0", [], files)
    dropped = carry.slim_ray(path)
    assert dropped["ray/jars/"] > 0 and dropped["ray/rllib/"] > 0
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        record = z.read("ray-2.60.0.dist-info/RECORD").decode()
    kept = {"ray/__init__.py", *(f"ray/dashboard/client/build/{f}" for f in ("index.html", "static/css/main.css"))}
    assert {n for n in names if not n.startswith("ray-2.60.0.dist-info")} == kept  # the page's folder stays
    assert {row.split(",")[0] for row in record.splitlines()} == names
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(target)]
    subprocess.run([*pip, str(path)], check=True, timeout=120)
    assert (target / "ray" / "__init__.py").exists() and not (target / "ray" / "jars").exists()
