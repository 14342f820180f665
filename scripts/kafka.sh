#!/usr/bin/env bash
# Makes sure an Apache Kafka broker (KRaft, no ZooKeeper) serves on 127.0.0.1:9092, for
# tests and demos. The jars come from Maven Central (scripts/kafka/pom.xml pins the
# version); no Docker, no tarball.
#
#   scripts/kafka.sh [start]   resolve the jars once, format the storage once, start the
#                              node if nothing listens on its port, wait until it serves
#   scripts/kafka.sh stop      stop the node this script started (SIGTERM: clean shutdown)
#   scripts/kafka.sh kill      SIGKILL it (fault tests), wait until it is gone
#   scripts/kafka.sh status    exit 0 when a broker listens on the node's port
#   scripts/kafka.sh pid       print the pid of the node this script started (exit 1: none runs)
#
# Idempotent: with a broker already listening on the port, `start` does nothing. Warm
# (jars cached, storage formatted) it only starts the JVM: a few seconds.
#
# One node runs as combined broker + controller. The same script starts node N of an
# M-node cluster on one host (SURGE_KAFKA_NODE=N SURGE_KAFKA_NODES=M): node N listens on
# PORT + 2(N-1) with its controller on the next port (9092/9093, 9094/9095, 9096/9097), all
# nodes are voters, replication factors become min(3, M) and min.insync.replicas one less
# (at least 1). Start all nodes of a cluster together: a lone voter of three cannot elect a
# leader, so each waits for quorum. scripts/kafka-cluster.sh runs a 3-node cluster this way
# on its own ports (9192-9197) and data directory, next to the single node on 9092.
#
# Environment:
#   SURGE_STATE_DIR        state root (default ~/.local/state/surge); Kafka uses ./kafka/:
#                            kafka/<version>/libs/        the jars (shared by all nodes;
#                                                         see SURGE_KAFKA_JARS)
#                            kafka/<M>-node/cluster.id    the cluster id, made once
#                            kafka/<M>-node/node-<N>/     config, data/, kafka.log, kafka.pid
#   SURGE_KAFKA_JARS       where the jars live instead (<dir>/<version>/libs; default
#                          \$SURGE_STATE_DIR/kafka), so a cluster with its own state dir
#                          reuses the jars already resolved
#   SURGE_KAFKA_PORT       client port of node 1 on 127.0.0.1 (default 9092)
#   SURGE_KAFKA_WAIT_SECS  how long to wait for the node to serve after starting (default 120)
#   SURGE_KAFKA_HEAP       JVM heap (default 384m)
#   SURGE_KAFKA_NODE       which node to act on, 1-based (default 1)
#   SURGE_KAFKA_NODES      how many nodes the cluster has (default 1)
set -euo pipefail

SCRIPTS="$(cd "$(dirname "$0")" && pwd)"
POM="$SCRIPTS/kafka/pom.xml"
HOST=127.0.0.1
BASE_PORT="${SURGE_KAFKA_PORT:-9092}"
WAIT_SECS="${SURGE_KAFKA_WAIT_SECS:-120}"
HEAP="${SURGE_KAFKA_HEAP:-384m}"
NODE="${SURGE_KAFKA_NODE:-1}"
NODES="${SURGE_KAFKA_NODES:-1}"
STATE_DIR="${SURGE_STATE_DIR:-$HOME/.local/state/surge}"
KAFKA_ROOT="$STATE_DIR/kafka"
JARS_ROOT="${SURGE_KAFKA_JARS:-$KAFKA_ROOT}"

say() { echo "kafka.sh: $*" >&2; }
die() {
    say "ERROR: $*"
    exit 1
}

[[ "$NODES" =~ ^[1-9]$ ]] || die "SURGE_KAFKA_NODES must be 1 to 9, not '$NODES'"
[[ "$NODE" =~ ^[1-9]$ ]] && ((NODE <= NODES)) || die "SURGE_KAFKA_NODE must be 1 to $NODES, not '$NODE'"
[[ "$BASE_PORT" =~ ^[1-9][0-9]{0,4}$ ]] && ((BASE_PORT + 2 * NODES <= 65535)) \
    || die "SURGE_KAFKA_PORT must be a port number leaving room for the nodes, not '$BASE_PORT'"

