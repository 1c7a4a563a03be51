# Shared by up.sh and down.sh: locations, settings from .env and process helpers.
# shellcheck shell=bash disable=SC2034  # the variables are used by up.sh and down.sh

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STACK="${STACK_DIR:-$ROOT/.stack}"  # a second stack (other ports in the environment) may live elsewhere
JARS="$STACK/jars"
DATA="$STACK/data"
LOGS="$STACK/logs"
RUN="$STACK/run"
CONF="$STACK/conf"
PY="${STACK_PYTHON:-$ROOT/.venv/bin/python}"
MLFLOW_BIN="${STACK_MLFLOW:-$ROOT/.venv-mlflow/bin/mlflow}"
# Seconds to wait for each service: the machine may be small and busy.
TIMEOUT="${STACK_TIMEOUT:-180}"

log() { printf '%s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Load .env; variables already in the environment win, as with Docker Compose.
load_env() {
  local line key value
  while IFS= read -r line || [[ -n $line ]]; do
    [[ $line =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
    key="${BASH_REMATCH[1]}"
    value="${BASH_REMATCH[2]}"
    # Drop one pair of surrounding quotes, as Compose does.
    if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then value="${BASH_REMATCH[1]}"; fi
    [[ -v $key ]] || export "$key=$value"
  done <"$ROOT/.env"
}

# host:port pieces of the endpoints in .env.
url_host() { local x="${1#*://}"; x="${x%%/*}"; printf '%s' "${x%:*}"; }
url_port() { local x="${1#*://}"; x="${x%%/*}"; printf '%s' "${x##*:}"; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# A pid file counts only while its process is alive and still one of ours: every
# service started here has a path under .stack on its command line, which guards
# against a pid reused after a reboot.
running_pid() {
  local file="$RUN/$1.pid" pid
  [[ -s $file ]] || return 1
  pid="$(<"$file")"
  [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$STACK" || return 1
  printf '%s' "$pid"
}

# Start a long-running command in its own session, output to .stack/logs/NAME.log.
spawn() {
  local name="$1"; shift
  printf '\n=== %s start %s\n' "$name" "$(date -Is)" >>"$LOGS/$name.log"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

# Poll CHECK (a command) until it succeeds. Fails early when the service's process
# (pid file .stack/run/PIDNAME.pid) is gone, and at the timeout; either way it names the
# service and its log. Only liveness is asked here, not running_pid's cmdline check: just
# after spawn the child may not have exec'd yet, and its cmdline is still this shell's.
wait_for() {
  local name="$1" pidname="$2" logfile="$3"; shift 3
  local deadline=$((SECONDS + TIMEOUT)) pid
  pid="$(<"$RUN/$pidname.pid")"
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || die "$name is not running; see $logfile:
$(tail -n 15 "$logfile" 2>/dev/null)"
    ((SECONDS < deadline)) || die "$name is not ready after ${TIMEOUT}s; see $logfile:
$(tail -n 15 "$logfile" 2>/dev/null)"
    sleep 2
  done
}

# Stop a service started by spawn: TERM, then KILL if it lingers.
stop_pid() {
  local name="$1" pid i
  if pid="$(running_pid "$name")"; then
    # spawn made it a session (and group) leader: the signal reaches its children too.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
    log "$name: stopped"
  else
    log "$name: not running"
  fi
  rm -f "$RUN/$name.pid"
}

# Newest PostgreSQL server binaries from Debian's packages.
pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [[ -x $dir/pg_ctl ]]; then printf '%s\n' "$dir"; fi
  done | sort -V | tail -n 1
}
