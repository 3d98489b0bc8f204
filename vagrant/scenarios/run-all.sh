#!/bin/bash
# Run the scenarios in order (the last one shreds the client).
set -euo pipefail
here=$(dirname "$0")
"$here/01-unlock.sh"
"$here/02-approval.sh"
"$here/03-shred-fallback.sh"
echo "all scenarios passed"
