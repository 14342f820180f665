//! Processes under test and what they cost: CPU seconds and peak RSS.
//!
//! The ingress and the workers run as child processes, so each one's CPU time
//! (`/proc/<pid>/stat` utime + stime) and peak resident set (`VmHWM` in
//! `/proc/<pid>/status`) are its own — not mixed with the load generator's. Writing `5` to
//! `/proc/<pid>/clear_refs` resets `VmHWM`, so a peak can be taken per measurement step.
//! Measurements that run inside this process (the broker and database ceilings) use
//! this process's CPU clock (`CLOCK_PROCESS_CPUTIME_ID`, user + system) and its own
//! `VmHWM`. The system calls go through `rustix`, so this crate has no `unsafe`.
//!
//! Which executables: `surge-producer` and `surge-worker` from the folder this binary
//! lives in (`target/<profile>/`) when they are there; otherwise this binary re-runs
//! itself in the `__ingress` / `__worker` role, which runs the same library code with the
//! same flags (see `bin/bench/roles.rs`). The report names the executables used.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::http::{self, Conn};

/// CPU time and peak memory of one process, or of this one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// User + system CPU seconds since the process started.
    pub cpu_s: f64,
    /// Peak resident set since start or the last [`reset_peak`], MiB.
    pub peak_rss_mb: f64,
}

fn clock_ticks() -> f64 {
    match rustix::param::clock_ticks_per_second() {
        0 => 100.0,
        ticks => ticks as f64,
    }
}

/// CPU seconds of `pid` (user + system), from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Peak RSS (`VmHWM`) of `pid` ("self" for this process), MiB.
pub fn peak_rss_mb(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets the peak RSS of `pid` ("self" for this process) to its current RSS.
pub fn reset_peak(pid: &str) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// The services whose CPU the reports include, by process name (`comm`) and, when given,
/// a word of the command line: RabbitMQ's Erlang VM, Apache Kafka (the JVM running
/// `kafka.Kafka`) and every PostgreSQL process.
const SERVICES: [(&str, Option<&str>, &str); 3] = [
    ("beam.smp", None, "rabbitmq-server"),
    ("java", Some("kafka.Kafka"), "kafka-server"),
    ("postgres", None, "postgres"),
];

/// Whether process `pid` (named `comm`) is the service `(name, word, _)`.
fn is_service(pid: u32, comm: &str, (name, word, _): &(&str, Option<&str>, &str)) -> bool {
    comm == *name
        && word.is_none_or(|word| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|arg| arg == word.as_bytes()))
        })
}

/// The broker servers on this machine, with their versions, for the report: RabbitMQ's
/// from `rabbitmqctl version` (with the queue types measured), Apache Kafka's from the
/// `kafka_2.13-<version>.jar` on its JVM's class path (with its `-Xmx`). A server not
/// found here is named as such (the run may use one elsewhere).
pub fn service_versions(queue_types: &[&str], kafka: bool) -> Vec<String> {
    let mut out = Vec::new();
    if !queue_types.is_empty() {
        let version = std::process::Command::new("rabbitmqctl")
            .arg("version")
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "(version unknown: no local rabbitmqctl)".into());
        out.push(format!(
            "RabbitMQ {version}, {} queues",
            queue_types.join(" and ")
        ));
    }
    if kafka {
        out.push(
            kafka_version().unwrap_or_else(|| "Kafka (no local kafka.Kafka JVM found)".into()),
        );
    }
    out
}

/// `Apache Kafka <version> (JVM -Xmx…)` of the local `kafka.Kafka` process.
fn kafka_version() -> Option<String> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if !is_service(pid, comm.trim(), &SERVICES[1]) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let heap = args
            .iter()
            .find_map(|a| a.strip_prefix("-Xmx"))
            .map(|h| format!(", JVM -Xmx{h}"))
            .unwrap_or_default();
        let class_path = args
            .iter()
            .position(|a| a == "-cp" || a == "-classpath")
            .and_then(|i| args.get(i + 1))?;
        for entry in class_path.split(':') {
            let folder = std::path::Path::new(entry.trim_end_matches('*'));
            let Ok(files) = std::fs::read_dir(folder) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if let Some(version) = name
                    .strip_prefix("kafka_2.13-")
                    .and_then(|rest| rest.strip_suffix(".jar"))
                    .filter(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit()))
                {
                    return Some(format!("Apache Kafka {version} (KRaft, one node{heap})"));
                }
            }
        }
    }
    None
}

