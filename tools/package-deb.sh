#!/bin/bash
# Build the Debian packages unlockd-agent and unlockd-server with dpkg-deb (no network, no
# debhelper): the maintainer scripts below are hand-written equivalents of what dh_installsystemd
# and dh_installinit generate. Run `npm run build` first (npm run package:deb does both).
#
#   OUTDIR/unlockd-agent_VERSION_ARCH.deb   host side, runs on the distribution's nodejs (>= 18.19)
#   OUTDIR/unlockd-server_VERSION_ARCH.deb  escrow server with its own Node.js 20 (see debian/README.Debian)
#
# usage: tools/package-deb.sh [OUTDIR]     (default: dist/deb/)
# Environment: UNLOCKD_DEB_COMPRESSION  xz (default), gzip or none (the package test uses none:
#              compressing the server's 96 MB takes minutes on a busy machine)
#              UNLOCKD_DEB_MAINTAINER  the Maintainer field (name <address>)
#              UNLOCKD_SERVER_NODE  the Node.js binary to carry in unlockd-server (default: the
#              node running the build, which is the one node_modules' native addons were built for)
set -euo pipefail

die() { echo "package-deb: $*" >&2; exit 1; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mkdir -p "${1:-$ROOT/dist/deb}" && cd "${1:-$ROOT/dist/deb}" && pwd)
DEB=$ROOT/tools/debian
cd "$ROOT"

for tool in dpkg-deb dpkg-shlibdeps strip node npm gzip; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install dpkg-dev binutils)"
done
if [ ! -f dist/unlockd-agent.mjs ] || [ ! -f dist/unlockd.mjs ]; then
  die "dist/ is missing the bundles: run npm run build"
fi
[ -d node_modules/koffi ] || die "node_modules/koffi is missing: run npm ci"

VERSION=$(node -p 'require("./package.json").version')
MAINTAINER=${UNLOCKD_DEB_MAINTAINER:-unlockd maintainers <maintainers@unlockd.example.org>}
ARCH=$(dpkg --print-architecture)
# koffi's prebuilt directory for this architecture (the other 17 are pruned).
case "$ARCH" in
amd64) KOFFI=linux_x64 ;;
arm64) KOFFI=linux_arm64 ;;
armhf) KOFFI=linux_armhf ;;
i386) KOFFI=linux_ia32 ;;
riscv64) KOFFI=linux_riscv64d ;;
loong64) KOFFI=linux_loong64 ;;
*) die "no koffi build for Debian architecture $ARCH" ;;
esac
[ -d "node_modules/koffi/build/koffi/$KOFFI" ] || die "node_modules/koffi has no $KOFFI build"

SERVER_NODE=${UNLOCKD_SERVER_NODE:-$(node -p process.execPath)}
[ -x "$SERVER_NODE" ] || die "$SERVER_NODE is not executable (UNLOCKD_SERVER_NODE)"
"$SERVER_NODE" -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' \
  || die "$SERVER_NODE is Node.js $("$SERVER_NODE" --version); unlockd-server needs 20.19 or newer (UNLOCKD_SERVER_NODE)"
# The native addons in node_modules were built by npm for one ABI; the carried node must match it.
[ "$("$SERVER_NODE" -p process.versions.modules)" = "$(node -p process.versions.modules)" ] \
  || die "$SERVER_NODE has another module ABI than the node that installed node_modules: run npm ci with it"

# Reproducible: fixed mtimes (dpkg-deb clamps to SOURCE_DATE_EPOCH), sorted tar, gzip -n.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

# --- helpers ---------------------------------------------------------------------------------

# Strip like dh_strip: ELF objects lose debug info and unneeded symbols (dynamic ones stay).
strip_elf() {
  local f
  while IFS= read -r -d '' f; do
    if head -c 4 "$f" | grep -q 'ELF'; then
      strip --remove-section=.comment --remove-section=.note --strip-unneeded "$f"
    fi
  done < <(find "$1" -type f \( -name '*.node' -o -name '*.so' -o -name '*.so.*' -o -perm -u+x \) -print0)
}

# Copy koffi with only this architecture's prebuilt binary (its lib/ holds C++ sources only).
copy_koffi() {
  local dest=$1/node_modules/koffi
  mkdir -p "$dest/build/koffi"
  cp -a node_modules/koffi/package.json node_modules/koffi/index.js node_modules/koffi/indirect.js \
    node_modules/koffi/LICENSE.txt "$dest/"
  cp -a "node_modules/koffi/build/koffi/$KOFFI" "$dest/build/koffi/"
}

# npm leaves modes as the tarballs had them: addons are loaded, not run (0644), and the npm
# packages' own command-line scripts (#!/usr/bin/env node) are never run from here.
fix_modes() {
  find "$1" -type f -perm /111 ! -name node -exec chmod a-x {} +
}

