#!/usr/bin/env bash
# Install everything the test suites need on Debian 12 (as root), start a throwaway PostgreSQL
# on 127.0.0.1, build, and run every suite: unit/integration/system (npm test), provisioning and
# the QEMU boot tests. Prints one closing line: "N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  # LUKS2, fscrypt, loop mounts, sd-notify checks
  cryptsetup-bin fscrypt e2fsprogs util-linux kmod socat systemd
  # Tang peers and stock clevis clients (compatibility tests and benchmarks)
  tang clevis clevis-luks jose curl jq
  # PostgreSQL store
  postgresql postgresql-client
  # browser test of the approval page
  chromium
  # boot tests: QEMU (TCG), debootstrap chroot with initramfs-tools, shellcheck
  qemu-system-x86 debootstrap cpio busybox-static shellcheck xz-utils
  # provisioning tests
  ansible ansible-lint cloud-init openssl
)
if [[ "$(id -u)" == 0 ]]; then
  export DEBIAN_FRONTEND=noninteractive
  missing=()
  for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  if ((${#missing[@]})); then
    echo "[test-all] apt-get install ${missing[*]}" >&2
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
  fi
else
  echo "[test-all] not root: skipping apt-get; root-only tests will skip (loudly)" >&2
fi

npm ci --no-audit --no-fund
# shellcheck source=.ci/pg.sh
source .ci/pg.sh
export UNLOCKD_TEST_PG_URL

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
run_suite() {
  echo "[test-all] === $* ===" >&2
  "$@" 2>&1 | tee -a "$log" || status=1
}
run_suite npm test
if grep -q '"test:provisioning"' package.json; then run_suite npm run test:provisioning; fi
if grep -q '"test:boot"' package.json; then run_suite npm run test:boot; fi

# Sum ava's summary lines ("12 tests passed", "1 test failed", "2 tests skipped", "1 uncaught exception").
count() { { grep -Eo "^ *[0-9]+ $1" "$log" || true; } | awk '{s+=$1} END {print s+0}'; }
passed=$(count 'tests? passed')
failed=$(( $(count 'tests? failed') + $(count 'uncaught exceptions?') + $(count 'unhandled rejections?') ))
skipped=$(count 'tests? skipped')
if [[ $status != 0 && $failed == 0 ]]; then failed=1; fi
echo "${passed} passed, ${failed} failed, ${skipped} skipped"
exit "$status"
