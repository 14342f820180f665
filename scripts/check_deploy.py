#!/usr/bin/env python3
"""Offline checks of docker-compose.yml, Dockerfile and deploy/ (run by check-deploy.sh).

Inputs are what scripts/check-deploy.sh produced with the real tools:
  --compose NAME=FILE   `docker compose config --format json` output, one per variant
                        (NAME is the SURGE_BROKER it was resolved with)
  --kustomize FILE      `kubectl kustomize deploy/` output
The script itself reads deploy/**/*.y*ml, deploy/README.md, the Prometheus config and the
Dockerfile from --root. It needs PyYAML and kubernetes-validate (which bundles the
Kubernetes JSON schemas, so nothing is fetched).

Prints one line per check; exits 1 listing every failure, 0 if all passed.

Over 500 lines on purpose: one flat list of small checks, each readable on its own;
splitting it into modules would only add imports.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from urllib.parse import urlsplit

import yaml

try:
    import kubernetes_validate
    from kubernetes_validate.utils import all_versions
except ImportError:  # pragma: no cover - check-deploy.sh installs it
    kubernetes_validate = None

# Kubernetes versions the manifests are schema-checked against (strict: unknown fields
# fail). The oldest is the oldest release still common in managed clusters; the newest
# is the newest whose schemas kubernetes-validate ships.
MIN_K8S = (1, 29)

KEDA_API = "keda.sh/v1alpha1"
SCALEDOBJECT_SPEC_KEYS = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced",
    "triggers",
}
TRIGGER_KEYS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
# Documented trigger metadata of KEDA 2.x; a key outside these is almost always a typo,
# which KEDA would silently ignore (falling back to a default).
RABBITMQ_KEYS = {
    "host", "hostFromEnv", "protocol", "mode", "value", "activationValue", "queueName",
    "vhostName", "usernameFromEnv", "passwordFromEnv", "unsafeSsl", "timeout", "useRegex",
    "pageSize", "operation", "excludeUnacknowledged",
    # deprecated spellings still accepted by KEDA 2.x
    "queueLength",
}
KAFKA_KEYS = {
    "bootstrapServers", "bootstrapServersFromEnv", "consumerGroup", "consumerGroupFromEnv",
    "topic", "topicFromEnv", "lagThreshold", "activationLagThreshold", "offsetResetPolicy",
    "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag", "version",
    "partitionLimitation", "limitToPartitionsWithLag", "sasl", "tls", "unsafeSsl",
    "ensureEvenDistributionOfPartitions", "saslTokenProvider", "awsRegion",
}

# Defaults of the Surge binaries (common/src/config.rs, worker/src/config.rs).
DEFAULT_QUEUE = "surge.jobs"
DEFAULT_GROUP = "surge-workers"
DEFAULT_PARTITIONS = 6
DEFAULT_SHUTDOWN_GRACE = 30
COMPOSE_SERVICES = ("rabbitmq", "kafka", "postgres", "producer", "worker", "prometheus")


class Checker:
    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []
        self.section = ""

    def head(self, title: str) -> None:
        self.section = title
        print(f"== {title}")

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"  ok    {what}")

    def fail(self, what: str) -> None:
        self.failures.append(f"[{self.section}] {what}")
        print(f"  FAIL  {what}")

    def check(self, cond: bool, what: str, why: str = "") -> bool:
        if cond:
            self.ok(what)
        else:
            self.fail(f"{what}: {why}" if why else what)
        return bool(cond)

    def warn(self, what: str) -> None:
        print(f"  warn  {what}")


# ---------------------------------------------------------------- helpers


def flag(argv: list[str], name: str) -> str | None:
    """Value of `--name V` or `--name=V` in an argv list."""
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def port_of(listen: str | None) -> int | None:
    if not listen:
        return None
    m = re.fullmatch(r"(?:\[[^\]]*\]|[^:]*):(\d+)", listen)
    return int(m.group(1)) if m else None


def as_argv(cmd) -> list[str]:
    if cmd is None:
        return []
    if isinstance(cmd, str):
        return shlex.split(cmd)
    return [str(c) for c in cmd]


def duration_secs(text) -> float | None:
    """Compose duration ('45s', '1m30s', '500ms') in seconds."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    total, rest = 0.0, str(text)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", rest):
        total += float(num) * units[unit]
    if not re.fullmatch(r"(\d+(?:\.\d+)?(ms|us|h|m|s))+", rest):
        return None
    return total


def load_yaml_docs(path: Path) -> list:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kn(obj: dict) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


# ---------------------------------------------------------------- compose


def service_ports(svc: dict) -> set[int]:
    """Ports a compose service listens on inside the network."""
    ports: set[int] = set()
    for p in svc.get("expose") or []:
        ports.add(int(str(p).split("/")[0].split("-")[0]))
    for p in svc.get("ports") or []:
        if isinstance(p, dict) and p.get("target"):
            ports.add(int(p["target"]))
    argv = as_argv(svc.get("command"))
    for name in ("--listen", "--metrics-listen"):
        p = port_of(flag(argv, name))
        if p:
            ports.add(p)
    return ports