# Debian changelog for a native package (lintian wants one, gzip -9n).
install_man() { # TREE PAGE: gzip a page from dist/man into TREE's man directory
  local sec=${2##*.}
  [ -f "$2" ] || die "$2 is missing: run npm run build first"
  mkdir -p "$1/usr/share/man/man$sec"
  gzip -9n < "$2" > "$1/usr/share/man/man$sec/${2##*/}.gz"
}

write_changelog() {
  local pkg=$1 dir=$2
  mkdir -p "$dir"
  {
    printf '%s (%s) unstable; urgency=medium\n\n' "$pkg" "$VERSION"
    printf '  * Built from the unlockd source tree with tools/package-deb.sh.\n\n'
    printf ' -- %s  %s\n' "$MAINTAINER" \
      "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
  } | gzip -9n > "$dir/changelog.gz"
}

# Shared-library dependencies of the ELF files in a tree, as dpkg-shlibdeps computes them.
shlibs_of() {
  local tree=$1 work files
  work=$(mktemp -d)
  mapfile -t files < <(find "$tree" -type f \( -name '*.node' -o -perm -u+x \) -exec sh -c 'head -c 4 "$1" | grep -q ELF' _ {} \; -print)
  [ "${#files[@]}" -gt 0 ] || { rm -rf "$work"; return 0; }
  mkdir -p "$work/debian"
  printf 'Source: unlockd\n\nPackage: x\nArchitecture: any\n' > "$work/debian/control"
  # Private libraries of the addons (none today) would be resolved from the tree.
  (cd "$work" && dpkg-shlibdeps -O --ignore-missing-info "${files[@]}" 2>/dev/null) \
    | sed -n 's/^shlibs:Depends=//p'
  rm -rf "$work"
}

# Maintainer scripts from templates: #UNITS# and friends are filled in, as debhelper does.
install_scripts() {
  local pkg=$1 control=$2 s
  for s in postinst prerm postrm preinst; do
    [ -f "$DEB/$pkg.$s" ] || continue
    install -m 0755 "$DEB/$pkg.$s" "$control/$s"
  done
  if [ -f "$DEB/$pkg.triggers" ]; then install -m 0644 "$DEB/$pkg.triggers" "$control/triggers"; fi
}

# Every file under /etc is a conffile.
write_conffiles() {
  local tree=$1 control=$2
  if [ -d "$tree/etc" ]; then
    (cd "$tree" && find etc -type f | sort | sed 's|^|/|') > "$control/conffiles"
    [ -s "$control/conffiles" ] || rm -f "$control/conffiles"
  fi
}

write_control() { # PKG TREE CONTROL DEPENDS [extra fields file]
  local pkg=$1 tree=$2 control=$3 depends=$4 size
  size=$(du -sk --apparent-size "$tree" | cut -f1)
  {
    printf 'Package: %s\nVersion: %s\nArchitecture: %s\n' "$pkg" "$VERSION" "$ARCH"
    printf 'Maintainer: %s\n' "$MAINTAINER"
    printf 'Installed-Size: %s\n' "$size"
    printf 'Depends: %s\n' "$depends"
    cat "$DEB/$pkg.control"
  } > "$control/control"
  (cd "$tree" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) > "$control/md5sums"
}

build_deb() {
  local tree=$1 pkg=$2 out
  out="$OUT/${pkg}_${VERSION}_${ARCH}.deb"
  dpkg-deb --root-owner-group "-Z${UNLOCKD_DEB_COMPRESSION:-xz}" --build "$tree" "$out.tmp" >/dev/null
  mv "$out.tmp" "$out"
  echo "built $out ($(du -h "$out" | cut -f1))"
}

# --- unlockd-agent ---------------------------------------------------------------------------
A=$STAGE/unlockd-agent
mkdir -p "$A/DEBIAN"
# The initramfs hooks, boot scripts and dracut module, placed by their own installer (whatever
# files it installs today, e.g. a shared functions file, come along). Packages keep hooks under
# /usr/share/initramfs-tools: /etc/initramfs-tools is the administrator's, and a hook left there
# after `apt-get remove` would stop update-initramfs (the bundle it runs is gone).
for flavour in initramfs-tools dracut; do
  initramfs-hooks/install.sh --root "$A" --bundle dist/unlockd-agent.mjs "$flavour" >/dev/null
done
mkdir -p "$A/usr/share/initramfs-tools"
for d in hooks scripts; do
  if [ -d "$A/etc/initramfs-tools/$d" ]; then
    cp -a "$A/etc/initramfs-tools/$d" "$A/usr/share/initramfs-tools/"
    rm -rf "$A/etc/initramfs-tools/$d"
  fi
done
[ -x "$A/usr/share/initramfs-tools/hooks/unlockd" ] || die "install.sh did not install the initramfs-tools hook"
[ -d "$A/usr/lib/dracut/modules.d/90unlockd" ] || die "install.sh did not install the dracut module"
[ -f "$A/usr/lib/unlockd/unlockd-agent.mjs" ] || die "install.sh did not install the agent bundle"
copy_koffi "$A/usr/lib/unlockd"
install -D -m 0755 "$DEB/unlockd.sh" "$A/usr/bin/unlockd"
install -D -m 0644 systemd/unlockd-agent.service "$A/lib/systemd/system/unlockd-agent.service"
install -D -m 0644 systemd/unlockd-agent.path "$A/lib/systemd/system/unlockd-agent.path"
# Man pages and shell completion, generated by npm run build from the command table.
install_man "$A" dist/man/unlockd-agent.8
# /usr/bin/unlockd here is the host side: `man unlockd` leads to unlockd-agent(8) (unlockd-server
# ships the operator page, unlockd(1)).
mkdir -p "$A/usr/share/man/man8"
printf '.so man8/unlockd-agent.8\n' | gzip -9n > "$A/usr/share/man/man8/unlockd.8.gz"
install -D -m 0644 dist/completion/unlockd-agent.bash "$A/usr/share/bash-completion/completions/unlockd"
install -D -m 0644 dist/completion/_unlockd-agent "$A/usr/share/zsh/vendor-completions/_unlockd"
install -D -m 0644 "$DEB/copyright" "$A/usr/share/doc/unlockd-agent/copyright"
install -D -m 0644 "$DEB/README.Debian" "$A/usr/share/doc/unlockd-agent/README.Debian"
install -D -m 0644 initramfs-hooks/README.md "$A/usr/share/doc/unlockd-agent/README.initramfs.md"
write_changelog unlockd-agent "$A/usr/share/doc/unlockd-agent"
install -D -m 0644 "$DEB/unlockd-agent.lintian-overrides" "$A/usr/share/lintian/overrides/unlockd-agent"
strip_elf "$A/usr/lib/unlockd/node_modules"
fix_modes "$A/usr/lib/unlockd/node_modules"
install_scripts unlockd-agent "$A/DEBIAN"
write_conffiles "$A" "$A/DEBIAN"
agent_libs=$(shlibs_of "$A/usr/lib/unlockd")
write_control unlockd-agent "$A" "$A/DEBIAN" \
  "nodejs (>= 18.19), cryptsetup-bin, e2fsprogs${agent_libs:+, $agent_libs}"
build_deb "$A" unlockd-agent

# --- unlockd-server --------------------------------------------------------------------------
S=$STAGE/unlockd-server
L=$S/usr/lib/unlockd/server
mkdir -p "$S/DEBIAN" "$L/node_modules"
cp dist/unlockd.mjs "$L/"
# The bundle keeps npm packages external: carry the production dependency closure (koffi pruned
# to this architecture; typescript is only an optional peer of a runtime package).
npm ls --omit=dev --omit=peer --all --parseable 2>/dev/null | sed "s|^$ROOT/||" \
  | grep '^node_modules/' | grep -v -e '^node_modules/typescript$' -e '^node_modules/koffi$' | sort -u \
  | while read -r pkg; do
    mkdir -p "$L/$(dirname "$pkg")"
    [ -e "$L/$pkg" ] || cp -a "$pkg" "$L/$pkg"
  done
copy_koffi "$L"
bs=$L/node_modules/better-sqlite3
[ -f "$bs/build/Release/better_sqlite3.node" ] || die "better-sqlite3 has no native build in node_modules"
# Only the addon is needed at run time, not its C sources, object files or the SQLite amalgamation.
find "$bs/build" -mindepth 1 -maxdepth 1 ! -name Release -exec rm -rf {} +
find "$bs/build/Release" -mindepth 1 ! -name better_sqlite3.node -exec rm -rf {} +
rm -rf "$bs/deps" "$bs/src"
# Build leftovers and files lintian rightly flags in a binary package.
find "$L/node_modules" \( -name '*.md' ! -iname 'license*' -o -name '.*' ! -name '.' -o -name '*.ts' \
  -o -name '*.map' -o -name 'Makefile' -o -name '*.gyp' -o -name '*.gypi' -o -name '*.py' \) -prune -exec rm -rf {} +
install -m 0755 "$SERVER_NODE" "$L/node"
strip_elf "$L"
fix_modes "$L/node_modules"
"$L/node" --version >/dev/null || die "the stripped node does not run"
install -D -m 0755 "$DEB/unlockd-server.sh" "$S/usr/bin/unlockd-server"
install_man "$S" dist/man/unlockd-server.8
install_man "$S" dist/man/unlockd.1
install -D -m 0644 systemd/unlockd-server.service "$S/lib/systemd/system/unlockd-server.service"
install -D -m 0644 "$DEB/unlockd-server.service.d.conf" "$S/lib/systemd/system/unlockd-server.service.d/debian.conf"
install -D -m 0644 "$DEB/copyright" "$S/usr/share/doc/unlockd-server/copyright"
node "$DEB/node-modules-copyright.mjs" "$L/node_modules" >> "$S/usr/share/doc/unlockd-server/copyright"
install -D -m 0644 "$DEB/README.Debian" "$S/usr/share/doc/unlockd-server/README.Debian"
write_changelog unlockd-server "$S/usr/share/doc/unlockd-server"
install -D -m 0644 "$DEB/unlockd-server.lintian-overrides" "$S/usr/share/lintian/overrides/unlockd-server"
install_scripts unlockd-server "$S/DEBIAN"
write_conffiles "$S" "$S/DEBIAN"
server_libs=$(shlibs_of "$L")
write_control unlockd-server "$S" "$S/DEBIAN" "adduser${server_libs:+, $server_libs}"
build_deb "$S" unlockd-server
