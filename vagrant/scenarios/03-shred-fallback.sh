#!/bin/bash
# Scenario 3: after `unlockd shred --host client` the server refuses, the boot script says so and
# leaves the prompt to a person; the recovery passphrase typed on the console unlocks the volume.
# Destructive: the host cannot be unlocked by the server again. Re-create the VMs afterwards
# (vagrant destroy -f && vagrant up --no-parallel).
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
say "scenario 3: shredded host, typed passphrase"
pass=$(on_client 'sudo cat /root/unlockd-demo/data.passphrase')
op shred --host "$CLIENT" --code auto --yes --reason "vagrant scenario 3"
reboot_client
wait_for_op "audit --json" "unlock\.deny.*$CLIENT|$CLIENT.*unlock\.deny" > /dev/null
sleep 10 # the boot script prints its message, then askpass keeps waiting for the typed passphrase
type_on_console "$pass"
wait_for_client
check_data_mounted
log=$(boot_log)
printf '%s\n' "$log"
grep -q 'refused to release data' <<< "$log" || die "the boot log does not show the refusal"
grep -q 'answered the passphrase prompt' <<< "$log" && die "the agent answered despite the shred"
echo "PASS scenario 3"
