#!/bin/bash
# A bootable Debian bookworm guest disk for the QEMU tests: systemd as PID 1, the distribution
# kernel and its initramfs (initramfs-tools), GRUB for BIOS, cryptsetup and e2fsprogs, and the
# host's Node binary (the agent bundle needs Node 20; bookworm's nodejs is 18).
#
# Layout (what cloud providers ship for Debian): GPT with partition 1 = 1 MiB BIOS boot
# partition (GRUB's core.img), partition 2 = one ext4 filesystem (label "root") holding / and
# /boot. SeaBIOS -> GRUB -> Linux works without -kernel; OUTDIR/vmlinuz and OUTDIR/initrd.img
# are copies for a faster boot with -kernel/-initrd (append the cmdline in OUTDIR/cmdline).
#
# usage: build-guest.sh build SRC_CHROOT OUTDIR [SIZE]
#          SRC_CHROOT  a bookworm chroot with a kernel and initramfs-tools (read, never written)
#          OUTDIR      gets disk.img, vmlinuz, initrd.img, kver, root-uuid, cmdline, part2 (the
#                      root partition's byte offset and size), and build logs
#        build-guest.sh inject DISK STAGE_DIR
#          copy the tree STAGE_DIR over the root filesystem of DISK (a copy of disk.img);
#          owners and modes as in STAGE_DIR
# Inside the guest: eth0 = 10.0.2.15/24 via 10.0.2.2 (systemd-networkd; QEMU user networking),
# root has no password (serial console), and vm-task.service runs the fw_cfg file opt/vm/task
# (a shell script, -fw_cfg name=opt/vm/task,file=F) once the system is up, its output on the
# console between "VM-TASK: start" and "VM-TASK: rc=N".
# Needs on the host: root, sgdisk, e2fsprogs, util-linux (losetup, unshare), and apt sources
# reaching the Debian mirror from the chroot.
set -euo pipefail

