#!/bin/sh
# unlockd, dracut cleanup hook (before switch-root): stop the agent if it still runs and leave
# nothing of ours in /run, which moves into the real system. dracut takes the network down itself.
RUNDIR=/run/unlockd-initramfs
if [ -s "$RUNDIR/agent.pid" ]; then
	read -r pid < "$RUNDIR/agent.pid"
	case "$pid" in
	'' | *[!0-9]*) ;;
	*) grep -q unlockd-agent.mjs "/proc/$pid/cmdline" 2> /dev/null && kill -9 "$pid" 2> /dev/null ;;
	esac
fi
rm -rf "$RUNDIR"
