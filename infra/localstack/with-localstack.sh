#!/usr/bin/env bash
# Run a command with LocalStack up, e.g. `infra/localstack/with-localstack.sh .venv/bin/pytest -q`:
# bring LocalStack up (or reuse a healthy one), run the command with
# RUNG_LOCALSTACK_ENDPOINT set, stop LocalStack again if this script started it (also
# when the command fails or is interrupted), and exit with the command's status.
#
# RUNG_LOCALSTACK=0 runs the command without LocalStack (its tests are then skipped).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ENDPOINT="http://127.0.0.1:${LOCALSTACK_PORT:-4566}"

if [ "${RUNG_LOCALSTACK:-1}" = 0 ]; then
    echo "with-localstack: RUNG_LOCALSTACK=0: running without LocalStack" >&2
    exec "$@"
fi

started=0
if ! python3 "$HERE/probe.py" health "$ENDPOINT" >/dev/null 2>&1; then
    started=1
fi
cleanup() {
    if [ "$started" = 1 ]; then
        "$HERE/down.sh" || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

begin=$(date +%s)
if ! "$HERE/up.sh"; then
    echo "with-localstack: LocalStack did not come up (RUNG_LOCALSTACK=0 runs without it)" >&2
    exit 1
fi
echo "with-localstack: LocalStack ready in $(($(date +%s) - begin))s" >&2

RUNG_LOCALSTACK_ENDPOINT="$ENDPOINT" "$@"
exit $?
