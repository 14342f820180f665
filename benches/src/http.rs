//! A deliberately small HTTP/1.1 keep-alive client for the load generator.
//!
//! The load generator shares two cores with the ingress, the workers, the broker and the
//! database, so every microsecond it spends is one the system under test does not get. A
//! general client (reqwest/hyper) costs tens of microseconds per request; this one writes a
//! pre-encoded request and parses just enough of the response (status, `Content-Length`,
//! the `"id"` of a `202`) — a few microseconds. One request at a time per connection, no
//! pipelining, no chunked bodies (axum answers with `Content-Length`).
//!
//! [`Pool`] hands out idle connections and opens a new one when none is idle, counting
//! every connection it opens so a report can say whether any connection set-up happened
//! while measuring (see [`Pool::prewarm`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

/// A request encoded once and sent many times.
pub type Request = Arc<[u8]>;

/// `POST path` with a JSON body, encoded for [`Conn::send`].
pub fn post_json(path: &str, body: &str) -> Request {
    format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into()
}

/// `GET path`, encoded for [`Conn::send`].
pub fn get(path: &str) -> Request {
    format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .into_bytes()
        .into()
}

/// What came back.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The job id of a `202 {"id": "...", ...}` answer.
    pub fn job_id(&self) -> Option<Uuid> {
        job_id(&self.body)
    }
}

/// The value of the first `"id":"<uuid>"` in `body`.
pub fn job_id(body: &[u8]) -> Option<Uuid> {
    let at = find(body, b"\"id\":\"")? + 6;
    let id = body.get(at..at + 36)?;
    Uuid::try_parse_ascii(id).ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One keep-alive connection.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    reusable: bool,
}

impl Conn {
    /// Connects (with `TCP_NODELAY`, as any latency-minded client would).
    pub async fn connect(address: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
            reusable: true,
        })
    }

    /// Sends `request` and reads the whole response.
    pub async fn send(&mut self, request: &[u8]) -> std::io::Result<Response> {
        self.buf.clear();
        self.stream.write_all(request).await?;
        let (head_len, status, content_length) = loop {
            if let Some(parsed) = parse_head(&self.buf)? {
                break parsed;
            }
            self.fill().await?;
        };
        while self.buf.len() < head_len + content_length {
            self.fill().await?;
        }
        let body = self.buf[head_len..head_len + content_length].to_vec();
        Ok(Response { status, body })
    }

    /// Whether any byte of an answer to the last request arrived.
    pub fn answered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Whether the server left the connection open for another request.
    pub fn reusable(&self) -> bool {
        self.reusable
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            self.reusable = false;
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// `(head length, status, content length)` once the head is complete.
fn parse_head(buf: &[u8]) -> std::io::Result<Option<(usize, u16, usize)>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("non-UTF-8 response head"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut content_length = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .trim()
                .parse()
                .map_err(|_| bad("bad content-length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked responses are not supported"));
        }
    }
    Ok(Some((end + 4, status, content_length)))
}

/// Idle keep-alive connections to one address.
#[derive(Debug)]
pub struct Pool {
    address: SocketAddr,
    idle: Mutex<Vec<Conn>>,
    opened: AtomicU64,
}

impl Pool {
    /// An empty pool for `address`.
    pub fn new(address: SocketAddr) -> Arc<Pool> {
        Arc::new(Pool {
            address,
            idle: Mutex::new(Vec::new()),
            opened: AtomicU64::new(0),
        })
    }

    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Opens `n` connections at once, sends `GET /healthz` on each (so the server has
    /// accepted and served them), and keeps them idle: later requests do not pay for
    /// connection set-up.
    pub async fn prewarm(self: &Arc<Self>, n: usize) -> std::io::Result<()> {
        let probe = get("/healthz");
        let opened = futures::future::join_all((0..n).map(|_| {
            let pool = self.clone();
            let probe = probe.clone();
            async move {
                let mut conn = pool.open().await?;
                conn.send(&probe).await?;
                Ok::<Conn, std::io::Error>(conn)
            }
        }))
        .await;
        for conn in opened {
            self.put(conn?);
        }
        Ok(())
    }

    /// An idle connection, or a new one.
    pub async fn take(&self) -> std::io::Result<Conn> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => self.open().await,
        }
    }

    /// Gives a connection back (dropped when the server closed it).
    pub fn put(&self, conn: Conn) {
        if conn.reusable() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }

    /// Sends `request` on a pooled connection. Like any HTTP client, when an idle pooled
    /// connection turns out closed by the server (its keep-alive / header timeout) before
    /// any byte of an answer, the request is sent once more on a new connection.
    pub async fn send(&self, request: &[u8]) -> std::io::Result<Response> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        if let Some(mut conn) = idle {
            match conn.send(request).await {
                Ok(response) => {
                    self.put(conn);
                    return Ok(response);
                }
                Err(e) if !conn.answered() => {
                    tracing::debug!(error = %e, "a pooled connection was closed; reconnecting");
                }
                Err(e) => return Err(e),
            }
        }
        let mut conn = self.open().await?;
        let response = conn.send(request).await?;
        self.put(conn);
        Ok(response)
    }

    async fn open(&self) -> std::io::Result<Conn> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        Conn::connect(self.address).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_ids_are_found() {
        let raw = b"HTTP/1.1 202 Accepted\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
        assert_eq!(parse_head(raw).unwrap(), Some((44, 202, 7)));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        let id = Uuid::new_v4();
        let body = format!("{{\"id\":\"{id}\",\"status_url\":\"/jobs/{id}\"}}");
        assert_eq!(job_id(body.as_bytes()), Some(id));
        assert_eq!(job_id(b"{}"), None);
    }
}