/// CPU seconds used so far by each service's processes on this machine (summed over all
/// processes of that name — other users of the same services count too).
pub fn service_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut out: std::collections::BTreeMap<String, f64> = SERVICES
        .iter()
        .map(|(_, _, role)| ((*role).to_owned(), 0.0))
        .collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if let Some((_, _, role)) = SERVICES.iter().find(|s| is_service(pid, comm.trim(), s)) {
            if let Some(cpu) = cpu_seconds(pid) {
                *out.entry((*role).to_owned()).or_default() += cpu;
            }
        }
    }
    out
}

/// This process's usage: its CPU clock (user + system, all threads) and `VmHWM`.
pub fn own_usage() -> Usage {
    let cpu = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Usage {
        cpu_s: cpu.tv_sec as f64 + cpu.tv_nsec as f64 / 1e9,
        peak_rss_mb: peak_rss_mb("self").unwrap_or(0.0),
    }
}

/// The executables that play the ingress and the workers.
#[derive(Debug, Clone, Serialize)]
pub struct Executables {
    /// `surge-producer`, or this binary (role `__ingress`).
    pub ingress: Exe,
    /// `surge-worker`, or this binary (role `__worker`).
    pub worker: Exe,
    /// This binary (the HTTP ceiling's null server runs as `__null`).
    pub bench: PathBuf,
}

/// An executable and the role argument it needs first (if any).
#[derive(Debug, Clone, Serialize)]
pub struct Exe {
    /// Its path.
    pub path: PathBuf,
    /// `Some("__worker")` when this binary stands in.
    pub role: Option<String>,
    /// Its modification time, so a stale build is noticed.
    pub modified: Option<String>,
}

impl Exe {
    /// The executable at `path`, run without a role argument.
    pub fn at(path: &Path) -> Exe {
        Exe {
            path: path.to_owned(),
            role: None,
            modified: modified(path),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.path);
        if let Some(role) = &self.role {
            command.arg(role);
        }
        command
    }

    /// How the report names it.
    pub fn describe(&self) -> String {
        let name = self
            .path
            .file_name()
            .map_or_else(|| "?".into(), |n| n.to_string_lossy().into_owned());
        match &self.role {
            Some(role) => format!("{name} {role}"),
            None => name,
        }
    }
}

fn modified(path: &Path) -> Option<String> {
    let time = std::fs::metadata(path).ok()?.modified().ok()?;
    let secs = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    Some(format!("{secs} (unix seconds)"))
}

impl Executables {
    /// Finds `surge-producer` / `surge-worker` next to this binary (or one folder up, for
    /// test binaries in `deps/`); falls back to this binary's roles.
    pub fn locate() -> anyhow::Result<Executables> {
        let bench = std::env::current_exe().context("locating this executable")?;
        let find = |name: &str, role: &str| {
            let dirs = [bench.parent(), bench.parent().and_then(Path::parent)];
            dirs.into_iter()
                .flatten()
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
                .map_or_else(
                    || Exe {
                        path: bench.clone(),
                        role: Some(role.to_owned()),
                        modified: modified(&bench),
                    },
                    |path| Exe {
                        modified: modified(&path),
                        path,
                        role: None,
                    },
                )
        };
        Ok(Executables {
            ingress: find("surge-producer", "__ingress"),
            worker: find("surge-worker", "__worker"),
            bench: bench.clone(),
        })
    }

    /// Always this binary's own roles (`--self-roles`).
    pub fn own() -> anyhow::Result<Executables> {
        let bench = std::env::current_exe().context("locating this executable")?;
        let exe = |role: &str| Exe {
            path: bench.clone(),
            role: Some(role.to_owned()),
            modified: modified(&bench),
        };
        Ok(Executables {
            ingress: exe("__ingress"),
            worker: exe("__worker"),
            bench,
        })
    }
}

/// A child process under test. Killed when dropped.
#[derive(Debug)]
pub struct Proc {
    /// Its name in reports and logs.
    pub name: String,
    child: Child,
    pid: u32,
}

impl Proc {
    /// Starts `command` with stdout discarded, stderr appended to `log`, and
    /// `RUST_LOG=log_level`.
    pub fn spawn(
        name: &str,
        mut command: Command,
        log: &Path,
        log_level: &str,
    ) -> anyhow::Result<Proc> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        command
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id().context("the child has no pid")?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            pid,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// CPU seconds and peak RSS so far.
    pub fn usage(&self) -> Usage {
        Usage {
            cpu_s: cpu_seconds(self.pid).unwrap_or(0.0),
            peak_rss_mb: peak_rss_mb(&self.pid.to_string()).unwrap_or(0.0),
        }
    }

