#!/bin/sh
# tmux (Debian's package) for the tests that run rnnfarm on a real terminal and read its screen. Safe to run again.
set -eu
if command -v tmux >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo -n"
else
    SUDO=""
fi
echo "installing tmux (Debian package) for the terminal tests" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends tmux >/dev/null
command -v tmux >/dev/null
