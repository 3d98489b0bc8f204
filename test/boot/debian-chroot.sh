#!/bin/bash
# Build the Debian bookworm chroot the boot tests make their initramfs in: initramfs-tools,
# cryptsetup-initramfs, busybox, udev and the distribution kernel (from bookworm-security, via
# the host's apt sources). Optionally dracut instead of initramfs-tools (--dracut).
# The result is cached by the caller; this script only builds into an empty directory.
#
# usage: debian-chroot.sh OUTDIR [--dracut]
#   OUTDIR/rootfs       the chroot
#   OUTDIR/vmlinuz      the kernel, OUTDIR/kver its version
# Needs (host): debootstrap, util-linux (unshare), apt sources reaching deb.debian.org.
set -euo pipefail

out=${1:?usage: debian-chroot.sh OUTDIR [--dracut]}
flavour=${2:-}
root="$out/rootfs"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

die() { echo "debian-chroot: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
[ ! -e "$root" ] || die "$root exists; remove it first"
mkdir -p "$out"

base=initramfs-tools,cryptsetup-initramfs,busybox,kmod,udev,zstd,libstdc++6
if [ "$flavour" = --dracut ]; then
  # dracut's network-legacy module needs dhclient, arping, pgrep and gawk; the systemd initrd
  # needs netbase (/etc/services) and systemd-sysv (poweroff). Without them the postinst fails.
  base=kmod,udev,zstd,libstdc++6,systemd,systemd-sysv,cryptsetup,procps,isc-dhcp-client,iproute2,iputils-arping,gawk,netbase
fi

t0=$(date +%s)
debootstrap --variant=minbase --include="$base" bookworm "$root" "$mirror" > "$out/debootstrap.log" 2>&1 \
  || { tail -20 "$out/debootstrap.log" >&2; die "debootstrap failed (log: $out/debootstrap.log)"; }
echo "debian-chroot: debootstrap took $(( $(date +%s) - t0 )) s" >&2

# The kernel is in bookworm-security: use the host's sources when it has deb822 ones.
rm -f "$root/etc/apt/sources.list"
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
else
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
    "$mirror" "$mirror" > "$root/etc/apt/sources.list"
fi

# Small images: only the modules a virtio guest needs (MODULES=most gives 43 MB and slower boots).
if [ "$flavour" != --dracut ]; then
  sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
  printf '%s\n' virtio_pci virtio_blk virtio_net dm-crypt xts aesni-intel ext4 >> "$root/etc/initramfs-tools/modules"
fi

extra=""
[ "$flavour" = --dracut ] && extra="dracut dracut-network"
# /proc, /sys and /dev only inside a private mount namespace: nothing leaks if we are killed.
# shellcheck disable=SC2016 # the inner script gets its values as arguments
unshare --mount --propagation private /bin/sh -euc '
  root=$1; extra=$2
  mount --rbind /dev "$root/dev"; mount -t proc proc "$root/proc"; mount -t sysfs sys "$root/sys"
  chroot "$root" apt-get update -qq
  kpkg=$(chroot "$root" apt-cache depends linux-image-amd64 | awk "/Depends: linux-image-6/{print \$2; exit}")
  [ -n "$kpkg" ] || { echo "debian-chroot: cannot resolve the linux-image-amd64 dependency" >&2; exit 1; }
  # INITRD=No: the kernel postinst must not build an image now (the test builds one per run).
  chroot "$root" env DEBIAN_FRONTEND=noninteractive INITRD=No apt-get install -y -qq --no-install-recommends "$kpkg" $extra
  echo "${kpkg#linux-image-}" > "$root/../kver"
' sh "$root" "$extra" > "$out/chroot-install.log" 2>&1 || { tail -20 "$out/chroot-install.log" >&2; die "package install failed (log: $out/chroot-install.log)"; }

kver=$(cat "$out/kver")
cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz"
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*_Packages
echo "debian-chroot: $kver ready in $(( $(date +%s) - t0 )) s" >&2
