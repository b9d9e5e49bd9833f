#!/bin/bash
# Installs what Corral needs on Debian 12, idempotently: Debian packages (QEMU, libvirt,
# etcd, the guest's ingredients, Chromium and tesseract for the web console's browser test), a
# Python venv in .venv with Corral installed editable, and from the npm registry into .local/:
# the buf CLI (linting the protos) and noVNC (the controller's web VNC console serves it).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
          etcd-server etcd-client busybox-static cpio e2fsprogs genisoimage python3-venv python3-dev gcc iproute2 nftables
          qemu-guest-agent libnss-wrapper ovmf chromium tesseract-ocr)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# apt-get download (the guest builder) needs package lists even when nothing was missing.
[[ -n $(ls /var/lib/apt/lists/ 2>/dev/null | grep -v lock | head -1) ]] || apt-get update -qq

# Debian's own Python, as on a real node: VM users (per-VM isolation) must be able to read the
# interpreter and its standard library, which a Python under /root would not allow.
python=/usr/bin/python3
[[ -x $python ]] || python=python3
if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
fi
mkdir -p .local
if ! .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' >.local/pip.log 2>&1; then
    cat .local/pip.log >&2
    exit 1
fi

# The fence guard, preloaded into every guest's QEMU (corral/fence_guard.py): root-owned, as the
# handler insists, since every VM's QEMU loads it.
guard=/usr/local/lib/corral/fence-guard.so
install -d -m 0755 -o root -g root "$(dirname "$guard")"
gcc -O2 -Wall -Wextra -Werror -shared -fPIC -pthread -o .local/fence-guard.so launcher/fence_guard.c
install -m 0644 -o root -g root .local/fence-guard.so "$guard"

# Post-copy migration: the target's QEMU runs as the VM's unprivileged user and needs
# userfaultfd (QEMU 7.2 has no /dev/userfaultfd support; handler/userfaultfd.py checks at start).
echo vm.unprivileged_userfaultfd=1 > /etc/sysctl.d/60-corral-postcopy.conf
sysctl -q -w vm.unprivileged_userfaultfd=1 || echo "install: cannot set vm.unprivileged_userfaultfd (post-copy stays off)" >&2

if [[ ! -x .local/node_modules/.bin/buf ]]; then
    mkdir -p .local
    (cd .local && npm install --silent --no-audit --no-fund @bufbuild/buf >/dev/null)
fi
if [[ ! -f .local/node_modules/@novnc/novnc/core/rfb.js ]]; then
    (cd .local && npm install --silent --no-audit --no-fund @novnc/novnc@^1.6 >/dev/null)
fi
echo "install: done"
