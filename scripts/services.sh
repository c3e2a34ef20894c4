#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on localhost.
#
# Uses the ones already running; otherwise starts the machine's own cluster,
# or a throwaway instance under var/ from installed server binaries; otherwise
# says exactly what to install. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var

pg_up() { python3 - <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}
redis_up() { python3 - <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", 6379), timeout=1)
    s.sendall(b"PING\r\n"); ok = s.recv(16).startswith(b"+PONG"); s.close()
    sys.exit(0 if ok else 1)
except OSError:
    sys.exit(1)
PY
}
wait_for() { for _ in $(seq 1 60); do "$1" && return 0; sleep 0.5; done; return 1; }

as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start_postgres() {
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql)" ]; then
    echo "services: starting the machine's PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start || true
    wait_for pg_up && return 0
  fi
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  [ -z "$bin" ] && bin=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
  if [ -x "$bin/initdb" ]; then
    echo "services: starting a throwaway PostgreSQL in var/pg"
    local dir=$PWD/var/pg
    if [ ! -f "$dir/PG_VERSION" ]; then
      mkdir -p "$dir"; [ "$(id -u)" = 0 ] && chown postgres "$dir"
      as_postgres "$bin/initdb" -D "$dir" -U postgres --auth=trust >/dev/null
    fi
    as_postgres "$bin/pg_ctl" -D "$dir" -o "-p 5432 -k /tmp -c listen_addresses=127.0.0.1" -l "$dir/log" start >/dev/null
    wait_for pg_up && return 0
  fi
  echo "services: PostgreSQL is not reachable on 127.0.0.1:5432 and no server is installed." >&2
  echo "          Install it (Debian: apt-get install postgresql) or start one with trust auth for user postgres." >&2
  exit 1
}

start_redis() {
  if command -v redis-server >/dev/null; then
    echo "services: starting a throwaway Redis (no persistence)"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir "$PWD/var" --logfile "$PWD/var/redis.log"
    wait_for redis_up && return 0
  fi
  echo "services: Redis is not reachable on 127.0.0.1:6379 and redis-server is not installed." >&2
  echo "          Install it (Debian: apt-get install redis-server)." >&2
  exit 1
}

pg_up || start_postgres
redis_up || start_redis
echo "services: PostgreSQL and Redis are up"