# The version is the one the pom pins (one place to change it).
VERSION=$(sed -n "s:^ *<kafka.version>\([0-9][^<]*\)</kafka.version>.*:\1:p" "$POM" | head -n 1)
[[ -n "$VERSION" ]] || die "no <kafka.version> in $POM"
LIBS="$JARS_ROOT/$VERSION/libs"
CLUSTER_DIR="$KAFKA_ROOT/$NODES-node"
NODE_DIR="$CLUSTER_DIR/node-$NODE"
CONFIG="$NODE_DIR/server.properties"
LOG4J="$NODE_DIR/log4j2.properties"
LOG="$NODE_DIR/kafka.log"
PID_FILE="$NODE_DIR/kafka.pid"

client_port() { echo $((BASE_PORT + 2 * ($1 - 1))); }
controller_port() { echo $((BASE_PORT + 2 * ($1 - 1) + 1)); }
PORT=$(client_port "$NODE")
CONTROLLER_PORT=$(controller_port "$NODE")

# True when something accepts TCP connections on $HOST:$1 (bash's /dev/tcp, no tools).
listening() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# The pid this script recorded for the node, when that process still runs Kafka.
running_pid() {
    local pid
    pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q 'kafka\.Kafka' || return 1
    echo "$pid"
}

# Resolves the broker's jars into $LIBS once (Maven's own cache makes a re-resolve cheap).
ensure_libs() {
    [[ -f "$LIBS/.complete" ]] && return 0
    command -v java >/dev/null 2>&1 || die "java (17+) is needed to run Kafka"
    command -v mvn >/dev/null 2>&1 || die "mvn is needed to fetch Kafka's jars from Maven Central"
    mkdir -p "$JARS_ROOT"
    exec 8>"$JARS_ROOT/resolve.lock"
    flock 8
    if [[ ! -f "$LIBS/.complete" ]]; then
        say "resolving Apache Kafka $VERSION from Maven Central into $LIBS"
        rm -rf "$LIBS"
        mvn -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$LIBS" >"$JARS_ROOT/resolve.log" 2>&1 || {
            tail -n 30 "$JARS_ROOT/resolve.log" >&2 || true
            die "mvn could not resolve Kafka $VERSION; see $JARS_ROOT/resolve.log"
        }
        ls "$LIBS"/kafka_2.13-"$VERSION".jar >/dev/null 2>&1 \
            || die "the resolved jars lack kafka_2.13-$VERSION.jar"
        touch "$LIBS/.complete"
    fi
    flock -u 8
}

# A Kafka cluster id: URL-safe base64 of 16 random bytes, no padding, not starting with '-'
# (what `kafka-storage.sh random-uuid` prints), made once per cluster.
cluster_id() {
    local file="$CLUSTER_DIR/cluster.id" id
    if [[ ! -s "$file" ]]; then
        mkdir -p "$CLUSTER_DIR"
        id=-
        while [[ "$id" == -* ]]; do
            id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
        done
        # Atomic: nodes of a cluster started together agree on the first id written.
        echo "$id" >"$file.$$" && ln "$file.$$" "$file" 2>/dev/null || true
        rm -f "$file.$$"
    fi
    cat "$file"
}

# Writes the node's server.properties (every run: the script is the source of truth).
write_config() {
    local voters="" n replicas=$((NODES < 3 ? NODES : 3))
    local min_isr=$((replicas > 1 ? replicas - 1 : 1))
    for ((n = 1; n <= NODES; n++)); do
        voters+="${voters:+,}$n@$HOST:$(controller_port "$n")"
    done
    mkdir -p "$NODE_DIR/data"
    cat >"$CONFIG" <<EOF
# Generated by scripts/kafka.sh: edits are overwritten.
process.roles=broker,controller
node.id=$NODE
controller.quorum.voters=$voters
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$NODE_DIR/data

# Surge creates its topics (T, T.retry, T.dead) itself and its consumers ask for no
# auto-creation: a typo'd topic name fails instead of silently making a new topic.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$replicas
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$replicas
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr

# Test broker: consumers join at once (the default waits 3 s for more members), the log
# cleaner does not take 128 MiB of heap, a dead broker is fenced within seconds.
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=2097152
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
EOF
    cat >"$LOG4J" <<'EOF'
# Generated by scripts/kafka.sh: Kafka's log lines go to stdout, which the script sends to
# kafka.log (the previous run's log is kept as kafka.log.1).
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.channel.name = kafka.network.RequestChannel$
logger.channel.level = warn
EOF
}

