#!/usr/bin/env bash
# `npm test`: build the bundles, then run every ava suite in turn (unit/integration/system,
# provisioning, QEMU boot, Debian packages), each one even when an earlier one failed, and exit non-zero when
# any failed. Each suite prints ava's own summary ("N tests passed", "N tests failed", ...),
# which .ci/run adds up. A failed build stops here: every suite needs the bundles in dist/.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

if ! node tools/build.mjs; then
  echo "test-all: the build failed; no suite was run" >&2
  exit 1
fi

ava=node_modules/.bin/ava
failed=()
suite() { # NAME AVA-ARGS...
  local name=$1
  shift
  echo
  echo "=== test-all: suite $name"
  "$ava" "$@" || failed+=("$name")
}

suite main
suite provisioning test/provisioning/*.test.ts
suite boot --config ava.boot.config.js
suite packaging --config ava.packaging.config.js

echo
if ((${#failed[@]} > 0)); then
  echo "test-all: suites that failed: ${failed[*]}" >&2
  exit 1
fi
echo "test-all: every suite passed"