def check_compose(c: Checker, variant: str, cfg: dict, root: Path) -> dict:
    c.head(f"docker-compose.yml resolved with SURGE_BROKER={variant}")
    services = cfg.get("services") or {}
    missing = [s for s in COMPOSE_SERVICES if s not in services]
    c.check(not missing, f"services {', '.join(COMPOSE_SERVICES)} present", f"missing {missing}")

    for name, svc in sorted(services.items()):
        hc = svc.get("healthcheck") or {}
        c.check(bool(hc.get("test")) and not hc.get("disable"), f"{name}: has a healthcheck")
        for p in svc.get("ports") or []:
            host_ip = p.get("host_ip") if isinstance(p, dict) else None
            c.check(host_ip == "127.0.0.1",
                    f"{name}: host port {p.get('published')}->{p.get('target')} bound to 127.0.0.1",
                    f"bound to {host_ip or 'all interfaces'}")

    env_p = (services.get("producer") or {}).get("environment") or {}
    env_w = (services.get("worker") or {}).get("environment") or {}
    for who, env in (("producer", env_p), ("worker", env_w)):
        c.check(env.get("SURGE_BROKER") == variant, f"{who}: SURGE_BROKER resolves to {variant}",
                f"got {env.get('SURGE_BROKER')!r}")
    for key in ("SURGE_QUEUE", "SURGE_KAFKA_BROKERS", "AMQP_URL", "DATABASE_URL", "SURGE_KAFKA_PARTITIONS"):
        c.check(env_p.get(key) == env_w.get(key), f"producer and worker agree on {key}",
                f"{env_p.get(key)!r} vs {env_w.get(key)!r}")

    # Connection URLs point at the compose services, with their credentials.
    amqp = urlsplit(env_w.get("AMQP_URL", ""))
    c.check(amqp.hostname in services, f"AMQP_URL host {amqp.hostname!r} is a compose service")
    pg = urlsplit(env_w.get("DATABASE_URL", ""))
    pg_env = (services.get("postgres") or {}).get("environment") or {}
    c.check(pg.hostname == "postgres" and pg.username == pg_env.get("POSTGRES_USER")
            and pg.password == pg_env.get("POSTGRES_PASSWORD")
            and pg.path.lstrip("/") == pg_env.get("POSTGRES_DB"),
            "DATABASE_URL matches the postgres service's user, password and database",
            f"{env_w.get('DATABASE_URL')!r} vs {pg_env}")
    kenv = (services.get("kafka") or {}).get("environment") or {}
    adv = str(kenv.get("KAFKA_ADVERTISED_LISTENERS", ""))
    for broker in str(env_w.get("SURGE_KAFKA_BROKERS", "")).split(","):
        c.check(broker and broker in adv,
                f"SURGE_KAFKA_BROKERS {broker!r} is advertised by the kafka service",
                f"KAFKA_ADVERTISED_LISTENERS={adv!r}")

    prod = services.get("producer") or {}
    argv_p = as_argv(prod.get("command"))
    c.check(argv_p[:1] == ["surge-producer"], "producer runs surge-producer", f"command {argv_p}")
    p_port = port_of(flag(argv_p, "--listen"))
    published = {p.get("target") for p in prod.get("ports") or []}
    c.check(p_port is not None and p_port in published,
            f"producer --listen port {p_port} is the published port", f"published {published}")
    deps = prod.get("depends_on") or {}
    for dep in ("rabbitmq", "kafka", "postgres"):
        c.check((deps.get(dep) or {}).get("condition") == "service_healthy",
                f"producer waits for {dep} to be healthy")
    build = prod.get("build") or {}
    c.check(Path(build.get("context", "")).resolve() == root.resolve()
            and build.get("dockerfile", "Dockerfile") == "Dockerfile",
            "producer is built from ./Dockerfile", f"build {build}")

    wk = services.get("worker") or {}
    argv_w = as_argv(wk.get("command"))
    c.check(argv_w[:1] == ["surge-worker"], "worker runs surge-worker", f"command {argv_w}")
    c.check("container_name" not in wk, "worker has no container_name (so --scale works)")
    c.check(not wk.get("ports"), "worker publishes no host port (so --scale works)",
            f"ports {wk.get('ports')}")
    m_port = port_of(flag(argv_w, "--metrics-listen"))
    c.check(m_port is not None, "worker has --metrics-listen HOST:PORT", f"command {argv_w}")
    c.check(m_port in {int(str(e).split('/')[0]) for e in wk.get("expose") or []},
            f"worker exposes its metrics port {m_port}", f"expose {wk.get('expose')}")
    c.check(wk.get("build") is not None or (wk.get("image") and wk.get("image") == prod.get("image")),
            "worker uses the image the producer builds", f"image {wk.get('image')!r} vs {prod.get('image')!r}")
    grace = duration_secs(wk.get("stop_grace_period"))
    drain = int(flag(argv_w, "--shutdown-grace-secs") or env_w.get("SURGE_SHUTDOWN_GRACE_SECS")
                or DEFAULT_SHUTDOWN_GRACE)
    c.check(grace is not None and grace > drain,
            f"worker stop_grace_period ({wk.get('stop_grace_period')}) outlasts its {drain} s drain",
            "compose's default is 10 s")
    replicas = (wk.get("deploy") or {}).get("replicas")
    c.check(isinstance(replicas, int) and replicas >= 1, f"worker has deploy.replicas ({replicas})")

    prom = services.get("prometheus") or {}
    mounts = [v for v in prom.get("volumes") or [] if v.get("target") == "/etc/prometheus/prometheus.yml"]
    prom_file = None
    if c.check(len(mounts) == 1, "prometheus mounts a config at /etc/prometheus/prometheus.yml"):
        m = mounts[0]
        prom_file = Path(m.get("source", ""))
        c.check(m.get("type") == "bind" and m.get("read_only") is True, "prometheus config is mounted read-only",
                f"{m}")
        c.check(prom_file.is_file(), f"prometheus config {prom_file} exists")
    return {"services": services, "prom_file": prom_file, "queue": env_w.get("SURGE_QUEUE", DEFAULT_QUEUE)}


