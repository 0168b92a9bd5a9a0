# Shared by scripts/bench and scripts/soak (sourced, not run): the release build, the machine's
# description, and CaptureLink servers started on 127.0.0.1 in temporary data dirs, stopped
# (SIGTERM to the pid started here) and their data dirs removed when the script exits.
#
# The caller sets OUT (where logs and results go) and may set CL_PORT (default 18080) before
# sourcing, and may change LIMITS afterwards (the server's protective limits, raised or off by
# default, else the load generator measures them).
#
# BENCH_POSTGRES=postgres://…/postgres (a server's admin URL, e.g. what scripts/pg-server prints)
# runs every CaptureLink server on a fresh PostgreSQL database there instead of SQLite; the
# databases are dropped at the end.

KEY="clk_bench_0123456789abcdefghijklmnopqrstuvwxyz0123456789"
CL_PORT="${CL_PORT:-18080}"
CL=target/release/capturelink
LOADGEN=target/release/capturelink-loadgen
LIMITS=(--ws-rate 1000000 --ws-burst 1000000 --ip-rate 0 --key-rate 0 --max-ws-per-ip 0)

mkdir -p "$OUT"
PIDS=()
DIRS=()
DATABASES=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    for d in "${DIRS[@]}"; do
        rm -rf "$d"
    done
    for db in "${DATABASES[@]}"; do
        psql -q "$BENCH_POSTGRES" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*" >&2; }

# port_free PORT: fails if something answers there already (a server left from an earlier run
# would otherwise be measured in place of the one about to start).
port_free() {
    if curl -fsS "http://127.0.0.1:$1/healthz" >/dev/null 2>&1; then
        echo "error: something already answers on port $1; stop it first" >&2
        exit 1
    fi
}

wait_healthz() {
    local port=$1 i
    for i in $(seq 1 300); do
        if curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "error: nothing answers on port $port" >&2
    exit 1
}

# start_capturelink NAME: starts the release server in a fresh data dir; sets CL_PID.
start_capturelink() {
    local dir
    dir="$(mktemp -d /tmp/capturelink-bench.XXXXXX)"
    DIRS+=("$dir")
    port_free "$CL_PORT"
    local database=()
    if [ -n "${BENCH_POSTGRES:-}" ]; then
        local db
        db="bench_$(basename "$dir" | tr -dc 'a-zA-Z0-9' | tr 'A-Z' 'a-z')"
        psql -q "$BENCH_POSTGRES" -c "CREATE DATABASE $db" >/dev/null
        DATABASES+=("$db")
        database=(--database-url "${BENCH_POSTGRES%/postgres}/$db")
    fi
    "$CL" serve --listen "127.0.0.1:$CL_PORT" --data-dir "$dir" --api-key "$KEY" "${LIMITS[@]}" \
        "${database[@]}" >"$OUT/$1.server.log" 2>&1 &
    CL_PID=$!
    PIDS+=("$CL_PID")
    wait_healthz "$CL_PORT"
}

stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# Thousands of sockets on each side of loopback: raise the soft limit of open files as far as the
# hard one allows (as root with CAP_SYS_RESOURCE, the hard one too).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

build_release() {
    step "release build"
    cargo build --release --locked --bin capturelink -p capturelink
    cargo build --release --locked -p capturelink-loadgen
}

# describe_machine FILE: the machine, the build and the load, printed and kept in FILE.
describe_machine() {
    step "machine"
    {
        echo "date: $(date -u +%FT%TZ)"
        echo "nproc: $(nproc)"
        echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
        echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
        echo "kernel: $(uname -sr)"
        echo "rustc: $(rustc --version)"
        echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
        echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "open files limit: $(ulimit -n) (hard $(ulimit -Hn))"
        if [ -n "${BENCH_POSTGRES:-}" ]; then
            echo "database: PostgreSQL $(psql -tA "$BENCH_POSTGRES" -c 'SHOW server_version')"
        else
            echo "database: SQLite (the data dir)"
        fi
    } | tee "$1"
}
