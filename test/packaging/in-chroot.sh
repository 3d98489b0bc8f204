#!/bin/bash
# Install the unlockd packages into a throw-away copy of the cached packaging chroot and run the
# checks of test/packaging/debian-packages.test.ts inside it. Meant to run under
# `unshare --mount --propagation private`: the overlay and /proc, /sys, /dev mounts vanish with
# the namespace, and the cached chroot (the overlay's lower layer) is never written to.
#
# usage: in-chroot.sh CACHED_ROOTFS WORKDIR
#   WORKDIR/debs/*.deb  the packages;  WORKDIR/share/  files copied to /tmp/e2e in the chroot
#   WORKDIR/out/NAME.rc and NAME.out  exit status and output (stdout+stderr) of each step;
#   WORKDIR/out/NAME.err  stderr alone for the steps whose stderr must stay empty
set -uo pipefail

lower=${1:?usage: in-chroot.sh CACHED_ROOTFS WORKDIR}
work=${2:?usage: in-chroot.sh CACHED_ROOTFS WORKDIR}
root=$work/merged
out=$work/out
mkdir -p "$work/upper" "$work/ovl" "$root" "$out"
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$work/upper,workdir=$work/ovl" "$root" || exit 1
mount --rbind /dev "$root/dev" && mount -t proc proc "$root/proc" && mount -t sysfs sys "$root/sys" || exit 1
mkdir -p "$root/tmp/debs" "$root/tmp/e2e"
cp "$work"/debs/*.deb "$root/tmp/debs/"
cp -a "$work/share/." "$root/tmp/e2e/"

# step NAME COMMAND...: run COMMAND in the chroot (through sh -c), record status and output.
step() {
  local name=$1
  shift
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
    /bin/sh -c "$*" > "$out/$name.out" 2> "$out/$name.err"
  echo $? > "$out/$name.rc"
  cat "$out/$name.err" >> "$out/$name.out"
}

# Recommends (cryptsetup-initramfs | dracut) are left out: the boot tests cover the initramfs.
step install 'DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends /tmp/debs/*.deb'
step node-version 'node --version'
step version 'unlockd --version'
step server-version 'unlockd-server --version'
step files 'dpkg -L unlockd-agent unlockd-server'
step enabled 'ls /etc/systemd/system/cryptsetup.target.wants/'
step user 'getent passwd unlockd'
# Man pages and completion, only when the packages ship them.
# shellcheck disable=SC2016 # these expand in the chroot's shell, not here
step man 'set -e; for p in $(dpkg -L unlockd-agent unlockd-server | grep "^/usr/share/man/.*\.gz$"); do echo "== $p"; man -l "$p" > /dev/null; done'
# shellcheck disable=SC2016 # expands in the chroot's shell
step completion 'set -e; f=/usr/share/bash-completion/completions/unlockd; if [ -f $f ]; then bash -c ". $f && complete -p unlockd"; else echo "no completion shipped"; fi'
step analyze 'systemd-analyze verify /lib/systemd/system/unlockd-agent.service /lib/systemd/system/unlockd-agent.path /lib/systemd/system/unlockd-server.service'
step dropin 'systemd-analyze cat-config systemd/system/unlockd-server.service 2>/dev/null || cat /lib/systemd/system/unlockd-server.service.d/*.conf'
# The host verbs on Debian's nodejs 18 against the server the test runs on the host's loopback.
if [ -f "$work/share/server-url" ]; then
  url=$(cat "$work/share/server-url")
  step enroll "unlockd enroll --server $url --name deb-host --config /tmp/e2e/etc --token-file /tmp/e2e/token --luks /tmp/e2e/disk.img:data --existing-key-file /tmp/e2e/old.key --recovery-key /tmp/e2e/recovery.pub --json"
  step unlock 'unlockd unlock --config /tmp/e2e/etc --test --json'
  step initramfs-check 'unlockd initramfs check --flavour initramfs-tools --config /tmp/e2e/etc'
fi
step remove 'DEBIAN_FRONTEND=noninteractive apt-get remove -y unlockd-agent unlockd-server'
step after-remove 'ls /usr/share/initramfs-tools/hooks/ /usr/lib/unlockd 2>&1; update-initramfs -u; echo "update-initramfs: $?"'
step purge 'DEBIAN_FRONTEND=noninteractive apt-get purge -y unlockd-agent unlockd-server'
exit 0
