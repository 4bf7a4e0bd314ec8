#!/usr/bin/env bash
# Installs the Debian packages the tests use: the TeX Live science documentation (real .tex files) and the
# Linux kernel source tarball, which the corpus tests read; headless Chromium (and a font) for the tests
# that render rnnfarm's HTML pages; npm for `rnnfarm export --format web`, which fetches onnxruntime-web
# with `npm pack`; tmux for the tests that run rnnfarm on a real terminal and read its screen.
# Idempotent and quick when they are present; `apt-get update` runs only when a package cannot be had
# from the current lists.
set -euo pipefail

# Packages of files are looked for with dpkg; those of a command, by the command (npm, say, may come from
# elsewhere, as with Node.js's own packages, and Debian's npm conflicts with those).
files=(texlive-science-doc linux-source fonts-dejavu-core)
commands=(chromium npm tmux)
missing=()
for package in "${files[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
for command in "${commands[@]}"; do
  command -v "$command" >/dev/null || missing+=("$command")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "tests/setup/debian.sh: needs apt-get to install ${missing[*]} (a Debian or Ubuntu machine)" >&2
  exit 1
fi
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo -n)
install() {
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -q --no-install-recommends \
    -o DPkg::Lock::Timeout=600 "${missing[@]}"
}
echo "installing ${missing[*]} for the tests" >&2
install || { "${as_root[@]}" apt-get update -q && install; }
