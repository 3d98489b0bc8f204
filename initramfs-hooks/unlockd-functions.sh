# shellcheck shell=sh
# unlockd initramfs functions: the shell shared by both flavours (initramfs-tools and dracut), as
# clevis keeps its common functions in one file. install.sh installs it as
# /usr/lib/unlockd/initramfs-functions; the initramfs-tools hook and the dracut module source it
# at build time and copy it to the same path in the image, where the boot scripts source it.
# It only defines functions: sourcing it sets no variable and runs nothing.

# unlockd_conf_valid FILE: 0 when FILE holds only blank lines, comments and UNLOCKD_NAME=value
# lines (the boot scripts source it). A value is "double quoted" without ` $ \, 'single quoted',
# or bare without blanks, quotes or shell operators; agent/initramfs-plan.ts parses the same.
unlockd_conf_valid() {
	_unlockd_q="'"
	_unlockd_double='"[^"`$\\]*"'
	_unlockd_single="${_unlockd_q}[^${_unlockd_q}]*${_unlockd_q}"
	_unlockd_bare="[^[:space:]\"$_unlockd_q"'`$\\;&|<>()]*'
	! grep -Eqv "^[[:space:]]*(#.*)?\$|^UNLOCKD_[A-Z_]+=($_unlockd_double|$_unlockd_single|$_unlockd_bare)\$" "$1"
}

# --- At boot, in the image -----------------------------------------------------------------------

# unlockd_boot_setup: set CONFDIR, NODE, BUNDLE, RUNDIR and UNLOCKD_TIMEOUT (default 300;
# initramfs.conf, then unlockd.timeout= on the kernel command line). Returns 1 when the image
# has nothing to unlock (not enrolled, no volume, no node) and 2 for unlockd=off.
unlockd_boot_setup() {
	CONFDIR=/etc/unlockd
	NODE=/usr/bin/node
	BUNDLE=/usr/lib/unlockd/unlockd-agent.mjs
	# Our runtime files: pids only, never a key. Removed before switch_root.
	RUNDIR=/run/unlockd-initramfs
	[ -f "$CONFDIR/agent.json" ] && [ -s "$CONFDIR/volumes" ] && [ -x "$NODE" ] || return 1

	UNLOCKD_TIMEOUT=300
	# shellcheck disable=SC1091 # copied by the hook (UNLOCKD_*=value lines only, checked there)
	[ -f "$CONFDIR/initramfs.conf" ] && . "$CONFDIR/initramfs.conf"
	set -f
	# shellcheck disable=SC2013 # words, not lines
	for arg in $(cat /proc/cmdline); do
		case "$arg" in
		unlockd=off | unlockd=0 | unlockd=no)
			set +f
			return 2
			;;
		unlockd.timeout=*)
			UNLOCKD_TIMEOUT="${arg#unlockd.timeout=}"
			;;
		esac
	done
	set +f
	case "$UNLOCKD_TIMEOUT" in
	'' | *[!0-9]*) UNLOCKD_TIMEOUT=300 ;;
	esac
	return 0
}

uptime_s() { read -r up _ < /proc/uptime; echo "${up%%.*}"; }

# Seconds left before DEADLINE (uptime seconds, set by the caller), 0 when past.
remaining() { r=$((DEADLINE - $(uptime_s))); [ "$r" -gt 0 ] || r=0; echo "$r"; }

volume_for() { # UUID (lower case) -> volume name, from the map the hook wrote
	while read -r u name; do
		[ "$u" = "$1" ] && { echo "$name"; return 0; }
	done < "$CONFDIR/volumes"
	return 1
}

# Run the agent for one volume; the key comes back in $key (a pipe), never in a file or argv.
# Exit codes are the agent's (3 refused, 4 unreachable); 5 when no time is left.
fetch_key() {
	wait_s=$(remaining)
	[ "$wait_s" -gt 0 ] || return 5
	# shellcheck disable=SC2034 # read by the caller
	key=$(
		timeout -s KILL $((wait_s + 15)) "$NODE" "$BUNDLE" unlock --config "$CONFDIR" --volume "$1" \
			--key-stdout --wait "${wait_s}s" &
		echo $! > "$RUNDIR/agent.pid"
		wait $!
	)
	rc=$?
	rm -f "$RUNDIR/agent.pid"
	return $rc
}
