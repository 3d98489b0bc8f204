#!/bin/sh
# unlockd with every verb (server, operator and host), run by the Node.js that unlockd-server
# carries (its native modules are built for it; see /usr/share/doc/unlockd-server/README.Debian).
exec /usr/lib/unlockd/server/node /usr/lib/unlockd/server/unlockd.mjs "$@"
