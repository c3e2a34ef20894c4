#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on localhost, and stop what that took.
#
#   scripts/services.sh [start]   use the servers already running; otherwise
#                                 start the machine's own PostgreSQL cluster, or
#                                 a throwaway instance under var/ from installed
#                                 server binaries; otherwise say exactly what to
#                                 install. Idempotent.
#   scripts/services.sh stop      stop exactly the servers `start` started, as
#                                 recorded in var/services.state; a server that
#                                 was already running is never touched.
#
# SERVICES_PG_PORT (5432), SERVICES_REDIS_PORT (6379) and SERVICES_VAR (var)
# choose the ports and the directory of the state file and throwaway servers.
set -euo pipefail
cd "$(dirname "$0")/.."

pg_port=${SERVICES_PG_PORT:-5432}
redis_port=${SERVICES_REDIS_PORT:-6379}
var_dir=$(mkdir -p "${SERVICES_VAR:-var}" && cd "${SERVICES_VAR:-var}" && pwd)
state=$var_dir/services.state

pg_up() { python3 - "$pg_port" <<'PY'
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}
redis_up() { python3 - "$redis_port" <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
    s.sendall(b"PING\r\n"); ok = s.recv(16).startswith(b"+PONG"); s.close()
    sys.exit(0 if ok else 1)
except OSError:
    sys.exit(1)
PY
}
pg_down() { ! pg_up; }
redis_down() { ! redis_up; }
wait_for() { for _ in $(seq 1 60); do "$1" && return 0; sleep 0.5; done; return 1; }

as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

# One line per server this script started: "<kind> <port> <how to find it>".
remember() { echo "$*" >>"$state"; }

# The machine's cluster configured on our port, when it is down: "<version> <name>".
machine_cluster() {
  command -v pg_lsclusters >/dev/null || return 0
  pg_lsclusters --no-header 2>/dev/null |
    awk -v port="$pg_port" '$3 == port && $4 == "down" { print $1, $2; exit }'
}

start_postgres() {
  local cluster
  cluster=$(machine_cluster)
  if [ -n "$cluster" ]; then
    echo "services: starting the machine's PostgreSQL cluster $cluster"
    # shellcheck disable=SC2086 # "<version> <name>" are two arguments
    if pg_ctlcluster --skip-systemctl-redirect $cluster start && wait_for pg_up; then
      remember postgres-cluster "$pg_port" "$cluster"
      return 0
    fi
  fi
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  [ -z "$bin" ] && bin=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
  if [ -x "$bin/initdb" ]; then
    local dir=$var_dir/pg
    echo "services: starting a throwaway PostgreSQL in $dir on port $pg_port"
    if [ ! -f "$dir/PG_VERSION" ]; then
      mkdir -p "$dir"; [ "$(id -u)" = 0 ] && chown postgres "$dir"
      as_postgres "$bin/initdb" -D "$dir" -U postgres --auth=trust >/dev/null
    fi
    as_postgres "$bin/pg_ctl" -D "$dir" -o "-p $pg_port -k /tmp -c listen_addresses=127.0.0.1" \
      -l "$dir/log" start >/dev/null
    remember postgres-throwaway "$pg_port" "$bin" "$dir"
    wait_for pg_up && return 0
    echo "services: the throwaway PostgreSQL did not answer on port $pg_port; see $dir/log" >&2
    exit 1
  fi
  echo "services: PostgreSQL is not reachable on 127.0.0.1:$pg_port and no server is installed." >&2
  echo "          Install it (Debian: apt-get install postgresql) or start one with trust auth for user postgres." >&2
  exit 1
}

start_redis() {
  if command -v redis-server >/dev/null; then
    echo "services: starting a throwaway Redis (no persistence) on port $redis_port"
    local pidfile=$var_dir/redis-$redis_port.pid
    redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
      --dir "$var_dir" --logfile "$var_dir/redis-$redis_port.log" --pidfile "$pidfile"
    remember redis "$redis_port" "$pidfile"
    wait_for redis_up && return 0
    echo "services: the throwaway Redis did not answer on port $redis_port; see $var_dir/redis-$redis_port.log" >&2
    exit 1
  fi
  echo "services: Redis is not reachable on 127.0.0.1:$redis_port and redis-server is not installed." >&2
  echo "          Install it (Debian: apt-get install redis-server)." >&2
  exit 1
}

# Stop one recorded Redis: only a redis-server on the recorded port whose pid
# its own pidfile holds (a stale pidfile may name a reused pid).
stop_redis() {
  local port=$1 pidfile=$2 pid
  pid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -n "$pid" ] && grep -qa "^redis-server .*:$port\b" "/proc/$pid/cmdline" 2>/dev/null; then
    echo "services: stopping the Redis started on port $port"
    kill -TERM "$pid"
    redis_port=$port
    wait_for redis_down
  fi
}

stop_postgres() {
  local kind=$1 port=$2; shift 2
  echo "services: stopping the PostgreSQL started on port $port"
  if [ "$kind" = postgres-cluster ]; then
    pg_ctlcluster --skip-systemctl-redirect "$1" "$2" stop
  elif [ -f "$2/postmaster.pid" ]; then
    as_postgres "$1/pg_ctl" -D "$2" -m fast -w stop >/dev/null
  fi
}

stop() {
  [ -f "$state" ] || { echo "services: nothing to stop"; return 0; }
  local kind port rest
  # Newest first: undo in the reverse order of starting.
  tac "$state" | while read -r kind port rest; do
    # shellcheck disable=SC2086 # the recorded fields are separate arguments
    case $kind in
      redis) stop_redis "$port" $rest ;;
      postgres-cluster|postgres-throwaway) stop_postgres "$kind" "$port" $rest ;;
    esac
  done
  rm -f "$state"
}

case ${1:-start} in
  start)
    pg_up || start_postgres
    redis_up || start_redis
    echo "services: PostgreSQL and Redis are up"
    ;;
  stop) stop ;;
  *) echo "usage: scripts/services.sh [start|stop]" >&2; exit 2 ;;
esac