def check_prometheus(c: Checker, path: Path, services: dict) -> None:
    c.head(f"Prometheus config {path.name} against the compose services")
    cfg = yaml.safe_load(path.read_text()) or {}
    jobs = cfg.get("scrape_configs") or []
    scraped: dict[str, set[int]] = {}
    for job in jobs:
        jn = job.get("job_name")
        for sc in job.get("static_configs") or []:
            for t in sc.get("targets") or []:
                host, _, port = str(t).rpartition(":")
                ok = host in services and port.isdigit() and int(port) in service_ports(services[host])
                c.check(ok, f"job {jn}: target {t} is a compose service port",
                        f"{host!r} listens on {sorted(service_ports(services.get(host, {})))}")
                if ok:
                    scraped.setdefault(host, set()).add(int(port))
        for sd in job.get("dns_sd_configs") or []:
            rtype = sd.get("type", "SRV")
            c.check(rtype == "A", f"job {jn}: dns_sd_configs type A (compose DNS has no SRV records)",
                    f"type {rtype}")
            for n in sd.get("names") or []:
                port = sd.get("port")
                ok = n in services and isinstance(port, int) and port in service_ports(services[n])
                c.check(ok, f"job {jn}: DNS name {n}:{port} is every replica of compose service {n}",
                        f"{n!r} listens on {sorted(service_ports(services.get(n, {})))}")
                if ok:
                    scraped.setdefault(n, set()).add(port)
        c.check(job.get("metrics_path", "/metrics") == "/metrics", f"job {jn}: scrapes /metrics")
    p_port = port_of(flag(as_argv(services.get("producer", {}).get("command")), "--listen"))
    w_port = port_of(flag(as_argv(services.get("worker", {}).get("command")), "--metrics-listen"))
    c.check(p_port in scraped.get("producer", set()), f"the producer's port {p_port} is scraped")
    c.check(w_port in scraped.get("worker", set()), f"every worker replica's port {w_port} is scraped")
    wjobs = [j for j in jobs if any("worker" in (sd.get("names") or []) for sd in j.get("dns_sd_configs") or [])]
    c.check(bool(wjobs) and not any(
        "worker" in str(t) for j in wjobs for sc in j.get("static_configs") or [] for t in sc.get("targets") or []),
        "workers are found by DNS, not a fixed target (one target would hit one replica)")


# ---------------------------------------------------------------- Dockerfile


def check_dockerfile(c: Checker, path: Path) -> int | None:
    c.head("Dockerfile")
    text = path.read_text()
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.strip().startswith("#")]
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    c.check(len(froms) >= 2, f"multi-stage ({len(froms)} FROM lines)")
    for b in ("surge-producer", "surge-worker", "surge-demo"):
        c.check(any(ln.upper().startswith("COPY --FROM=") and b in ln for ln in lines),
                f"runtime stage copies {b} from the build stage")
    c.check(any(ln.upper().startswith("RUN ") and "cargo build" in ln and "--locked" in ln for ln in lines),
            "builds with cargo build --locked")
    users = [ln.split(None, 1)[1] for ln in lines if ln.upper().startswith("USER ")]
    uid = None
    if c.check(bool(users), "sets a USER"):
        m = re.fullmatch(r"(\d+)(?::\d+)?", users[-1].strip())
        c.check(m is not None and int(m.group(1)) != 0, f"final USER {users[-1]} is a non-root numeric uid",
                "a name cannot be verified by Kubernetes' runAsNonRoot")
        uid = int(m.group(1)) if m else None
    return uid


