#!/usr/bin/env bash
# Stop the LocalStack that infra/localstack/up.sh started (and its DynamoDB Local Java
# child): SIGTERM, up to LOCALSTACK_STOP_TIMEOUT seconds (20), then SIGKILL. Leaves
# alone any LocalStack it did not start (a Docker container, another checkout's).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STATE=${RUNG_LOCALSTACK_DIR:-$ROOT/.localstack}
PIDFILE="$STATE/localstack.pid"
STOP_TIMEOUT=${LOCALSTACK_STOP_TIMEOUT:-20}

say() { echo "localstack-down: $*" >&2; }

if [ ! -f "$PIDFILE" ]; then
    say "no $PIDFILE: nothing of ours to stop"
    exit 0
fi
PID=$(cat "$PIDFILE")
is_localstack() { tr '\0' ' ' <"/proc/$PID/cmdline" 2>/dev/null | grep -q "localstack.runtime.main"; }
# Its children (DynamoDB Local runs in a session of its own), found before they are
# orphaned: they are stopped with it even if LocalStack dies first.
descendants() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}
alive() {
    local pid
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 0; done
    return 1
}

if ! [[ "$PID" =~ ^[0-9]+$ ]]; then
    say "ignoring $PIDFILE: not a pid"
elif ! kill -0 "$PID" 2>/dev/null; then
    say "LocalStack (pid $PID) was not running"
elif ! is_localstack; then
    say "pid $PID is no longer LocalStack: leaving it alone"
else
    # shellcheck disable=SC2207
    CHILDREN=($(descendants "$PID"))
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq $((STOP_TIMEOUT * 5))); do
        alive "$PID" || break
        sleep 0.2
    done
    # LocalStack stops DynamoDB Local on SIGTERM; whatever is left goes now.
    if alive "$PID" "${CHILDREN[@]}"; then
        kill -TERM "${CHILDREN[@]}" 2>/dev/null || true
        sleep 1
        if alive "$PID" "${CHILDREN[@]}"; then
            say "still running after ${STOP_TIMEOUT}s: SIGKILL"
            kill -KILL "$PID" "${CHILDREN[@]}" 2>/dev/null || true
        fi
    fi
    say "stopped LocalStack (pid $PID${CHILDREN[*]:+; children ${CHILDREN[*]}})"
fi
rm -f "$PIDFILE"
