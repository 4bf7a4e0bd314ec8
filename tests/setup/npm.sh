#!/bin/sh
# npm (Debian's package) for `rnnfarm export --format web`, which fetches onnxruntime-web with `npm pack`
# through the user's npm configuration. Safe to run again.
set -eu
if command -v npm >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo -n"
else
    SUDO=""
fi
echo "installing npm (Debian package) for the web export tests" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
command -v npm >/dev/null