# ---------------------------------------------------------------- Kubernetes


def k8s_versions() -> list[str]:
    vs = sorted({v for v in all_versions()}, key=lambda v: tuple(int(x) for x in v.split(".")))
    vs = [v for v in vs if tuple(int(x) for x in v.split(".")[:2]) >= MIN_K8S]
    return [vs[0], vs[-1]] if len(vs) > 1 else vs


def schema_check(c: Checker, objs: list[dict], where: str) -> None:
    versions = k8s_versions()
    for obj in objs:
        if str(obj.get("apiVersion", "")).startswith("keda.sh/"):
            continue
        errs = []
        for v in versions:
            try:
                kubernetes_validate.validate(obj, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                errs.append(f"k8s {v}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                errs.append(f"k8s {v}: no schema for {obj.get('apiVersion')} {obj.get('kind')}")
        c.check(not errs, f"{where}: {kn(obj)} valid (strict) for Kubernetes {' and '.join(versions)}",
                "; ".join(errs))


def containers(dep: dict) -> list[dict]:
    return (((dep.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []


def pod_spec(dep: dict) -> dict:
    return ((dep.get("spec") or {}).get("template") or {}).get("spec") or {}


def resolve_port(ctr: dict, port) -> int | None:
    for p in ctr.get("ports") or []:
        if port == p.get("name") or port == p.get("containerPort"):
            return p.get("containerPort")
    return None


def container_env(ctr: dict, by_kind: dict) -> dict[str, str]:
    env: dict[str, str] = {}
    for ef in ctr.get("envFrom") or []:
        ref = ef.get("configMapRef") or ef.get("secretRef") or {}
        kind = "ConfigMap" if "configMapRef" in ef else "Secret"
        obj = by_kind.get(kind, {}).get(ref.get("name"), {})
        env.update({k: str(v) for k, v in (obj.get("data") or {}).items()})
        env.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
    for e in ctr.get("env") or []:
        env[e["name"]] = str(e.get("value", "<from " + ",".join((e.get("valueFrom") or {}).keys()) + ">"))
    return env


def check_hardening(c: Checker, dep: dict, want_uid: int | None) -> None:
    name = dep["metadata"]["name"]
    ps = pod_spec(dep)
    psc = ps.get("securityContext") or {}
    for ctr in containers(dep):
        sc = ctr.get("securityContext") or {}
        c.check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{name}/{ctr['name']}: runAsNonRoot")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        if want_uid is not None:
            c.check(uid == want_uid, f"{name}/{ctr['name']}: runAsUser {uid} = the Dockerfile's USER {want_uid}")
        c.check(sc.get("readOnlyRootFilesystem") is True, f"{name}/{ctr['name']}: readOnlyRootFilesystem")
        c.check(sc.get("allowPrivilegeEscalation") is False, f"{name}/{ctr['name']}: allowPrivilegeEscalation false")
        res = ctr.get("resources") or {}
        for k in ("requests", "limits"):
            have = res.get(k) or {}
            c.check("cpu" in have and "memory" in have, f"{name}/{ctr['name']}: {k} cpu and memory set", f"{have}")
        for vm in ctr.get("volumeMounts") or []:
            vols = {v["name"] for v in ps.get("volumes") or []}
            c.check(vm["name"] in vols, f"{name}/{ctr['name']}: volume {vm['name']} is declared")


def check_selector(c: Checker, dep: dict) -> None:
    sel = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    labels = (((dep.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
    c.check(bool(sel) and all(labels.get(k) == v for k, v in sel.items()),
            f"{kn(dep)}: selector matches the pod template labels", f"{sel} vs {labels}")


def check_probe(c: Checker, who: str, ctr: dict, probe: str, path: str, port: int) -> None:
    p = (ctr.get(probe) or {}).get("httpGet") or {}
    c.check(p.get("path") == path and resolve_port(ctr, p.get("port")) == port,
            f"{who}: {probe} GET {path} on port {port}", f"{p}")


def check_kubernetes(c: Checker, root: Path, rendered: list[dict], keda_files: dict[str, list[dict]],
                     docker_uid: int | None, compose_queue: str) -> None:
    deploy = root / "deploy"
    c.head("deploy/: every YAML file parses")
    kust = yaml.safe_load((deploy / "kustomization.yaml").read_text()) or {}
    listed = {(deploy / r).resolve() for r in kust.get("resources") or []}
    for f in sorted(list(deploy.rglob("*.yaml")) + list(deploy.rglob("*.yml"))):
        rel = f.relative_to(root)
        try:
            docs = load_yaml_docs(f)
        except yaml.YAMLError as e:
            c.fail(f"{rel}: {e}")
            continue
        c.check(all(isinstance(d, dict) for d in docs), f"{rel} parses ({len(docs)} document(s))",
                "a document is not a mapping")
        is_k8s = f.parent == deploy and f.name != "kustomization.yaml"
        if is_k8s:
            c.check(f.resolve() in listed, f"{rel} is listed in kustomization.yaml resources")
        for d in docs:
            if isinstance(d, dict) and (d.get("metadata") or {}).get("namespace"):
                c.fail(f"{rel}: {kn(d)} names a namespace (the manifests must stay namespace-agnostic)")
    for r in kust.get("resources") or []:
        c.check((deploy / r).is_file(), f"kustomization resource {r} exists")

    c.head("deploy/: Kubernetes schemas (kubernetes-validate, offline)")
    schema_check(c, rendered, "kustomize build")
    for fname, docs in keda_files.items():
        schema_check(c, docs, fname)

    by_kind: dict[str, dict[str, dict]] = {}
    for o in rendered:
        by_kind.setdefault(o.get("kind"), {})[(o.get("metadata") or {}).get("name")] = o

    c.head("deploy/: ConfigMap and Secret")
    cms = list(by_kind.get("ConfigMap", {}).values())
    cm = cms[0].get("data") if len(cms) == 1 else {}
    c.check(len(cms) == 1, "one ConfigMap")
    cm = cm or {}
    c.check(cm.get("SURGE_BROKER") in ("rabbitmq", "kafka"), f"SURGE_BROKER is rabbitmq or kafka ({cm.get('SURGE_BROKER')!r})")
    for k in ("SURGE_KAFKA_BROKERS", "SURGE_QUEUE"):
        c.check(bool(cm.get(k)), f"ConfigMap sets {k}")
    c.check(cm.get("SURGE_LOG_FORMAT") == "json", "ConfigMap sets SURGE_LOG_FORMAT=json")
    c.check(cm.get("SURGE_QUEUE", DEFAULT_QUEUE) == compose_queue,
            f"queue name {cm.get('SURGE_QUEUE')!r} is the one docker-compose.yml uses", f"{compose_queue!r}")
    c.check(not ({"DATABASE_URL", "AMQP_URL"} & set(cm)), "no credentials in the ConfigMap")
    queue = cm.get("SURGE_QUEUE", DEFAULT_QUEUE)
    group = cm.get("SURGE_GROUP", DEFAULT_GROUP)
    partitions = int(cm.get("SURGE_KAFKA_PARTITIONS", DEFAULT_PARTITIONS))
    secrets = list(by_kind.get("Secret", {}).values())
    sec = {}
    for s in secrets:
        sec.update(s.get("stringData") or {})
        c.check(not s.get("data"), f"{kn(s)}: placeholders in stringData, not base64 data")
    for k in ("DATABASE_URL", "AMQP_URL"):
        c.check(k in sec, f"Secret sets {k}")
    all_secrets = secrets + [d for docs in keda_files.values() for d in docs if d.get("kind") == "Secret"]
    for s in all_secrets:
        for k, v in (s.get("stringData") or {}).items():
            c.check("REPLACE_ME" in str(v), f"{kn(s)} {k} is a placeholder (REPLACE_ME), not a credential")

    c.head("deploy/: Deployments and Service")
    deps = list(by_kind.get("Deployment", {}).values())
    producer = next((d for d in deps if as_argv(containers(d)[0].get("command"))[:1] == ["surge-producer"]), None)
    worker = next((d for d in deps if as_argv(containers(d)[0].get("command"))[:1] == ["surge-worker"]), None)
    if not c.check(producer is not None and worker is not None, "a surge-producer and a surge-worker Deployment"):
        return
    for d in (producer, worker):
        check_selector(c, d)
        check_hardening(c, d, docker_uid)
        for ctr in containers(d):
            for ef in ctr.get("envFrom") or []:
                kind = "ConfigMap" if "configMapRef" in ef else "Secret"
                ref = (ef.get("configMapRef") or ef.get("secretRef") or {}).get("name")
                c.check(ref in by_kind.get(kind, {}), f"{kn(d)}: envFrom {kind} {ref} exists")
            ann = (((d["spec"]["template"]).get("metadata") or {}).get("annotations") or {})
            if "prometheus.io/port" in ann:
                c.check(resolve_port(ctr, int(ann["prometheus.io/port"])) is not None,
                        f"{kn(d)}: prometheus.io/port {ann['prometheus.io/port']} is a container port")

    pc = containers(producer)[0]
    p_argv = as_argv(pc.get("command"))
    p_port = port_of(flag(p_argv, "--listen"))
    p_listen = flag(p_argv, "--listen")
    c.check(p_listen is not None and p_listen.startswith("0.0.0.0:"),
            f"producer --listen on 0.0.0.0 ({p_listen}; the default 127.0.0.1 is unreachable in a pod)")
    c.check(resolve_port(pc, p_port) == p_port, f"producer containerPort {p_port} = its --listen port")
    check_probe(c, "producer", pc, "readinessProbe", "/readyz", p_port)
    check_probe(c, "producer", pc, "livenessProbe", "/healthz", p_port)
    svcs = list(by_kind.get("Service", {}).values())
    plabels = producer["spec"]["template"]["metadata"]["labels"]
    psvc = [s for s in svcs if all(plabels.get(k) == v for k, v in ((s.get("spec") or {}).get("selector") or {}).items())
            and (s.get("spec") or {}).get("selector")]
    if c.check(len(psvc) == 1, "one Service selects the producer pods"):
        for sp in psvc[0]["spec"].get("ports") or []:
            c.check(resolve_port(pc, sp.get("targetPort", sp.get("port"))) == p_port,
                    f"Service port {sp.get('port')} targets the producer's port {p_port}")
    wlabels = worker["spec"]["template"]["metadata"]["labels"]
    c.check(not any(all(wlabels.get(k) == v for k, v in ((s.get("spec") or {}).get("selector") or {}).items())
                    and (s.get("spec") or {}).get("selector") for s in svcs),
            "no Service sends API traffic to the workers")

    wc = containers(worker)[0]
    w_argv = as_argv(wc.get("command"))
    w_env = container_env(wc, by_kind)
    capacity = flag(w_argv, "--capacity") or w_env.get("SURGE_CAPACITY")
    c.check(capacity is not None and capacity.isdigit(), f"worker capacity is explicit ({capacity})")
    capacity = int(capacity) if capacity and capacity.isdigit() else 200
    m_listen = flag(w_argv, "--metrics-listen")
    m_port = port_of(m_listen)
    c.check(m_listen is not None and m_listen.startswith("0.0.0.0:"), f"worker --metrics-listen on 0.0.0.0 ({m_listen})")
    c.check(resolve_port(wc, m_port) == m_port, f"worker containerPort {m_port} = its --metrics-listen port")
    check_probe(c, "worker", wc, "livenessProbe", "/healthz", m_port)
    drain = int(flag(w_argv, "--shutdown-grace-secs") or w_env.get("SURGE_SHUTDOWN_GRACE_SECS") or DEFAULT_SHUTDOWN_GRACE)
    tgp = pod_spec(worker).get("terminationGracePeriodSeconds", 30)
    c.check(tgp > drain, f"worker terminationGracePeriodSeconds {tgp} > its {drain} s drain")
    if "replicas" in worker["spec"]:
        c.warn("worker Deployment sets replicas: re-applying it resets what the autoscaler chose")
    ctx = {"worker": worker, "capacity": capacity, "queue": queue, "group": group,
           "partitions": partitions, "worker_env": w_env}
    check_keda(c, keda_files, ctx)

    c.head("deploy/README.md")
    readme = root / "deploy" / "README.md"
    if c.check(readme.is_file(), "deploy/README.md exists"):
        text = readme.read_text()
        for needle in ["kubectl apply -k deploy/", "surge_desired_workers"] + [f"deploy/keda/{f}" for f in keda_files]:
            c.check(needle in text, f"deploy/README.md mentions {needle}")


# ---------------------------------------------------------------- KEDA


def number(text) -> float | None:
    try:
        return float(str(text))
    except ValueError:
        return None


def check_keda(c: Checker, keda_files: dict[str, list[dict]], ctx: dict) -> None:
    worker = ctx["worker"]
    wname = worker["metadata"]["name"]
    c.head("deploy/keda/: ScaledObjects (structure and cross-checks)")
    c.check(bool(keda_files), "deploy/keda/ holds ScaledObject files")
    seen_types = set()
    for fname, docs in keda_files.items():
        sos = [d for d in docs if d.get("kind") == "ScaledObject"]
        if not c.check(len(sos) == 1, f"{fname}: exactly one ScaledObject", f"found {len(sos)}"):
            continue
        so = sos[0]
        tas = {d["metadata"]["name"]: d for d in docs if d.get("kind") in ("TriggerAuthentication", "ClusterTriggerAuthentication")}
        secrets = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Secret"}
        for d in docs:
            if d.get("kind") in ("ScaledObject", "TriggerAuthentication", "ClusterTriggerAuthentication"):
                c.check(d.get("apiVersion") == KEDA_API, f"{fname}: {kn(d)} apiVersion {KEDA_API}",
                        f"got {d.get('apiVersion')}")
        spec = so.get("spec") or {}
        unknown = set(spec) - SCALEDOBJECT_SPEC_KEYS
        c.check(not unknown, f"{fname}: ScaledObject spec has only known fields", f"unknown {sorted(unknown)}")
        ref = spec.get("scaleTargetRef") or {}
        c.check(ref.get("name") == wname, f"{fname}: scaleTargetRef.name = worker Deployment {wname}",
                f"got {ref.get('name')!r}")
        c.check(ref.get("kind", "Deployment") == "Deployment" and ref.get("apiVersion", "apps/v1") == "apps/v1",
                f"{fname}: scaleTargetRef is an apps/v1 Deployment")
        lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        c.check(isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi and hi >= 1,
                f"{fname}: 0 <= minReplicaCount ({lo}) <= maxReplicaCount ({hi})")
        for k in ("pollingInterval", "cooldownPeriod", "initialCooldownPeriod"):
            if k in spec:
                c.check(isinstance(spec[k], int) and spec[k] >= 0, f"{fname}: {k} is a whole number of seconds")
        behavior = (((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("behavior"))
        if behavior is not None:
            hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                   "metadata": {"name": "x"},
                   "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": wname},
                            "maxReplicas": max(hi, 1), "behavior": behavior}}
            errs = []
            for v in k8s_versions():
                try:
                    kubernetes_validate.validate(hpa, v, strict=True)
                except kubernetes_validate.ValidationError as e:
                    errs.append(f"{'/'.join(str(p) for p in e.path)}: {e.message}")
            # The OpenAPI schema types these as plain strings; the API server enforces the enums.
            for direction, rules in behavior.items():
                rules = rules or {}
                if "selectPolicy" in rules and rules["selectPolicy"] not in ("Max", "Min", "Disabled"):
                    errs.append(f"{direction}.selectPolicy {rules['selectPolicy']!r} is not Max, Min or Disabled")
                for pol in rules.get("policies") or []:
                    if pol.get("type") not in ("Pods", "Percent"):
                        errs.append(f"{direction} policy type {pol.get('type')!r} is not Pods or Percent")
            c.check(not errs, f"{fname}: advanced HPA behavior valid (autoscaling/v2 schema)", "; ".join(errs))
        triggers = spec.get("triggers") or []
        if not c.check(bool(triggers), f"{fname}: has triggers"):
            continue
        for t in triggers:
            ttype = t.get("type")
            seen_types.add(ttype)
            md = t.get("metadata") or {}
            c.check(not (set(t) - TRIGGER_KEYS), f"{fname}: {ttype} trigger has only known fields",
                    f"unknown {sorted(set(t) - TRIGGER_KEYS)}")
            bad = {k: v for k, v in md.items() if not isinstance(v, str)}
            c.check(not bad, f"{fname}: {ttype} metadata values are all strings (KEDA's CRD wants map[string]string)",
                    f"quote {bad}")
            auth_params: dict[str, str] = {}
            aref = (t.get("authenticationRef") or {}).get("name")
            if aref:
                ta = tas.get(aref)
                if c.check(ta is not None, f"{fname}: authenticationRef {aref} is defined in the same file"):
                    for st in (ta.get("spec") or {}).get("secretTargetRef") or []:
                        s = secrets.get(st.get("name"))
                        ok = s is not None and st.get("key") in (s.get("stringData") or {})
                        c.check(ok, f"{fname}: TriggerAuthentication param {st.get('parameter')} reads "
                                    f"Secret {st.get('name')} key {st.get('key')}, defined in the same file")
                        if ok:
                            auth_params[st["parameter"]] = str(s["stringData"][st["key"]])
            if ttype == "rabbitmq":
                check_rabbitmq(c, fname, md, auth_params, ctx)
            elif ttype == "kafka":
                check_kafka(c, fname, md, auth_params, spec, ctx)
            else:
                c.fail(f"{fname}: unexpected trigger type {ttype!r} (Surge's brokers are rabbitmq and kafka)")
    c.check({"rabbitmq", "kafka"} <= seen_types, "a ScaledObject for each broker (rabbitmq, kafka)",
            f"found {sorted(t for t in seen_types if t)}")


def check_rabbitmq(c: Checker, fname: str, md: dict, auth: dict, ctx: dict) -> None:
    unknown = set(md) - RABBITMQ_KEYS
    c.check(not unknown, f"{fname}: rabbitmq metadata keys are KEDA's", f"unknown (typo?) {sorted(unknown)}")
    c.check(md.get("protocol") == "http",
            f"{fname}: protocol http (the management API; over AMQP KEDA cannot count unacked messages)",
            f"got {md.get('protocol')!r}")
    c.check(md.get("mode") == "QueueLength", f"{fname}: mode QueueLength", f"got {md.get('mode')!r}")
    c.check(str(md.get("excludeUnacknowledged", "false")).lower() != "true", f"{fname}: unacked messages are counted")
    # Jobs wait in SURGE_QUEUE and its 8 fairness lanes (SURGE_QUEUE.lane0-7): the trigger
    # must sum all nine, so the queue name is a regex matching exactly those.
    queue_name = md.get("queueName") or ""
    wanted = [ctx["queue"]] + [f"{ctx['queue']}.lane{i}" for i in range(8)]
    unwanted = [f"{ctx['queue']}.retry", f"{ctx['queue']}.dead", f"{ctx['queue']}.lane8", f"x{ctx['queue']}"]
    if str(md.get("useRegex", "false")).lower() == "true":
        try:
            pattern = re.compile(queue_name)
            matches = all(pattern.fullmatch(q) for q in wanted) and not any(pattern.fullmatch(q) for q in unwanted)
        except re.error:
            matches = False
        c.check(matches, f"{fname}: queueName {queue_name!r} matches SURGE_QUEUE {ctx['queue']!r} and its lanes, nothing else")
        c.check(md.get("operation") == "sum", f"{fname}: the queues' lengths are summed (operation sum)", f"got {md.get('operation')!r}")
    else:
        c.check(False, f"{fname}: queueName covers SURGE_QUEUE {ctx['queue']!r} and its fairness lanes (useRegex)", f"got {queue_name!r} without useRegex")
    v = number(md.get("value"))
    c.check(v == ctx["capacity"], f"{fname}: value {md.get('value')!r} = worker capacity {ctx['capacity']} per replica")
    host = auth.get("host") or md.get("host")
    if md.get("hostFromEnv"):
        host = ctx["worker_env"].get(md["hostFromEnv"])
    if c.check(bool(host), f"{fname}: the management host comes from the TriggerAuthentication, metadata or env"):
        c.check(urlsplit(host).scheme in ("http", "https"),
                f"{fname}: host is an http(s) management URL (protocol http)", f"scheme {urlsplit(host).scheme!r}")


def check_kafka(c: Checker, fname: str, md: dict, auth: dict, spec: dict, ctx: dict) -> None:
    unknown = set(md) - KAFKA_KEYS
    c.check(not unknown, f"{fname}: kafka metadata keys are KEDA's", f"unknown (typo?) {sorted(unknown)}")
    env = ctx["worker_env"]

    def value(key: str) -> str | None:
        if md.get(key + "FromEnv"):
            return env.get(md[key + "FromEnv"])
        return md.get(key) or auth.get(key)

    if md.get("bootstrapServersFromEnv"):
        c.check(md["bootstrapServersFromEnv"] in env,
                f"{fname}: bootstrapServersFromEnv {md['bootstrapServersFromEnv']} is set in the worker's environment")
    c.check(bool(value("bootstrapServers")), f"{fname}: bootstrap servers given")
    c.check(value("consumerGroup") == ctx["group"],
            f"{fname}: consumerGroup {value('consumerGroup')!r} = the workers' group {ctx['group']!r}")
    c.check(value("topic") == ctx["queue"], f"{fname}: topic {value('topic')!r} = SURGE_QUEUE {ctx['queue']!r}")
    lag = md.get("lagThreshold")
    c.check(lag is not None and str(lag).isdigit() and int(lag) == ctx["capacity"],
            f"{fname}: lagThreshold {lag!r} = worker capacity {ctx['capacity']} per replica")
    c.check(str(md.get("allowIdleConsumers", "false")).lower() == "false", f"{fname}: allowIdleConsumers is false")
    hi = spec.get("maxReplicaCount", 100)
    c.check(isinstance(hi, int) and hi <= ctx["partitions"],
            f"{fname}: maxReplicaCount {hi} <= SURGE_KAFKA_PARTITIONS {ctx['partitions']} (extra replicas sit idle)")
    if "offsetResetPolicy" in md:
        c.check(md["offsetResetPolicy"] in ("earliest", "latest"), f"{fname}: offsetResetPolicy is earliest or latest")


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--compose", action="append", default=[], metavar="BROKER=FILE")
    ap.add_argument("--kustomize", type=Path, required=True)
    args = ap.parse_args()
    if kubernetes_validate is None:
        print("check_deploy.py: the kubernetes-validate package is missing (scripts/check-deploy.sh installs it)",
              file=sys.stderr)
        return 2
    c = Checker()
    root = args.root

    compose_queue = DEFAULT_QUEUE
    if not args.compose:
        c.head("docker-compose.yml")
        c.fail("no resolved compose configuration given (--compose)")
    for item in args.compose:
        variant, _, path = item.partition("=")
        res = check_compose(c, variant, json.loads(Path(path).read_text()), root)
        compose_queue = res["queue"]
        if res["prom_file"] is not None and res["prom_file"].is_file():
            check_prometheus(c, res["prom_file"], res["services"])

    uid = check_dockerfile(c, root / "Dockerfile")

    try:
        rendered = [d for d in yaml.safe_load_all(args.kustomize.read_text()) if d]
    except yaml.YAMLError as e:
        c.head("kustomize output")
        c.fail(f"unparseable: {e}")
        rendered = []
    keda_files: dict[str, list[dict]] = {}
    for f in sorted((root / "deploy" / "keda").glob("*.y*ml")):
        try:
            keda_files[f.name] = load_yaml_docs(f)
        except yaml.YAMLError:
            keda_files[f.name] = []  # reported by the parse step
    check_kubernetes(c, root, rendered, keda_files, uid, compose_queue)

    print()
    if c.failures:
        print(f"check-deploy: {len(c.failures)} of {c.passed + len(c.failures)} checks FAILED:", file=sys.stderr)
        for f in c.failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print(f"check-deploy: all {c.passed} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
