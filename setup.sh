#!/usr/bin/env bash
# One command on a fresh Debian 12 machine, as root: installs everything ctrun needs (Debian
# packages, a venv from /usr/bin/python3, /usr/local/bin/ctrun, the built-in image, the
# peer runtimes the benchmarks compare against, QEMU and the guest kernel for --vm) and
# then runs the demo container.
# `setup.sh --no-demo` installs only (the test command uses that).  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${CTRUN_VENV:-/opt/ctrun/venv}
DEBS=(busybox-static tini python3-venv python3-dev python3-seccomp gcc libc6-dev libcap-dev
      libseccomp2 iproute2 procps nftables python3-nftables iperf3 zstd debootstrap
      runc crun umoci skopeo conmon podman docker-registry apache2-utils
      qemu-system-x86 qemu-utils linux-image-cloud-amd64 lz4 cpio e2fsprogs
      python3-matplotlib python3-jsonschema)

if [ "$(id -u)" != 0 ]; then echo "setup.sh: run as root (sudo ./setup.sh)" >&2; exit 1; fi
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo ">> installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --system-site-packages: Debian's python3-seccomp (libseccomp's own binding) is not on PyPI
if [ ! -x "$VENV/bin/python" ]; then
  echo ">> creating $VENV from /usr/bin/python3"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
if ! "$VENV/bin/python" -c 'import prctl, cgroupspy, pyroute2, pytest, wheel, qemu.qmp' 2>/dev/null; then
  echo ">> installing Python dependencies into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check python-prctl cgroupspy pyroute2 pytest wheel \
      qemu.qmp
fi
# a regular (not editable) install: compiled once, and no import hook at every start-up
stamp=$(find ctrun images setup.cfg pyproject.toml -type f \( -name '*.py' -o -name '*.json' \
        -o -name '*.cfg' -o -name '*.toml' -o -name '*.c' \) -print0 | sort -z | xargs -0 sha1sum | sha1sum)
if [ "$stamp" != "$(cat "$VENV/.ctrun-stamp" 2>/dev/null)" ]; then
  echo ">> installing ctrun into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation \
      --force-reinstall . 2>&1 | grep -v -i "warning" || true
  rm -rf build ctrun.egg-info
  echo "$stamp" > "$VENV/.ctrun-stamp"
fi
ln -sf "$VENV/bin/ctrun" /usr/local/bin/ctrun

ctrun image build busybox >/dev/null
echo ">> ctrun is installed: $(command -v ctrun)"
if [ "${1:-}" != "--no-demo" ]; then
  ctrun demo
fi
