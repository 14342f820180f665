#!/usr/bin/env bash
# A three-broker Apache Kafka cluster (KRaft; every node is broker + controller, all three
# vote) on loopback, for the Kafka cluster test (producer/tests/kafka_cluster.rs) and for
# trying replication by hand. Each node is started by scripts/kafka.sh (SURGE_KAFKA_NODE=N
# SURGE_KAFKA_NODES=3), which gives topics replication factor 3 and min.insync.replicas 2.
# It runs next to the shared single node on 9092/9093 and never touches it: its own ports
# and data directory; only the jars are shared.
#
#   scripts/kafka-cluster.sh start       stop what an earlier run left, delete its data,
#                                        start the three nodes, wait until all serve
#   scripts/kafka-cluster.sh stop        SIGKILL every node (by the pid kafka.sh recorded),
#                                        wait until they are gone, delete the data
#   scripts/kafka-cluster.sh kill N      SIGKILL node N (1..3), wait until it is gone
#   scripts/kafka-cluster.sh restart N   start node N again on its data, wait until it serves
#   scripts/kafka-cluster.sh bootstrap   the bootstrap servers, comma separated
#   scripts/kafka-cluster.sh pids        "N PID" per running node
#
# Node N serves clients on 127.0.0.1:(PORT + 2(N-1)) and its controller on the next port:
# 9192/9193, 9194/9195, 9196/9197 by default. Environment:
#   SURGE_STATE_DIR           state root (default ~/.local/state/surge); the jars come from
#                             its kafka/<version>/libs (kafka.sh resolves them once)
#   SURGE_KAFKA_CLUSTER_DIR   the cluster's data (default $SURGE_STATE_DIR/kafka-cluster)
#   SURGE_KAFKA_CLUSTER_PORT  client port of node 1 (default 9192)
#   SURGE_KAFKA_HEAP          JVM heap per node (default 384m)
#   SURGE_KAFKA_WAIT_SECS     how long to wait for a node to serve (default 120)
set -euo pipefail

SCRIPTS="$(cd "$(dirname "$0")" && pwd)"
NODES=(1 2 3)
HOST=127.0.0.1
STATE_DIR="${SURGE_STATE_DIR:-$HOME/.local/state/surge}"
CLUSTER_DIR="${SURGE_KAFKA_CLUSTER_DIR:-$STATE_DIR/kafka-cluster}"
BASE_PORT="${SURGE_KAFKA_CLUSTER_PORT:-9192}"

say() { echo "kafka-cluster.sh: $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

[[ "$BASE_PORT" =~ ^[1-9][0-9]{0,4}$ ]] && ((BASE_PORT + 6 <= 65535)) \
    || die "SURGE_KAFKA_CLUSTER_PORT must be a port number, not '$BASE_PORT'"
((BASE_PORT + 5 < 9092 || BASE_PORT > 9093)) \
    || die "ports $BASE_PORT..$((BASE_PORT + 5)) overlap the shared single node's 9092/9093"

# kafka.sh acting on node $1 of this cluster: ARGS.
node() {
    local n=$1
    shift
    SURGE_STATE_DIR="$CLUSTER_DIR" SURGE_KAFKA_JARS="$STATE_DIR/kafka" \
        SURGE_KAFKA_PORT="$BASE_PORT" SURGE_KAFKA_NODES=${#NODES[@]} SURGE_KAFKA_NODE="$n" \
        bash "$SCRIPTS/kafka.sh" "$@"
}

check_node() { [[ "$1" =~ ^[1-3]$ ]] || die "no node '$1' (1..3)"; }

listening() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# SIGKILLs every node kafka.sh started (its pid file and command line say so); waits.
kill_all() {
    local n
    for n in "${NODES[@]}"; do
        if node "$n" pid >/dev/null 2>&1; then
            node "$n" kill
        fi
    done
}

start() {
    kill_all
    rm -rf "$CLUSTER_DIR/kafka"
    local port
    for ((port = BASE_PORT; port < BASE_PORT + 2 * ${#NODES[@]}; port++)); do
        listening "$port" && die "something else listens on $HOST:$port; set SURGE_KAFKA_CLUSTER_PORT"
    done
    # Together: each node waits until the quorum (two of three voters) elects a leader.
    local pids=() n failed=0
    for n in "${NODES[@]}"; do
        node "$n" start &
        pids+=($!)
    done
    for n in "${!pids[@]}"; do
        wait "${pids[$n]}" || failed=1
    done
    if ((failed)); then
        kill_all
        die "the cluster did not start; logs in $CLUSTER_DIR/kafka/3-node/node-*/kafka.log"
    fi
    say "running: $(bootstrap)"
}

bootstrap() {
    local n out=""
    for n in "${NODES[@]}"; do
        out+="${out:+,}$HOST:$((BASE_PORT + 2 * (n - 1)))"
    done
    echo "$out"
}

pids() {
    local n pid
    for n in "${NODES[@]}"; do
        if pid=$(node "$n" pid 2>/dev/null); then
            echo "$n $pid"
        fi
    done
}

case "${1:-}" in
start) start ;;
stop)
    kill_all
    rm -rf "$CLUSTER_DIR/kafka"
    say "stopped; data deleted"
    ;;
kill)
    check_node "${2:-}"
    node "$2" kill
    ;;
restart)
    check_node "${2:-}"
    node "$2" start
    ;;
bootstrap) bootstrap ;;
pids) pids ;;
*) die "usage: $0 start|stop|kill N|restart N|bootstrap|pids" ;;
esac
