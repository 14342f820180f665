//! Slow and idle clients cannot hold the ingress's connections (issue 13): a connection
//! that sends half a request head is closed after `--header-timeout-ms`, an idle
//! keep-alive connection after `--idle-timeout-ms`, and past `--max-connections` a new
//! client waits until a slot frees, then is served. Real TCP on 127.0.0.1, the ingress
//! started through its entry point exactly as `surge-producer` starts it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use surge_common::broker::memory::MemoryBroker;
use surge_common::storage::Storage;
use surge_common::testing;
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Longest wait for something that must happen (generous: a loaded CI machine).
const PATIENCE: Duration = Duration::from_secs(20);

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: surge\r\n\r\n";

struct Running {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), surge_producer::ingress::IngressError>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let stopped = tokio::time::timeout(PATIENCE, self.task).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "the ingress did not stop cleanly: {stopped:?}"
        );
    }
}

async fn start(flags: &[&str]) -> Running {
    let mut argv = vec![
        "surge-producer",
        "--listen",
        "127.0.0.1:0",
        "--broker",
        "memory",
    ];
    argv.extend_from_slice(flags);
    let args = ProducerArgs::try_parse_from(argv).expect("valid flags");
    let storage = Storage::connect(&testing::temp_sqlite_url())
        .await
        .expect("a SQLite file");
    let ingress = Ingress::build_with(&args, Arc::new(MemoryBroker::new()), storage)
        .await
        .expect("the ingress starts");
    let address = ingress.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(ingress.run_until_stopped(async {
        let _ = stopped.await;
    }));
    Running {
        address,
        stop,
        task,
    }
}

/// Reads until the server closes the connection (EOF or reset); everything it sent.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buffer = [0u8; 4096];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server still holds the connection open after {PATIENCE:?} (got {:?})",
        String::from_utf8_lossy(&all)
    );
    all
}

/// Sends `GET /healthz` and reads one response head (through the blank line).
async fn healthz(stream: &mut TcpStream) -> String {
    stream.write_all(HEALTHZ).await.expect("sending a request");
    read_response(stream).await
}

async fn read_response(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let mut buffer = [0u8; 4096];
    while !all.windows(2).any(|w| w == b"ok") {
        let n = stream.read(&mut buffer).await.expect("reading a response");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&all)
        );
        all.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[tokio::test]
async fn half_a_request_head_is_closed_after_the_header_timeout() {
    // The idle timeout is far away, so only the header timeout can close it.
    let ingress = start(&["--header-timeout-ms", "300", "--idle-timeout-ms", "600000"]).await;
    let mut slow = TcpStream::connect(ingress.address).await.unwrap();
    slow.write_all(b"POST /jobs HTTP/1.1\r\nHost: surge\r\nContent-Ty")
        .await
        .unwrap();
    let sent = read_until_closed(&mut slow).await;
    // Whatever hyper answers before closing (a 408, or nothing), it is not a 2xx.
    assert!(
        !String::from_utf8_lossy(&sent).contains(" 202 "),
        "a half request was accepted"
    );
    // The ingress still serves everyone else.
    let mut client = TcpStream::connect(ingress.address).await.unwrap();
    assert!(healthz(&mut client).await.starts_with("HTTP/1.1 200"));
    drop(client);
    ingress.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // The header timeout is far away, so only the idle timeout can close it.
    let ingress = start(&["--header-timeout-ms", "600000", "--idle-timeout-ms", "300"]).await;
    let mut idle = TcpStream::connect(ingress.address).await.unwrap();
    let answer = healthz(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "the connection should be kept alive after a response: {answer}"
    );
    // Now it sends nothing more: the server must close it.
    read_until_closed(&mut idle).await;
    ingress.stop().await;
}

#[tokio::test]
async fn past_the_connection_cap_a_client_waits_for_a_free_slot_then_is_served() {
    let ingress = start(&["--max-connections", "2"]).await;
    // Two clients take both slots (each answered, so each connection was accepted).
    let mut first = TcpStream::connect(ingress.address).await.unwrap();
    let mut second = TcpStream::connect(ingress.address).await.unwrap();
    assert!(healthz(&mut first).await.starts_with("HTTP/1.1 200"));
    assert!(healthz(&mut second).await.starts_with("HTTP/1.1 200"));

    // A third connects (the kernel completes the handshake) and sends its request, which
    // must not be answered while both slots are held.
    let mut third = TcpStream::connect(ingress.address).await.unwrap();
    third.write_all(HEALTHZ).await.unwrap();
    let mut buffer = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buffer)).await;
    assert!(
        early.is_err(),
        "a client past the cap was served (or closed) while both slots were held: {early:?}"
    );

    // One slot frees: the third is accepted and answered.
    drop(first);
    let answer = tokio::time::timeout(PATIENCE, read_response(&mut third))
        .await
        .expect("the waiting client is served once a slot frees");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(second);
    drop(third);
    ingress.stop().await;
}
