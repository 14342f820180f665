#!/usr/bin/env bash
# Makes sure a Tansu broker (Kafka protocol) listens on 127.0.0.1:9092, for tests and demos.
#
#   scripts/tansu.sh          install tansu if missing, start it if nothing listens, wait
#
# Idempotent: with a broker already listening it does nothing; with `tansu` on PATH (or in
# ~/.cargo/bin) it skips the ~15 minute install. Data lives in a SQLite file under the state
# directory, so a restarted broker keeps its topics and messages.
#
# Tansu 0.6's SQLite schema has no index on record headers, so every fetched message scans
# all headers ever stored and the broker slows down quadratically as data accumulates (a
# test suite went from 6 s to 100 s+). This script adds the two missing indexes (with
# sqlite3 or python3) each time it runs; Tansu's own queries pick them up.
#
# Environment:
#   SURGE_STATE_DIR        state root (default ~/.local/state/surge); Tansu uses ./tansu/
#   SURGE_TANSU_PORT       port on 127.0.0.1 (default 9092)
#   SURGE_TANSU_WAIT_SECS  how long to wait for the port after starting (default 60)
set -euo pipefail

HOST=127.0.0.1
PORT="${SURGE_TANSU_PORT:-9092}"
WAIT_SECS="${SURGE_TANSU_WAIT_SECS:-60}"
STATE_DIR="${SURGE_STATE_DIR:-$HOME/.local/state/surge}"
TANSU_DIR="$STATE_DIR/tansu"
LOG="$TANSU_DIR/tansu.log"
PID_FILE="$TANSU_DIR/tansu.pid"
DB="$TANSU_DIR/data/tansu.db"
# How long to wait for someone else's `cargo install tansu` to finish.
INSTALL_WAIT_SECS=3600

export PATH="$HOME/.cargo/bin:$PATH"

say() { echo "tansu.sh: $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

# True when something accepts TCP connections on $HOST:$PORT (bash's /dev/tcp, no tools).
listening() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

other_install_running() { pgrep -f 'cargo install tansu' >/dev/null 2>&1; }

ensure_binary() {
    command -v tansu >/dev/null 2>&1 && return 0
    mkdir -p "$STATE_DIR"
    if other_install_running; then
        say "a 'cargo install tansu' is already running; waiting for it (up to ${INSTALL_WAIT_SECS}s)"
        local waited=0
        while other_install_running && ((waited < INSTALL_WAIT_SECS)); do
            sleep 10
            waited=$((waited + 10))
        done
        command -v tansu >/dev/null 2>&1 && return 0
        other_install_running && die "the other tansu install is still running after ${INSTALL_WAIT_SECS}s"
        say "the other install ended without a tansu binary; installing it here"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo is needed to install tansu (https://rustup.rs)"
    # Serialise concurrent runs of this script: the second one waits, then finds the binary.
    exec 9>"$STATE_DIR/tansu-install.lock"
    flock 9
    if ! command -v tansu >/dev/null 2>&1; then
        say "installing tansu with cargo (about 15 minutes on 2 cores)"
        cargo install tansu --locked --no-default-features --features dynostore,libsql \
            || die "cargo install tansu failed"
    fi
    flock -u 9
    command -v tansu >/dev/null 2>&1 || die "tansu is still not on PATH after installing"
}

# Adds the indexes Tansu's schema lacks (see the header). Idempotent; needs the schema,
# which Tansu creates at start-up.
add_indexes() {
    [[ -f "$DB" ]] || return 0
    local sql="PRAGMA busy_timeout=10000;
CREATE INDEX IF NOT EXISTS surge_header_record ON header (topition, offset_id);
CREATE INDEX IF NOT EXISTS surge_watermark_topition ON watermark (topition);"
    local tries=0
    while ((tries < 10)); do
        if command -v sqlite3 >/dev/null 2>&1; then
            sqlite3 "$DB" "$sql" >/dev/null 2>&1 && return 0
        elif command -v python3 >/dev/null 2>&1; then
            python3 -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1], timeout=10).executescript(sys.argv[2])' \
                "$DB" "$sql" 2>/dev/null && return 0
        else
            say "WARNING: neither sqlite3 nor python3 found: Tansu will slow down as data grows"
            return 0
        fi
        tries=$((tries + 1))
        sleep 1
    done
    say "WARNING: could not add indexes to $DB: Tansu will slow down as data grows"
}

main() {
    if listening; then
        say "a broker already listens on $HOST:$PORT"
        add_indexes
        return 0
    fi
    ensure_binary
    # It may have come up while we were installing.
    if listening; then
        say "a broker already listens on $HOST:$PORT"
        add_indexes
        return 0
    fi

    mkdir -p "$TANSU_DIR/data"
    cd "$TANSU_DIR"
    # Tansu resolves sqlite:// paths against its working directory: this is
    # $TANSU_DIR/data/tansu.db.
    say "starting tansu on $HOST:$PORT (data $TANSU_DIR/data/tansu.db, log $LOG)"
    nohup tansu broker \
        --listener-url "tcp://$HOST:$PORT" \
        --advertised-listener-url "tcp://$HOST:$PORT" \
        --storage-engine "sqlite://data/tansu.db" \
        >>"$LOG" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$PID_FILE"

    local deadline=$((SECONDS + WAIT_SECS))
    until listening; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$LOG" >&2 || true
            die "tansu (pid $pid) exited before listening on $HOST:$PORT; see $LOG"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$LOG" >&2 || true
            die "tansu (pid $pid) did not listen on $HOST:$PORT within ${WAIT_SECS}s; see $LOG"
        fi
        sleep 0.5
    done
    add_indexes
    say "tansu is up (pid $pid)"
}

main "$@"
