#!/usr/bin/env bash
# A three-node RabbitMQ cluster on loopback, for the cluster test (producer/tests/cluster.rs)
# and for trying quorum queues by hand. It runs next to the shared single node on 5672 and
# never touches it: its own node names (rc1..rc3@localhost), ports, cookie and data.
#
#   scripts/rabbitmq-cluster.sh start        start the nodes that are down, cluster them, wait
#   scripts/rabbitmq-cluster.sh stop         stop every node and delete the cluster's data
#   scripts/rabbitmq-cluster.sh kill N       SIGKILL node N (1..3), wait until its port closes
#   scripts/rabbitmq-cluster.sh restart N    start node N again (it rejoins), wait
#   scripts/rabbitmq-cluster.sh urls         the AMQP URLs, comma separated
#   scripts/rabbitmq-cluster.sh leader Q     the number (1..3) of the node leading quorum queue Q
#   scripts/rabbitmq-cluster.sh ctl N ARGS   rabbitmqctl ARGS against node N
#
# Node N listens for AMQP on 127.0.0.1:(5680+N) and for Erlang distribution on
# 127.0.0.1:(25680+N); each takes ~140 MB. Needs Debian's rabbitmq-server (3.10 here; the
# services script installs it). Runs as the current user, everything under the state
# directory. Environment:
#   SURGE_STATE_DIR          state root (default ~/.local/state/surge); data in ./rabbitmq-cluster/
#   SURGE_CLUSTER_WAIT_SECS  how long to wait for a node to boot (default 120)
set -euo pipefail

NODES=(1 2 3)
BASE_PORT=5680
BASE_DIST_PORT=25680
WAIT_SECS="${SURGE_CLUSTER_WAIT_SECS:-120}"
STATE_DIR="${SURGE_STATE_DIR:-$HOME/.local/state/surge}/rabbitmq-cluster"
RABBIT_BIN=/usr/lib/rabbitmq/bin

say() { echo "rabbitmq-cluster.sh: $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

node_name() { echo "rc$1@localhost"; }
port() { echo $((BASE_PORT + $1)); }
node_dir() { echo "$STATE_DIR/rc$1"; }

# The CLI tools find the cluster's cookie through HOME.
ctl() {
    local n=$1
    shift
    HOME="$STATE_DIR/home" "$RABBIT_BIN/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$(port "$1")") 2>/dev/null; }

prepare() {
    [ -x "$RABBIT_BIN/rabbitmq-server" ] || die "$RABBIT_BIN/rabbitmq-server is missing (apt-get install rabbitmq-server)"
    mkdir -p "$STATE_DIR/home"
    local cookie="$STATE_DIR/home/.erlang.cookie"
    if [ ! -s "$cookie" ]; then
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$cookie"
        chmod 400 "$cookie"
    fi
    : >"$STATE_DIR/empty-env.conf"
    echo '[].' >"$STATE_DIR/enabled_plugins"
}

# Starts node $1 in the background unless its port already answers.
launch() {
    local n=$1 dir
    dir=$(node_dir "$n")
    listening "$n" && return 0
    mkdir -p "$dir/log"
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.local = 127.0.0.1:$(port "$n")
loopback_users = none
vm_memory_high_watermark.relative = 0.2
EOF
    say "starting $(node_name "$n") on 127.0.0.1:$(port "$n")"
    HOME="$STATE_DIR/home" \
        RABBITMQ_CONF_ENV_FILE="$STATE_DIR/empty-env.conf" \
        RABBITMQ_NODENAME="$(node_name "$n")" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$(port "$n")" \
        RABBITMQ_DIST_PORT=$((BASE_DIST_PORT + n)) \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" \
        RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_PID_FILE="$dir/rabbit.pid" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$STATE_DIR/enabled_plugins" \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        setsid "$RABBIT_BIN/rabbitmq-server" >"$dir/log/stdout.log" 2>&1 </dev/null &
    echo $! >"$dir/launcher.pid"
}

# Waits until node $1 runs its app and accepts AMQP connections.
await_node() {
    local n=$1 deadline=$((SECONDS + WAIT_SECS))
    # await_startup fails at once until the node registers with epmd: retry it.
    until ctl "$n" -q await_startup --timeout 10 >/dev/null 2>&1 && listening "$n"; do
        ((SECONDS < deadline)) || die "$(node_name "$n") did not start within ${WAIT_SECS}s; see $(node_dir "$n")/log"
        sleep 1
    done
}

