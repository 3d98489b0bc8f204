#!/bin/bash
# unlockd-demo-op: the operator CLI on the escrow VM with the demo's URL, token and CA, and
# `--code auto` replaced by a TOTP code (oathtool) that was not used before, given on stdin (codes
# never go on the command line): a code works once, so it waits for the next 30 s step when this
# one is spent.
set -euo pipefail
demo=/root/unlockd-demo
ip=$(sed -n 's/.*--listen \([0-9.]*\):8443.*/\1/p' /etc/systemd/system/unlockd-server.service.d/vagrant.conf)
export UNLOCKD_URL="https://${ip}:8443" UNLOCKD_TOKEN_FILE="$demo/operator.token" UNLOCKD_CA=/etc/unlockd/tls/ca.pem
args=()
code=
while [ $# -gt 0 ]; do
	if [ "$1" = --code ] && [ "${2:-}" = auto ]; then
		step=$(($(date +%s) / 30))
		last=$(cat "$demo/totp.last" 2> /dev/null || echo 0)
		if [ "$step" -le "$last" ]; then
			sleep $(((last + 1) * 30 - $(date +%s) + 1))
			step=$(($(date +%s) / 30))
		fi
		echo "$step" > "$demo/totp.last"
		code=$(oathtool --totp -b "$(cat "$demo/operator.totp")")
		shift 2
	else
		args+=("$1")
		shift
	fi
done
if [ -n "$code" ]; then
	printf '%s\n' "$code" | exec /usr/local/bin/unlockd "${args[@]}"
fi
exec /usr/local/bin/unlockd "${args[@]}"
