#!/bin/bash
# Scenario 1: the client reboots and its initramfs unlocks the LUKS2 data volume through the
# escrow server; the boot-to-unlock time comes from the boot script's own log line.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
say "scenario 1: unlock at boot"
op host set "$CLIENT" --approval never > /dev/null
reboot_client
wait_for_client
check_data_mounted
log=$(boot_log)
printf '%s\n' "$log"
grep -q 'answered the passphrase prompt for data' <<< "$log" || die "the agent did not answer the prompt"
echo "boot-to-unlock: $(sed -n 's/.*answered the passphrase prompt for data (at \([0-9.]*\) s).*/\1/p' <<< "$log" | head -1) s after kernel start"
echo "PASS scenario 1"