clustered() { ctl "$1" -q cluster_status 2>/dev/null | grep -q "rc1@localhost"; }

# Joins node $1 to rc1. A fresh node sometimes fails its join on this 2-core machine (seen:
# `corrupt_or_missing_cluster_files` from the reset/join right after boot), so a failed
# join kills the node, wipes its data and tries again from a fresh boot, a few times.
join_node() {
    local n=$1 attempt
    for attempt in 1 2 3; do
        clustered "$n" && return 0
        say "joining $(node_name "$n") to rc1@localhost (attempt $attempt)"
        if { ctl "$n" -q stop_app && ctl "$n" -q reset && ctl "$n" -q join_cluster rc1@localhost &&
            ctl "$n" -q start_app; } >>"$(node_dir "$n")/log/join.log" 2>&1; then
            await_node "$n"
            clustered "$n" && return 0
        fi
        say "joining $(node_name "$n") failed; restarting it from empty data"
        kill_vm "$n"
        rm -rf "$(node_dir "$n")/mnesia"
        launch "$n"
        await_node "$n"
    done
    die "joining $(node_name "$n") failed 3 times; see $(node_dir "$n")/log/join.log"
}

start() {
    prepare
    for n in "${NODES[@]}"; do launch "$n"; done
    for n in "${NODES[@]}"; do await_node "$n"; done
    for n in 2 3; do join_node "$n"; done
    say "running: $(urls)"
}

# The OS pid of node $1's Erlang VM ('' when it is not running), found by the node name in
# its environment: the launcher's pid is only the start script's, and RabbitMQ 3.10 does
# not always write RABBITMQ_PID_FILE before it is up.
vm_pid() {
    local want pid
    want="RABBITMQ_NODENAME=$(node_name "$1")"
    for pid in $(pgrep -x beam.smp || true); do
        if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "$want"; then
            echo "$pid"
            return
        fi
    done
}

# SIGKILLs node $1's VM (and its launcher) if it runs, and waits until it is gone.
kill_vm() {
    local n=$1 pid launcher deadline=$((SECONDS + 30))
    pid=$(vm_pid "$n")
    launcher=$(cat "$(node_dir "$n")/launcher.pid" 2>/dev/null || true)
    [ -n "$launcher" ] && kill -KILL "$launcher" 2>/dev/null || true
    [ -n "$pid" ] || return 0
    kill -KILL "$pid" 2>/dev/null || true
    while listening "$n" || kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || die "$(node_name "$n") did not die"
        sleep 0.1
    done
}

kill_node() {
    local n=$1
    [ -n "$(vm_pid "$n")" ] || die "$(node_name "$n") is not running"
    say "SIGKILL $(node_name "$n") (pid $(vm_pid "$n"))"
    kill_vm "$n"
    rm -f "$(node_dir "$n")/rabbit.pid"
}

stop() {
    for n in "${NODES[@]}"; do kill_vm "$n"; done
    # A test cluster: the next start begins from scratch.
    rm -rf "$STATE_DIR"
    say "stopped; data deleted"
}

urls() {
    local list=()
    for n in "${NODES[@]}"; do list+=("amqp://guest:guest@127.0.0.1:$(port "$n")/%2f"); done
    (
        IFS=,
        echo "${list[*]}"
    )
}

# Asks each running node who leads quorum queue $1.
leader() {
    local queue=$1 line
    for n in "${NODES[@]}"; do
        listening "$n" || continue
        line=$(ctl "$n" -q list_queues name leader --no-table-headers 2>/dev/null | awk -v q="$queue" '$1 == q { print $2 }')
        if [ -n "$line" ]; then
            echo "${line#rc}" | cut -d@ -f1
            return
        fi
    done
    die "no running node knows a leader for queue $queue"
}

valid_node() { [[ "${1:-}" =~ ^[123]$ ]] || die "node number 1, 2 or 3 expected, got '${1:-}'"; }

case "${1:-}" in
start) start ;;
stop) stop ;;
kill)
    valid_node "${2:-}"
    kill_node "$2"
    ;;
restart)
    valid_node "${2:-}"
    prepare
    launch "$2"
    await_node "$2"
    ;;
urls) urls ;;
leader) leader "${2:?queue name}" ;;
ctl)
    valid_node "${2:-}"
    n=$2
    shift 2
    ctl "$n" "$@"
    ;;
*) die "usage: $0 start|stop|kill N|restart N|urls|leader QUEUE|ctl N ARGS..." ;;
esac
