#!/bin/bash
# Pack the release archives that the Ansible roles and the cloud-init user-data install:
#   OUTDIR/unlockd-agent.tar.gz   host side: unlockd-agent.mjs, koffi (fscrypt, sd-notify), systemd units
#   OUTDIR/unlockd-server.tar.gz  escrow server: unlockd.mjs (all verbs) and its runtime node_modules
# Run `npm run build` first. Archives are reproducible (sorted, fixed mtime and owner, gzip -n),
# so packing the same build twice gives the same checksum and a re-run of a role changes nothing.
# usage: provisioning/pack.sh [OUTDIR]   (default: dist/)
set -euo pipefail

unlockd_die() { echo "pack.sh: $*" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)
cd "$ROOT"
if [ ! -f dist/unlockd-agent.mjs ] || [ ! -f dist/unlockd.mjs ]; then
  unlockd_die "dist/ is missing the bundles: run npm run build"
fi
[ -d node_modules/koffi ] || unlockd_die "node_modules/koffi is missing: run npm ci"

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

# koffi ships prebuilt binaries for every OS; Linux hosts need only the linux_* and musl_* ones.
unlockd_copy_koffi() {
  local dest=$1/node_modules/koffi
  mkdir -p "$dest/build/koffi"
  cp -a node_modules/koffi/package.json node_modules/koffi/index.js node_modules/koffi/indirect.js \
    node_modules/koffi/LICENSE.txt "$dest/"
  [ -d node_modules/koffi/lib ] && cp -a node_modules/koffi/lib "$dest/"
  cp -a node_modules/koffi/build/koffi/linux_* node_modules/koffi/build/koffi/musl_* "$dest/build/koffi/"
}

unlockd_copy_units() {
  mkdir -p "$1/systemd"
  local f found=0
  for f in "${@:2}"; do
    [ -f "$f" ] || continue
    cp -a "$f" "$1/systemd/"
    found=1
  done
  [ "$found" = 1 ] || echo "pack.sh: warning: no unit files found for $1 (systemd/ is empty)" >&2
}

unlockd_tar() {
  local src=$1 out=$2
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --mode='u+rwX,go+rX,go-w' \
    -C "$src" -cf - . | gzip -9 -n > "$out.tmp"
  mv "$out.tmp" "$out"
  (cd "$(dirname "$out")" && sha256sum "$(basename "$out")") > "$out.sha256"
}

# Agent: the self-contained host bundle plus koffi.
A=$STAGE/agent
mkdir -p "$A"
cp dist/unlockd-agent.mjs "$A/"
unlockd_copy_koffi "$A"
unlockd_copy_units "$A" systemd/unlockd-agent.service systemd/unlockd-agent.path systemd/unlockd-agent-askpass.service
node -p 'require("./package.json").version' > "$A/VERSION"
unlockd_tar "$A" "$OUT/unlockd-agent.tar.gz"

# Server: the full bundle keeps npm packages external, so ship the runtime dependency closure.
# typescript shows up only as an optional peer of a runtime package; it is not needed to run.
S=$STAGE/server
mkdir -p "$S/node_modules"
cp dist/unlockd.mjs "$S/"
npm ls --omit=dev --omit=peer --all --parseable 2>/dev/null | sed "s|^$ROOT/||" \
  | grep '^node_modules/' | grep -v -e '^node_modules/typescript$' -e '^node_modules/koffi$' | sort -u \
  | while read -r pkg; do
      mkdir -p "$S/$(dirname "$pkg")"
      [ -e "$S/$pkg" ] || cp -a "$pkg" "$S/$pkg"
    done
[ -f "$S/node_modules/better-sqlite3/build/Release/better_sqlite3.node" ] || unlockd_die "better-sqlite3 has no native build in node_modules"
unlockd_copy_koffi "$S"
unlockd_copy_units "$S" systemd/unlockd-server.service
node -p 'require("./package.json").version' > "$S/VERSION"
unlockd_tar "$S" "$OUT/unlockd-server.tar.gz"

echo "packed $OUT/unlockd-agent.tar.gz ($(du -h "$OUT/unlockd-agent.tar.gz" | cut -f1)) and $OUT/unlockd-server.tar.gz ($(du -h "$OUT/unlockd-server.tar.gz" | cut -f1))"
