#!/bin/sh
# Install the unlockd initramfs integration (initramfs-tools or dracut) and the agent bundle.
# usage: install.sh [--root DIR] [--bundle FILE] [initramfs-tools|dracut]
#   --root DIR     install into a chroot or image tree instead of /
#   --bundle FILE  also install the agent bundle (dist/unlockd-agent.mjs) as /usr/lib/unlockd/unlockd-agent.mjs
# Then enroll the host (unlockd enroll ...), make sure /etc/crypttab names the root volume
# (initramfs-tools), check with `unlockd initramfs check`, and rebuild the image
# (update-initramfs -u, or dracut -f).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=""
bundle=""
flavour=""
while [ $# -gt 0 ]; do
	case "$1" in
	--root) root=${2:?--root needs a directory}; shift 2 ;;
	--bundle) bundle=${2:?--bundle needs a file}; shift 2 ;;
	initramfs-tools | dracut) flavour=$1; shift ;;
	-h | --help) sed -n '2,8p' "$0"; exit 0 ;;
	*) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
if [ -z "$flavour" ]; then
	if [ -d "$root/usr/share/initramfs-tools" ]; then flavour=initramfs-tools
	elif [ -d "$root/usr/lib/dracut" ]; then flavour=dracut
	else echo "install.sh: neither initramfs-tools nor dracut is installed in ${root:-/}" >&2; exit 1
	fi
fi

put() { # MODE SRC DEST
	mkdir -p "$(dirname "$root$3")"
	cp "$2" "$root$3.unlockd-new"
	chmod "$1" "$root$3.unlockd-new"
	mv -f "$root$3.unlockd-new" "$root$3"
	echo "installed $3"
}

case "$flavour" in
initramfs-tools)
	src="$here/initramfs-tools"
	put 0755 "$src/hooks/unlockd" /etc/initramfs-tools/hooks/unlockd
	put 0755 "$src/scripts/local-top/unlockd" /etc/initramfs-tools/scripts/local-top/unlockd
	put 0755 "$src/scripts/init-premount/unlockd-root" /etc/initramfs-tools/scripts/init-premount/unlockd-root
	put 0755 "$src/scripts/local-bottom/unlockd" /etc/initramfs-tools/scripts/local-bottom/unlockd
	put 0644 "$src/conf.d/unlockd" /etc/initramfs-tools/conf.d/unlockd
	;;
dracut)
	src="$here/dracut/90unlockd"
	for f in "$src"/*; do
		case "$f" in
		*.sh) put 0755 "$f" "/usr/lib/dracut/modules.d/90unlockd/$(basename "$f")" ;;
		*) put 0644 "$f" "/usr/lib/dracut/modules.d/90unlockd/$(basename "$f")" ;;
		esac
	done
	;;
esac
# Shared by both flavours: their hooks source it and copy it into the image.
put 0644 "$here/unlockd-functions.sh" /usr/lib/unlockd/initramfs-functions
if [ -n "$bundle" ]; then
	put 0644 "$bundle" /usr/lib/unlockd/unlockd-agent.mjs
fi
if [ ! -e "$root/etc/unlockd/initramfs.conf" ]; then
	mkdir -p "$root/etc/unlockd"
	chmod 0700 "$root/etc/unlockd"
	put 0600 "$here/initramfs.conf.example" /etc/unlockd/initramfs.conf
fi
