#!/bin/bash
# Build the Debian bookworm chroot the package test installs unlockd-agent and unlockd-server
# into: Debian's nodejs 18 and every dependency of both packages already installed, so
# `apt-get install ./unlockd-*.deb` in a copy of it needs no download. The caller caches the
# result keyed by a hash of this script (the package list is in it).
#
# usage: debian-chroot.sh OUTDIR      (OUTDIR/rootfs is the chroot)
# Needs (host): root, debootstrap, util-linux (unshare), apt sources reaching deb.debian.org.
set -euo pipefail

out=${1:?usage: debian-chroot.sh OUTDIR}
root="$out/rootfs"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

die() { echo "packaging-chroot: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
[ ! -e "$root" ] || die "$root exists; remove it first"
mkdir -p "$out"

# The packages' Depends and Recommends (nodejs, cryptsetup-bin, e2fsprogs, adduser,
# initramfs-tools) plus what the tests run inside: systemd-analyze, man, bash-completion; python3
# and python3-apt for Ansible's chroot connection (test/provisioning/ansible-role.test.ts), curl
# for the cloud-init first-boot script (cloud-init.test.ts).
pkgs=nodejs,systemd,cryptsetup-bin,e2fsprogs,adduser,initramfs-tools,man-db,bash-completion,ca-certificates,strace,python3,python3-apt,curl

t0=$(date +%s)
debootstrap --variant=minbase --include="$pkgs" bookworm "$root" "$mirror" > "$out/debootstrap.log" 2>&1 \
  || { tail -20 "$out/debootstrap.log" >&2; die "debootstrap failed (log: $out/debootstrap.log)"; }
# The host's sources (with bookworm-security) so apt inside resolves like the host does.
rm -f "$root/etc/apt/sources.list"
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
else
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" > "$root/etc/apt/sources.list"
fi
rm -rf "$root/var/cache/apt/archives/"*.deb
echo "packaging-chroot: ready in $(( $(date +%s) - t0 )) s" >&2
