#!/bin/bash
# The escrow VM: a throwaway TLS certificate for ESCROW_IP, `unlockd server init`, the server as a
# systemd service (the project's unit, with a drop-in for this demo's paths and listen address),
# TOTP for the admin operator, and a one-time enrollment token for the client.
# Demo only: the operator token, TOTP secret and keystore passphrase sit in /root/unlockd-demo.
set -euo pipefail
: "${ESCROW_IP:?}" "${CLIENT_NAME:?}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends openssl oathtool
demo=/root/unlockd-demo
install -d -m 0700 "$demo"
# The service user reaches tls/ through it; server-passphrase stays 0600 (systemd reads it as root).
install -d -m 0755 /etc/unlockd
getent group unlockd > /dev/null || groupadd --system unlockd
getent passwd unlockd > /dev/null || useradd --system --gid unlockd --home-dir /var/lib/unlockd --shell /usr/sbin/nologin unlockd

tls=/etc/unlockd/tls
if [ ! -s "$tls/server.key" ]; then
	install -d -m 0750 -g unlockd "$tls"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
		-keyout "$tls/server.key" -out "$tls/ca.pem" -subj "/CN=unlockd-escrow" \
		-addext "subjectAltName=IP:${ESCROW_IP},DNS:escrow"
	chgrp unlockd "$tls/server.key" "$tls/ca.pem"
	chmod 0640 "$tls/server.key"
	chmod 0644 "$tls/ca.pem"
fi

if [ ! -s /etc/unlockd/server-passphrase ]; then
	umask 077
	head -c 24 /dev/urandom | base64 > /etc/unlockd/server-passphrase
fi
if [ ! -e /var/lib/unlockd/keystore.json ]; then
	install -d -m 0700 -o unlockd -g unlockd /var/lib/unlockd
	unlockd server init --data /var/lib/unlockd --passphrase-file /etc/unlockd/server-passphrase \
		--totp-file "$demo/operator.otpauth" --json > "$demo/init.json"
	chown -R unlockd:unlockd /var/lib/unlockd
	jq -r .token "$demo/init.json" > "$demo/operator.token"
	chmod 0600 "$demo/operator.token"
fi

install -m 0644 /opt/unlockd/systemd/unlockd-server.service /etc/systemd/system/unlockd-server.service
install -d /etc/systemd/system/unlockd-server.service.d
cat > /etc/systemd/system/unlockd-server.service.d/vagrant.conf <<UNIT
[Service]
ExecStart=
ExecStart=/usr/bin/node /opt/unlockd/dist/unlockd.mjs server start --data /var/lib/unlockd --listen ${ESCROW_IP}:8443 --tls-cert ${tls}/ca.pem --tls-key ${tls}/server.key
UNIT
systemctl daemon-reload
systemctl enable unlockd-server.service
systemctl restart unlockd-server.service

# The operator CLI for the scenarios: `unlockd-demo-op COMMAND ...` with --code auto replaced by a
# fresh TOTP code.
install -m 0755 /unlockd/vagrant/provision/escrow-op.sh /usr/local/sbin/unlockd-demo-op
for _ in $(seq 60); do
	unlockd-demo-op hosts > /dev/null 2>&1 && break
	sleep 1
done
unlockd-demo-op hosts > /dev/null

if [ ! -s "$demo/operator.totp" ]; then
	# server init wrote the first operator's factor (an otpauth:// URI) to a 0600 file.
	sed -n 's/.*[?&]secret=\([A-Z2-7]*\).*/\1/p' "$demo/operator.otpauth" > "$demo/operator.totp"
	chmod 0600 "$demo/operator.totp"
	[ -s "$demo/operator.totp" ] || { echo "escrow.sh: could not enroll the operator's TOTP" >&2; exit 1; }
fi

# A fresh one-time token for the client at every provision (tokens expire and work once).
unlockd-demo-op token create --host "$CLIENT_NAME" --ttl 2h --json | jq -r .token > "$demo/client.token"
chmod 0600 "$demo/client.token"
install -m 0644 "$tls/ca.pem" "$demo/ca.pem"
echo "escrow ready: https://${ESCROW_IP}:8443 (operator CLI: sudo unlockd-demo-op hosts)"
