#!/bin/sh
# unlockd, dracut: answer systemd's ask-password requests for LUKS volumes with the key released
# by the escrow server (started by unlockd-askpass.path when /run/systemd/ask-password fills).
# systemd-cryptsetup shows the same question on the console, so a typed passphrase works all
# along; this gives up after UNLOCKD_TIMEOUT seconds (unlockd.timeout= overrides), and
# unlockd=off on the kernel command line skips it.
ASKDIR=/run/systemd/ask-password

# CONFDIR, NODE, BUNDLE, RUNDIR (removed by unlockd-cleanup.sh before switch-root),
# UNLOCKD_TIMEOUT, and the helpers uptime_s, remaining, volume_for and fetch_key (the functions
# shared with the initramfs-tools flavour; module-setup.sh copied them in).
FUNCTIONS=/usr/lib/unlockd/initramfs-functions
[ -r "$FUNCTIONS" ] || exit 0
# shellcheck source-path=SCRIPTDIR source=../../unlockd-functions.sh
. "$FUNCTIONS"
unlockd_boot_setup
case $? in
1) exit 0 ;;
2) echo "unlockd: disabled by unlockd=off on the kernel command line"; exit 0 ;;
esac

log() { read -r up _ < /proc/uptime; echo "unlockd: $* (at $up s)" > /dev/console 2>&1 || echo "unlockd: $*"; }
# The path unit may start us again: keep one deadline per boot.
mkdir -p "$RUNDIR" && chmod 0700 "$RUNDIR" || exit 1
[ -s "$RUNDIR/deadline" ] || echo $(($(uptime_s) + UNLOCKD_TIMEOUT)) > "$RUNDIR/deadline"
read -r DEADLINE < "$RUNDIR/deadline"
touch "$RUNDIR/done"

reply() { # SOCKET: printf is a builtin, so the key is never in an argv
	for bin in /lib/systemd/systemd-reply-password /usr/lib/systemd/systemd-reply-password; do
		[ -x "$bin" ] || continue
		printf '%s' "$key" | timeout 10 "$bin" 1 "$1"
		return $?
	done
	return 1
}

while [ "$(remaining)" -gt 0 ]; do
	pending=0
	for q in "$ASKDIR"/ask.*; do
		[ -f "$q" ] || continue
		dev="" sock=""
		while IFS= read -r line; do
			case "$line" in
			Id=cryptsetup:*) dev="${line#Id=cryptsetup:}" ;;
			Socket=*) sock="${line#Socket=}" ;;
			esac
		done < "$q"
		if [ -z "$dev" ] || [ ! -S "$sock" ]; then continue; fi
		[ -b "$dev" ] || { pending=1; continue; }
		uuid=$(cryptsetup luksUUID "$dev" 2> /dev/null | tr 'A-F' 'a-f')
		[ -n "$uuid" ] || continue
		grep -qx "$uuid" "$RUNDIR/done" && continue # answered or given up once: the prompt is the user's now
		vol=$(volume_for "$uuid") || { echo "$uuid" >> "$RUNDIR/done"; continue; }
		pending=1
		log "asking the escrow server for volume $vol ($dev)"
		fetch_key "$vol"
		rc=$?
		case $rc in
		0)
			if [ -n "$key" ] && [ -e "$q" ] && reply "$sock"; then
				log "answered the passphrase prompt for $vol"
			else
				log "got the key for $vol, but the prompt was gone"
			fi
			echo "$uuid" >> "$RUNDIR/done"
			;;
		3) log "the escrow server refused to release $vol; type the passphrase"; echo "$uuid" >> "$RUNDIR/done" ;;
		4) log "the escrow server is unreachable; retrying for $(remaining) s (the passphrase prompt works meanwhile)"; sleep 3 ;;
		*) log "the agent failed for $vol (exit $rc); type the passphrase"; echo "$uuid" >> "$RUNDIR/done" ;;
		esac
		key=""
	done
	# Nothing of ours is asked for any more: the path unit starts us again if that changes.
	[ "$pending" = 1 ] || exit 0
	sleep 0.5
done
log "gave up after $UNLOCKD_TIMEOUT s; type the passphrase"
exit 0
