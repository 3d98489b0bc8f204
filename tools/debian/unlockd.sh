#!/bin/sh
# unlockd host verbs (enroll, unlock, agent, recover, initramfs check), run by the
# distribution's Node.js. The escrow server's verbs are in unlockd-server (package unlockd-server).
exec /usr/bin/node /usr/lib/unlockd/unlockd-agent.mjs "$@"
