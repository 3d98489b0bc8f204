#!/bin/bash
# Both VMs: Node.js 20 (bookworm ships 18; unlockd needs 20.19+) from NodeSource's signed apt
# repository, then unlockd built from the source tree Vagrant copied to /unlockd.
# Re-running it is safe: each step checks what is already there.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
NODE_MAJOR=20

apt-get update -q
apt-get install -y -q --no-install-recommends ca-certificates curl gnupg jq cryptsetup-bin

if ! node --version 2> /dev/null | grep -q "^v${NODE_MAJOR}\."; then
	install -d -m 0755 /etc/apt/keyrings
	curl -fsSL https://deb.nodesource.com/gpgkey/nodesource-repo.gpg.key | gpg --dearmor --yes -o /etc/apt/keyrings/nodesource.gpg
	echo "deb [signed-by=/etc/apt/keyrings/nodesource.gpg] https://deb.nodesource.com/node_${NODE_MAJOR}.x nodistro main" > /etc/apt/sources.list.d/nodesource.list
	apt-get update -q
	apt-get install -y -q nodejs
fi
# shellcheck disable=SC2016 # JavaScript, not shell
node -e 'const [a, b] = process.versions.node.split(".").map(Number); if (a < 20 || (a === 20 && b < 19)) { console.error(`Node ${process.version} is too old; unlockd needs 20.19+`); process.exit(1) }'

# better-sqlite3 (server only) may need a compiler when no prebuilt binary matches.
apt-get install -y -q --no-install-recommends python3 make g++
rm -rf /opt/unlockd
cp -a /unlockd /opt/unlockd
cd /opt/unlockd
npm ci --no-audit --no-fund
npm run build
install -D -m 0644 dist/unlockd-agent.mjs /usr/lib/unlockd/unlockd-agent.mjs
# `unlockd` for the operator and the host verbs (the full CLI needs the npm packages next to it).
cat > /usr/local/bin/unlockd <<'SH'
#!/bin/sh
exec /usr/bin/node /opt/unlockd/dist/unlockd.mjs "$@"
SH
chmod 0755 /usr/local/bin/unlockd
unlockd --version
