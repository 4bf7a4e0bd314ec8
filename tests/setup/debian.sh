#!/usr/bin/env bash
# Installs the Debian packages whose files the corpus tests read: the TeX Live science documentation
# (real .tex files) and the Linux kernel source tarball. Idempotent and quick when they are present;
# `apt-get update` runs only when a package cannot be had from the current lists.
set -euo pipefail

packages=(texlive-science-doc linux-source)
missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "tests/setup/debian.sh: needs apt-get to install ${missing[*]} (a Debian or Ubuntu machine)" >&2
  exit 1
fi
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
install() {
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -q --no-install-recommends \
    -o DPkg::Lock::Timeout=600 "${missing[@]}"
}
echo "installing ${missing[*]} for the corpus tests" >&2
install || { "${as_root[@]}" apt-get update -q && install; }
