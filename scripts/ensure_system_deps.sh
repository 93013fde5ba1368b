#!/usr/bin/env bash
# Install the Debian packages Cortex's tests need, and only those that are missing.
# Fast when everything is present: no apt-get call at all, not even `apt-get update`.
#
#   CORTEX_NEED_BROWSER=1   chromium (+ fonts, so screenshots show text, not boxes)
#   CORTEX_NEED_HAPROXY=1   haproxy
#   CORTEX_NEED_PROMTOOL=1  promtool (checks /metrics in the tests), taken out of Debian's
#                           prometheus package into /usr/local/bin: the server, its
#                           service and its ~90 MB of web assets are not installed
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

promtool_from_debian() {
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    echo "ensure_system_deps: extracting promtool from Debian's prometheus package"
    # As the caller, not apt's sandbox user: that one cannot write into our temp dir.
    (cd "$tmp" && apt-get -q -o APT::Sandbox::User="$(id -un)" download prometheus >/dev/null)
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]+"${sudo[@]}"}" install -m 0755 "$tmp/x/usr/bin/promtool" /usr/local/bin/promtool
    echo "ensure_system_deps: installed /usr/local/bin/promtool ($(promtool --version 2>&1 | head -1))"
}

if [[ "${CORTEX_NEED_PROMTOOL:-0}" == 1 ]] && ! command -v promtool >/dev/null 2>&1; then
    promtool_from_debian
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
