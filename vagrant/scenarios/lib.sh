#!/bin/bash
# Shared helpers for the scenarios: run from the host, in vagrant/, after `vagrant up --no-parallel`.
# Every wait is bounded. The client's console messages from the initramfs are read back from its
# kernel log (`journalctl -k -b`), where the boot script also writes them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CLIENT=${CLIENT:-client}
BOOT_LIMIT=${BOOT_LIMIT:-420}

say() { printf '\n== %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

provider() {
	local p
	for p in virtualbox libvirt; do
		[ -s ".vagrant/machines/$CLIENT/$p/id" ] && { echo "$p"; return; }
	done
	die "no VirtualBox or libvirt machine for $CLIENT: run vagrant up --no-parallel first"
}

# The operator CLI on the escrow VM (see provision/escrow-op.sh); --code auto makes a TOTP code.
op() { vagrant ssh escrow -c "sudo unlockd-demo-op $*" -- -q -o ConnectTimeout=10; }
on_client() { vagrant ssh "$CLIENT" -c "$1" -- -q -o ConnectTimeout=5 -o ConnectionAttempts=1; }

reboot_client() {
	on_client 'sudo systemctl reboot' > /dev/null 2>&1 || true
	# Let it go down before we poll for it to come back.
	sleep 15
}

wait_for_client() {
	local deadline=$((SECONDS + BOOT_LIMIT))
	until on_client true > /dev/null 2>&1; do
		[ "$SECONDS" -lt "$deadline" ] || die "$CLIENT did not come back within ${BOOT_LIMIT} s"
		sleep 5
	done
}

# Type on the client's console (the passphrase prompt of cryptsetup's askpass).
type_on_console() {
	local text=$1 id
	id=$(cat ".vagrant/machines/$CLIENT/$(provider)/id")
	case "$(provider)" in
	virtualbox)
		VBoxManage controlvm "$id" keyboardputstring "$text"
		VBoxManage controlvm "$id" keyboardputscancode 1c 9c
		;;
	libvirt)
		local keys=() c i
		for ((i = 0; i < ${#text}; i++)); do
			c=${text:i:1}
			case "$c" in
			[0-9a-z]) keys+=("KEY_${c^^}") ;;
			*) die "type_on_console: cannot type '$c' through virsh send-key" ;;
			esac
		done
		for c in "${keys[@]}" KEY_ENTER; do virsh -c qemu:///system send-key "$id" "$c" > /dev/null; done
		;;
	esac
}

check_data_mounted() {
	on_client 'cat /srv/data/marker.txt' | grep -q UNLOCKED-OK || die "the data volume is not mounted on $CLIENT"
	echo "data volume mounted: $(on_client 'cat /srv/data/marker.txt')"
}

boot_log() { on_client 'sudo journalctl -k -b --no-pager' | grep 'unlockd:' || true; }

# Poll `op "$1"` until its output matches the extended regex $2.
wait_for_op() {
	local deadline=$((SECONDS + BOOT_LIMIT)) out
	while :; do
		out=$(op "$1" 2> /dev/null || true)
		if grep -Eq "$2" <<< "$out"; then
			printf '%s\n' "$out"
			return 0
		fi
		[ "$SECONDS" -lt "$deadline" ] || die "timed out waiting for '$2' in: unlockd $1"
		sleep 5
	done
}