die() { echo "build-guest: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root"

# The root partition of DISK: "OFFSET SIZE" in bytes (partition 2 of the GPT).
part2() {
  sgdisk -p "$1" | awk '$1 == 2 { printf "%d %d\n", $2 * 512, ($3 - $2 + 1) * 512 }'
}

# Run "$@" with the root partition of DISK mounted at $MNT, in a private mount namespace. The
# host kernel may lack GPT partition support (no loopNp2 nodes), so the loop device maps the
# partition's byte range itself.
with_root_mounted() {
  local disk=$1; shift
  local off size loop
  read -r off size < <(part2 "$disk")
  [ -n "$off" ] || die "$disk has no partition 2"
  loop=$(losetup -f --show --offset "$off" --sizelimit "$size" "$disk")
  local rc=0
  unshare --mount --propagation private "$@" "$loop" || rc=$?
  losetup -d "$loop" || true
  return "$rc"
}

inject() {
  local disk=${1:?DISK} stage=${2:?STAGE_DIR}
  [ -d "$stage" ] || die "$stage is not a directory"
  # shellcheck disable=SC2016 # the inner script gets its values as arguments
  with_root_mounted "$disk" /bin/sh -euc '
    stage=$1; loop=$2; m=$(mktemp -d)
    mount "$loop" "$m"; cp -a "$stage/." "$m/"; umount "$m"; rmdir "$m"
  ' sh "$stage"
}

build() {
  local src=${1:?SRC_CHROOT} out=${2:?OUTDIR} size=${3:-3G}
  [ -x "$src/usr/bin/apt-get" ] || die "$src is not a Debian chroot"
  mkdir -p "$out"
  local img=$out/disk.img
  rm -f "$img"
  truncate -s "$size" "$img"
  # ef02 = BIOS boot, 8300 = Linux filesystem. (sgdisk 1.0.9 ignores everything given -q.)
  sgdisk -n 1:2048:+1M -t 1:ef02 -c 1:bios-boot -n 2:0:0 -t 2:8300 -c 2:root "$img" > "$out/sgdisk.log"
  [ "$(sgdisk -p "$img" | grep -cE '^ +[12] ')" = 2 ] || die "sgdisk did not make two partitions"
  part2 "$img" > "$out/part2"
  local whole
  whole=$(losetup -f --show "$img")
  # shellcheck disable=SC2016
  with_root_mounted "$img" /bin/bash -euc '
    src=$1; out=$2; whole=$3; node=$4; loop=$5
    mkfs.ext4 -q -F -L root "$loop"
    uuid=$(blkid -s UUID -o value "$loop"); echo "$uuid" > "$out/root-uuid"
    m=$out/mnt; mkdir -p "$m"; mount "$loop" "$m"
    cp -a "$src/." "$m/"
    cp /etc/resolv.conf "$m/etc/resolv.conf"
    # A private /dev: the nodes the tools need, and the by-uuid link grub-probe looks for.
    mount -t tmpfs -o mode=755 dev "$m/dev"
    cp -a /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty "$whole" "$loop" "$m/dev/"
    mkdir -p "$m/dev/pts" "$m/dev/shm" "$m/dev/disk/by-uuid"
    ln -s "../../$(basename "$loop")" "$m/dev/disk/by-uuid/$uuid"
    mount -t proc proc "$m/proc"; mount -t sysfs sys "$m/sys"; mount -t tmpfs run "$m/run"
    chroot "$m" apt-get update -qq
    chroot "$m" env DEBIAN_FRONTEND=noninteractive INITRD=No apt-get install -y -qq --no-install-recommends \
      systemd systemd-sysv dbus grub-pc cryptsetup-bin e2fsprogs kmod procps
    chroot "$m" apt-get clean
    rm -f "$m/var/lib/apt/lists/"*_Packages

    # ---- guest configuration ----
    echo vm > "$m/etc/hostname"
    printf "127.0.0.1 localhost\n127.0.1.1 vm\n" > "$m/etc/hosts"
    printf "UUID=%s / ext4 errors=remount-ro 0 1\n" "$uuid" > "$m/etc/fstab"
    : > "$m/etc/crypttab"
    chroot "$m" passwd -d root > /dev/null
    rm -f "$m/etc/machine-id"; chroot "$m" systemd-machine-id-setup > /dev/null
    install -m 0755 "$node" "$m/usr/local/bin/node"; ln -sf /usr/local/bin/node "$m/usr/bin/node"
    printf "dm_crypt\nqemu_fw_cfg\n" > "$m/etc/modules-load.d/vm.conf"
    mkdir -p "$m/etc/systemd/network"
    printf "[Match]\nName=eth0\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\n" \
      > "$m/etc/systemd/network/10-eth0.network"
    chroot "$m" systemctl enable -q systemd-networkd.service systemd-networkd-wait-online.service
    # Boot-time work that only slows a TCG guest down, or asks questions on the console.
    for u in e2scrub_reap.service e2scrub_all.timer apt-daily.timer apt-daily-upgrade.timer \
      fstrim.timer systemd-firstboot.service getty@tty1.service; do
      ln -sf /dev/null "$m/etc/systemd/system/$u"
    done
    cat > "$m/usr/local/sbin/vm-task" <<"EOF"
#!/bin/sh
# vm-task.service: run the fw_cfg file opt/vm/task, if QEMU was given one.
exec > /dev/console 2>&1
echo "VM-READY: systemd $(systemctl --version | head -1 | cut -d" " -f2) up at $(cut -d" " -f1 /proc/uptime) s"
t=/sys/firmware/qemu_fw_cfg/by_name/opt/vm/task/raw
[ -r "$t" ] || exit 0
cp "$t" /run/vm-task.sh
echo "VM-TASK: start"
sh /run/vm-task.sh; rc=$?
echo "VM-TASK: rc=$rc"
EOF
    chmod 0755 "$m/usr/local/sbin/vm-task"
    cat > "$m/etc/systemd/system/vm-task.service" <<"EOF"
[Unit]
Description=Run the QEMU fw_cfg task of the test
After=network-online.target local-fs.target systemd-modules-load.service
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vm-task
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
    chroot "$m" systemctl enable -q vm-task.service
    mkdir -p "$m/etc/systemd/system/systemd-networkd-wait-online.service.d"
    printf "[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=60\n" \
      > "$m/etc/systemd/system/systemd-networkd-wait-online.service.d/timeout.conf"

    # ---- initramfs and GRUB ----
    kver=$(ls "$m/lib/modules" | sort -V | tail -1); echo "$kver" > "$out/kver"
    chroot "$m" update-initramfs -c -k "$kver" > "$out/update-initramfs.log" 2>&1
    cmdline="root=UUID=$uuid ro console=ttyS0,115200n8 net.ifnames=0 panic=-1 quiet mitigations=off"
    echo "$cmdline" > "$out/cmdline"
    cat > "$m/etc/default/grub" <<EOF
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_TIMEOUT_STYLE=hidden
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0,115200n8 net.ifnames=0 panic=-1 quiet mitigations=off"
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
EOF
    # core.img goes into the BIOS boot partition of the whole disk; it finds / by UUID.
    chroot "$m" grub-install --target=i386-pc --boot-directory=/boot --modules="part_gpt ext2" "$whole" \
      > "$out/grub-install.log" 2>&1
    # grub-mkconfig writes no Linux entry for a root on a file-backed loop device, so the
    # equivalent grub.cfg is written here; update-grub inside the guest regenerates it.
    cat > "$m/boot/grub/grub.cfg" <<EOF
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
set default=0
insmod part_gpt
insmod ext2
search --no-floppy --fs-uuid --set=root $uuid
menuentry "Debian GNU/Linux ($kver)" {
  linux /boot/vmlinuz-$kver $cmdline
  initrd /boot/initrd.img-$kver
}
EOF
    echo "grub-pc grub-pc/install_devices multiselect /dev/vda" | chroot "$m" debconf-set-selections
    cp "$m/boot/vmlinuz-$kver" "$out/vmlinuz"; cp "$m/boot/initrd.img-$kver" "$out/initrd.img"
    umount "$m/proc" "$m/sys" "$m/run" "$m/dev"; umount "$m"; rmdir "$m"
  ' sh "$src" "$out" "$whole" "$(readlink -f "$(command -v node)")" > "$out/build.log" 2>&1 || {
    losetup -d "$whole" || true
    tail -30 "$out/build.log" >&2
    die "build failed (log: $out/build.log)"
  }
  losetup -d "$whole"
}

case "${1:-}" in
  build) shift; build "$@" ;;
  inject) shift; inject "$@" ;;
  *) die "usage: build-guest.sh build SRC_CHROOT OUTDIR [SIZE] | inject DISK STAGE_DIR" ;;
esac
