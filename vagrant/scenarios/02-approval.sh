#!/bin/bash
# Scenario 2: with `approval: always`, the client waits at boot until an operator approves with a
# TOTP code, then unlocks.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
say "scenario 2: approval needed"
op host set "$CLIENT" --approval always > /dev/null
trap 'op host set "$CLIENT" --approval never > /dev/null || true' EXIT
reboot_client
pending=$(wait_for_op "approvals --json" "\"host\": \"$CLIENT\"")
id=$(jq -r --arg h "$CLIENT" '[.[] | select(.host == $h and .state == "pending")][0].id' <<< "$pending")
if [ -z "$id" ] || [ "$id" = null ]; then die "no pending approval for $CLIENT"; fi
echo "approving $id"
op approve "$id" --code auto
wait_for_client
check_data_mounted
boot_log | grep -q 'answered the passphrase prompt for data' || die "the agent did not answer the prompt"
echo "PASS scenario 2"
