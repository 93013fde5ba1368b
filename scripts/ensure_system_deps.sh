#!/usr/bin/env bash
# Install the Debian packages Cortex's tests need, and only those that are missing.
# Fast when everything is present: no apt-get call at all, not even `apt-get update`.
#
#   CORTEX_NEED_BROWSER=1   chromium (+ fonts, so screenshots show text, not boxes)
#   CORTEX_NEED_HAPROXY=1   haproxy
#
# PostgreSQL has its own script (scripts/ensure_postgres.sh) because it must also be running.
set -euo pipefail

want=()   # "package:command" pairs; command is what proves the package is usable

if [[ "${CORTEX_NEED_BROWSER:-0}" == 1 ]]; then
    want+=("chromium:chromium" "fonts-liberation:")
fi
if [[ "${CORTEX_NEED_HAPROXY:-0}" == 1 ]]; then
    want+=("haproxy:haproxy")
fi

installed() {   # a package counts as present when its command is on PATH or dpkg has it
    local pkg=$1 cmd=$2
    if [[ -n "$cmd" ]] && command -v "$cmd" >/dev/null 2>&1; then
        return 0
    fi
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for entry in "${want[@]+"${want[@]}"}"; do
    pkg=${entry%%:*}
    cmd=${entry#*:}
    installed "$pkg" "$cmd" || missing+=("$pkg")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "ensure_system_deps: nothing missing${want[*]:+ (${want[*]%%:*})}"
    exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "ensure_system_deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
fi

echo "ensure_system_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Another apt run (a colleague's, unattended-upgrades) may hold the lock; wait rather than fail.
apt_opts=(-o DPkg::Lock::Timeout=300 -y -q)
"${sudo[@]+"${sudo[@]}"}" apt-get "${apt_opts[@]}" update
"${sudo[@]+"${sudo[@]}"}" apt-get "${apt_opts[@]}" install --no-install-recommends "${missing[@]}"
echo "ensure_system_deps: installed ${missing[*]}"
