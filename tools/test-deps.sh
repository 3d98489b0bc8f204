#!/usr/bin/env bash
# Install everything the test suites need on Debian 12 (as root): Debian packages, the npm
# packages (npm ci), and a throwaway PostgreSQL on 127.0.0.1 whose URL goes to .tmp/pg-url
# (0600), where the PostgreSQL tests find it. Then `npm test` runs every suite.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  # LUKS2, fscrypt, loop mounts, sd-notify checks
  cryptsetup-bin fscrypt e2fsprogs util-linux kmod socat systemd
  # Tang peers and stock clevis clients (compatibility tests and benchmarks); tang's own test
  # scripts (fetched with apt-get source at test time) also need ss and the archive keyring
  tang clevis clevis-luks jose curl jq iproute2 debian-archive-keyring
  # man pages and shell completion checks
  man-db zsh
  # xattr checks of the in-place encryption tests
  attr
  # Debian packages: build (dpkg-shlibdeps, strip), check (lintian), install into a chroot
  dpkg-dev binutils lintian
  # the metrics test reads /metrics with Prometheus's own text-format parser
  python3-prometheus-client
  # PostgreSQL store
  postgresql postgresql-client
  # browser test of the approval page
  chromium
  # boot tests: QEMU (TCG), debootstrap chroot with initramfs-tools, shellcheck
  qemu-system-x86 debootstrap cpio busybox-static shellcheck xz-utils
  # the systemd guest disk of the VM tests (test/vm/build-guest.sh): GPT partitions
  gdisk
  # provisioning tests
  ansible ansible-lint cloud-init openssl
)
if [[ "$(id -u)" == 0 ]]; then
  export DEBIAN_FRONTEND=noninteractive
  missing=()
  for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  if ((${#missing[@]})); then
    echo "[test-deps] apt-get install ${missing[*]}" >&2
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
  fi
else
  echo "[test-deps] not root: skipping apt-get; root-only tests will skip (loudly)" >&2
fi

npm ci --no-audit --no-fund
pg_url="$(bash .ci/pg.sh)"
mkdir -p .tmp
(umask 077 && printf '%s\n' "$pg_url" > .tmp/pg-url)
echo "[test-deps] PostgreSQL for the tests: see .tmp/pg-url" >&2

