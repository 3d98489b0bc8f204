#!/bin/bash
# The client VM: its extra disk becomes a LUKS2 volume "data" (keyslot 0: a recovery passphrase;
# enrollment adds the escrowed key), listed in crypttab with the `initramfs` option so the
# initramfs unlocks it at boot, exactly as it would a root volume. Then the unlockd hook goes in,
# ip= names the private-network interface for the initramfs, and the image is rebuilt.
# Demo only: the recovery passphrase is kept in /root/unlockd-demo/data.passphrase.
set -euo pipefail
: "${ESCROW_IP:?}" "${CLIENT_IP:?}" "${CLIENT_NAME:?}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends cryptsetup cryptsetup-initramfs busybox initramfs-tools e2fsprogs
demo=/root/unlockd-demo
install -d -m 0700 "$demo"

# The extra disk: a whole disk that does not hold the root filesystem.
rootdisk=$(lsblk -no PKNAME "$(findmnt -no SOURCE /)" | head -1)
disk=""
for d in $(lsblk -dnpo NAME,TYPE | awk '$2 == "disk" {print $1}'); do
	[ "$(basename "$d")" = "$rootdisk" ] && continue
	disk=$d
	break
done
[ -n "$disk" ] || { echo "client.sh: no extra disk found (see the Vagrantfile's storage settings)" >&2; exit 1; }
echo "data disk: $disk"

if [ ! -s "$demo/data.passphrase" ]; then
	umask 077
	head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$demo/data.passphrase"
fi
if ! cryptsetup isLuks "$disk"; then
	cryptsetup luksFormat --type luks2 --batch-mode --key-file "$demo/data.passphrase" "$disk"
	cryptsetup open --key-file "$demo/data.passphrase" "$disk" data-setup
	mkfs.ext4 -q -L data /dev/mapper/data-setup
	mkdir -p /mnt/data-setup
	mount /dev/mapper/data-setup /mnt/data-setup
	echo "UNLOCKED-OK ${CLIENT_NAME} data volume" > /mnt/data-setup/marker.txt
	umount /mnt/data-setup
	cryptsetup close data-setup
fi
uuid=$(cryptsetup luksUUID "$disk")

if ! jq -e '.volumes[] | select(.name == "data")' /etc/unlockd/agent.json > /dev/null 2>&1; then
	unlockd enroll --server "https://${ESCROW_IP}:8443" --ca /tmp/unlockd-demo/ca.pem \
		--token-file /tmp/unlockd-demo/client.token --name "$CLIENT_NAME" \
		--luks "/dev/disk/by-uuid/${uuid}:data" --existing-key-file "$demo/data.passphrase"
fi

grep -q "^data " /etc/crypttab 2> /dev/null || echo "data UUID=${uuid} none luks,initramfs" >> /etc/crypttab
mkdir -p /srv/data
grep -q "^/dev/mapper/data " /etc/fstab || echo "/dev/mapper/data /srv/data ext4 defaults,nofail 0 2" >> /etc/fstab

# The initramfs brings up the private-network interface only (the escrow is not reachable over NAT).
iface=$(ip -o -4 addr show | awk -v ip="$CLIENT_IP" 'index($4, ip "/") == 1 {print $2; exit}')
[ -n "$iface" ] || { echo "client.sh: no interface holds ${CLIENT_IP}" >&2; exit 1; }
cat > /etc/default/grub.d/90-unlockd.cfg <<GRUB
# unlockd: network for the agent in the initramfs (configure_networking reads ip=)
GRUB_CMDLINE_LINUX_DEFAULT="\$GRUB_CMDLINE_LINUX_DEFAULT ip=${CLIENT_IP}:::255.255.255.0::${iface}:off"
GRUB
update-grub

/opt/unlockd/initramfs-hooks/install.sh initramfs-tools
unlockd initramfs check
update-initramfs -u
echo "client ready: reboot it (vagrant reload ${CLIENT_NAME}) and the data volume unlocks in the initramfs"