# Formats the node's storage once (static voters: no --standalone).
format_storage() {
    [[ -f "$NODE_DIR/data/meta.properties" ]] && return 0
    say "formatting KRaft storage of node $NODE ($NODE_DIR/data)"
    java -cp "$LIBS/*" kafka.tools.StorageTool format --ignore-formatted \
        -t "$(cluster_id)" -c "$CONFIG" >>"$NODE_DIR/format.log" 2>&1 || {
        tail -n 20 "$NODE_DIR/format.log" >&2 || true
        die "formatting the storage of node $NODE failed; see $NODE_DIR/format.log"
    }
}

fail_start() {
    say "last lines of $LOG:"
    tail -n 30 "$LOG" >&2 || true
    die "$*"
}

start() {
    if listening "$PORT"; then
        say "a broker already listens on $HOST:$PORT"
        return 0
    fi
    ensure_libs
    mkdir -p "$NODE_DIR"
    # One start at a time per node: a concurrent run waits, then finds the port open.
    exec 9>"$NODE_DIR/start.lock"
    flock 9
    if listening "$PORT"; then
        say "a broker already listens on $HOST:$PORT"
        return 0
    fi
    local pid
    if pid=$(running_pid); then
        say "Kafka node $NODE (pid $pid) runs but does not listen yet; waiting for it"
    else
        write_config
        format_storage
        [[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.1"
        say "starting Apache Kafka $VERSION node $NODE on $HOST:$PORT (controller $CONTROLLER_PORT, log $LOG)"
        # setsid: the broker outlives the shell (and the test) that started it; it must not
        # inherit the lock descriptors, or it would hold the start lock while it runs.
        setsid nohup java \
            -Xms64m -Xmx"$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
            -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
            -Djava.awt.headless=true \
            -Dlog4j2.configurationFile="$LOG4J" \
            -Dkafka.logs.dir="$NODE_DIR" \
            -cp "$LIBS/*" kafka.Kafka "$CONFIG" \
            >"$LOG" 2>&1 </dev/null 8>&- 9>&- &
        pid=$!
        echo "$pid" >"$PID_FILE"
    fi

    # Serving = the port accepts connections and the broker logged that it started (it
    # logs that only once it is registered with the controller and unfenced).
    local deadline=$((SECONDS + WAIT_SECS))
    until listening "$PORT" && grep -q 'Kafka Server started' "$LOG" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null \
            || fail_start "Kafka node $NODE (pid $pid) exited before serving on $HOST:$PORT; see $LOG"
        ((SECONDS < deadline)) \
            || fail_start "Kafka node $NODE (pid $pid) did not serve on $HOST:$PORT within ${WAIT_SECS}s; see $LOG"
        sleep 0.2
    done
    say "Apache Kafka $VERSION node $NODE is up on $HOST:$PORT (pid $pid)"
}

# Sends $1 to the node this script started and waits (bounded) until it is gone.
signal_node() {
    local signal=$1 pid
    if ! pid=$(running_pid); then
        # Stopping what is not running is fine; a fault test asking to kill it is not.
        [[ "$signal" == KILL ]] && die "no Kafka node $NODE started by this script runs (no live pid in $PID_FILE)"
        say "Kafka node $NODE is not running (no live pid in $PID_FILE)"
        return 0
    fi
    kill "-$signal" "$pid"
    local deadline=$((SECONDS + WAIT_SECS))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || die "Kafka node $NODE (pid $pid) still runs ${WAIT_SECS}s after SIG$signal"
        sleep 0.1
    done
    say "Kafka node $NODE (pid $pid) stopped (SIG$signal)"
}

case "${1:-start}" in
start) start ;;
stop) signal_node TERM ;;
kill) signal_node KILL ;;
status) listening "$PORT" ;;
pid) running_pid ;;
*) die "usage: $0 [start|stop|kill|status|pid]" ;;
esac
