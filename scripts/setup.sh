#!/usr/bin/env bash
# Installs what blastwall needs on Debian/Ubuntu and the package itself into .venv.
# Usage: scripts/setup.sh [test]   ("test" also installs the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc and libc6-dev build the small in-sandbox launcher at install time.  The VM tier: QEMU,
# Debian's packaged kernel for the guest (its modules go into blastwall's initramfs with
# busybox), erofs-utils to turn an image into the guest's read-only root disk.
PACKAGES=(bubblewrap libseccomp2 socat gcc libc6-dev git curl ca-certificates python3 python3-venv util-linux iproute2 openssl
          runsc mmdebstrap nftables
          qemu-system-x86 linux-image-amd64 busybox-static erofs-utils)

# The tests also attack a real server that routes on the request line and virtual hosts: Debian's nginx,
# and keep the service's state in a real PostgreSQL: both started by the tests themselves in temporary
# directories (never as system services: see policy-rc.d below).
[ "${1:-}" = "test" ] && PACKAGES+=(nginx postgresql)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # Packages with a daemon (nginx) must not start one: the tests run their own on loopback.
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT
        fi
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: please install these packages first, then run this again:" >&2
        echo "  sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

# Python >= 3.11 (Ubuntu 22.04 ships 3.10; its python3.11 package works).
PYTHON=""
for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        PYTHON="$(command -v "$candidate")"
        break
    fi
done
if [ -z "$PYTHON" ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq python3.11 python3.11-venv >/dev/null
        PYTHON="$(command -v python3.11)"
    else
        echo "setup: blastwall needs Python >= 3.11: sudo apt-get install python3.11 python3.11-venv" >&2
        exit 1
    fi
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# The service extra (FastAPI, uvicorn, requests) is for `blastwall serve` and the SDK's remote backend;
# postgres (psycopg 3) for a service whose state is in PostgreSQL; cluster (Ray) for sandboxes on a cluster.
extra="[service]"
[ "${1:-}" = "test" ] && extra="[service,postgres,cluster,test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"

# The official MCP SDK, for the tests that drive `blastwall mcp` as a real client would.  Its own
# environment: its HTTP stack pins h11 >= 0.16, which mitmproxy 11 (the gateway, in .venv) cannot run with.
if [ "${1:-}" = "test" ]; then
    [ -x .venv-mcp/bin/python ] || "$PYTHON" -m venv .venv-mcp
    .venv-mcp/bin/python -m pip install -q --disable-pip-version-check "mcp>=1.9,<2"
fi
