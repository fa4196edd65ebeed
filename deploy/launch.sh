#!/usr/bin/env bash
# Starts one Nursery process of a role, in the foreground (exec: the pid is the server's).
#
#   deploy/launch.sh ROLE PORT
#
# ROLE is all, command, query or events. Every process of one deployment shares
# NURSERY_DATABASE_URL (PostgreSQL), NURSERY_SECRET (so a token from one is good at all) and
# NURSERY_ADMIN_TOKEN. NURSERY_BIN picks the binary (default: nursery on the PATH).
set -euo pipefail
role=${1:?role: all, command, query or events}
port=${2:?port}
export NURSERY_ROLE=$role
export NURSERY_BIND=${NURSERY_HOST:-127.0.0.1}:$port
exec "${NURSERY_BIN:-nursery}" serve