    /// Resets its peak RSS.
    pub fn reset_peak(&self) {
        reset_peak(&self.pid.to_string());
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            // Our own child, by its pid; an error means it is already gone.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A free loopback port (bound and released: a tiny race, fine on a quiet loopback).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// Waits until `GET /healthz` on `address` answers 200, or `proc` exits, or `timeout`.
pub async fn wait_healthy(
    address: SocketAddr,
    proc: &mut Proc,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let probe = http::get("/healthz");
    loop {
        if let Ok(mut conn) = Conn::connect(address).await {
            if let Ok(response) = conn.send(&probe).await {
                if response.status == 200 {
                    return Ok(());
                }
            }
        }
        if proc.exited() {
            anyhow::bail!(
                "{} exited before it became healthy (see its log)",
                proc.name
            );
        }
        if Instant::now() > deadline {
            anyhow::bail!("{} not healthy after {timeout:?}", proc.name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Broker flags shared by the ingress and the workers.
#[derive(Debug, Clone)]
pub struct BrokerFlags {
    /// `memory`, `rabbitmq` or `kafka`.
    pub broker: &'static str,
    /// `--rabbitmq-queue-type`, for RabbitMQ.
    pub rabbitmq_queue_type: Option<surge_common::broker::QueueType>,
    /// RabbitMQ URL.
    pub amqp_url: String,
    /// Kafka bootstrap servers.
    pub kafka_brokers: String,
    /// Queue / topic for this deployment.
    pub queue: String,
}

impl BrokerFlags {
    fn apply(&self, command: &mut Command) {
        command
            .arg("--broker")
            .arg(self.broker)
            .arg("--amqp-url")
            .arg(&self.amqp_url)
            .arg("--kafka-brokers")
            .arg(&self.kafka_brokers)
            .arg("--queue")
            .arg(&self.queue)
            // The benchmark's workloads are the built-in example kinds.
            .arg("--builtin-kinds")
            .arg("true");
        if let Some(queue_type) = self.rabbitmq_queue_type {
            command
                .arg("--rabbitmq-queue-type")
                .arg(queue_type.as_str());
        }
    }
}

/// Ingress command line.
pub fn ingress_command(
    exes: &Executables,
    listen: SocketAddr,
    broker: &BrokerFlags,
    database_url: &str,
    embedded_capacity: u16,
) -> Command {
    let mut command = exes.ingress.command();
    command.arg("--listen").arg(listen.to_string());
    broker.apply(&mut command);
    command
        .arg("--database-url")
        .arg(database_url)
        .arg("--embedded-capacity")
        .arg(embedded_capacity.to_string());
    command
}

/// Worker command line.
pub fn worker_command(
    exes: &Executables,
    broker: &BrokerFlags,
    database_url: &str,
    capacity: u16,
    group: &str,
    worker_id: &str,
) -> Command {
    let mut command = exes.worker.command();
    broker.apply(&mut command);
    command
        .arg("--database-url")
        .arg(database_url)
        .arg("--capacity")
        .arg(capacity.to_string())
        .arg("--group")
        .arg(group)
        .arg("--worker-id")
        .arg(worker_id)
        .arg("--shutdown-grace-secs")
        .arg("5");
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work the optimiser cannot drop.
    fn burn() {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }

    #[test]
    fn own_usage_counts_this_process_cpu_and_memory() {
        let before = own_usage();
        burn();
        let after = own_usage();
        assert!(after.cpu_s > before.cpu_s, "{before:?} → {after:?}");
        assert!(after.peak_rss_mb > 0.0, "{after:?}");
    }

    #[test]
    fn cpu_seconds_of_a_pid_agree_with_the_process_clock() {
        burn();
        let own = cpu_seconds(std::process::id()).expect("/proc/<pid>/stat");
        // /proc counts in clock ticks; the process clock is finer and read later.
        assert!(own > 0.0 && own <= own_usage().cpu_s + 0.05, "{own}");
    }

    #[tokio::test]
    async fn sigterm_through_rustix_ends_a_child() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id().expect("a running child");
        let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill");
        let status = child.wait().await.expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(15), "{status:?}");
    }
}
