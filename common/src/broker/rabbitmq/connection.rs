//! The connection: parsing the URL list (one URL per node, with a small default frame
//! size), the shared confirm-mode publishing channel, and reconnecting with backoff when
//! either broke, to the first node that answers, starting after the one just lost.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use lapin::options::ConfirmSelectOptions;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};

use super::{BrokerError, Inner};
use crate::redact::{redact_url, redact_urls};

/// The AMQP frame size asked for when the URL sets no `frame_max`. lapin keeps a send and a
/// receive buffer of 32 frames per connection, zero-filled up front: with RabbitMQ's default
/// 128 KiB frames that is 8 MiB resident in every ingress and worker process, with 16 KiB
/// frames 1 MiB. A larger message body is split over several frames, so job size is not
/// limited by it.
pub const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

/// Longest wait for one node to accept a connection, before trying the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Splits a comma-separated list of AMQP URLs (one or more nodes of one cluster).
pub(super) fn connection_uris(urls: &str) -> Result<Vec<AMQPUri>, BrokerError> {
    let uris = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(connection_uri)
        .collect::<Result<Vec<_>, _>>()?;
    if uris.is_empty() {
        return Err(BrokerError::Config("no AMQP URL given".into()));
    }
    Ok(uris)
}

/// Parses the AMQP URL and asks for [`DEFAULT_FRAME_MAX`] unless the URL names a
/// `frame_max` of its own. The error never carries the URL's password.
fn connection_uri(url: &str) -> Result<AMQPUri, BrokerError> {
    let mut uri: AMQPUri = url.parse().map_err(|e: String| {
        BrokerError::Config(format!(
            "invalid AMQP URL {}: {}",
            redact_url(url),
            e.replace(url, &redact_url(url))
        ))
    })?;
    uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    Ok(uri)
}

/// A lapin error as a retryable [`BrokerError::Unavailable`].
pub(super) fn unavailable(e: lapin::Error) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// An open connection and its shared confirm-mode publishing channel.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) connection: Arc<Connection>,
    pub(super) publisher: Channel,
}

impl Link {
    /// Whether both the connection and the publishing channel are still open.
    pub(super) fn healthy(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

impl Inner {
    /// The current link, reconnecting (with backoff) when it broke.
    pub(super) async fn link(&self) -> Result<Link, BrokerError> {
        let mut guard = self.link.lock().await;
        if let Some(link) = guard.as_ref() {
            if link.healthy() {
                return Ok(link.clone());
            }
            tracing::warn!("rabbitmq connection lost; reconnecting");
            // Start with the next node: the one just lost is likely down.
            self.preferred.fetch_add(1, Ordering::Relaxed);
        }
        *guard = None;
        let link = (|| self.open())
            .retry(crate::retry::reconnect(3))
            .when(|e| matches!(e, BrokerError::Unavailable(_)))
            .notify(
                |e, after| tracing::warn!(error = %e, ?after, "rabbitmq connect failed; retrying"),
            )
            .await?;
        *guard = Some(link.clone());
        Ok(link)
    }

    /// Opens a link to the first node that answers, starting with the preferred one.
    async fn open(&self) -> Result<Link, BrokerError> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failure = BrokerError::Unavailable("no AMQP URL".into());
        for step in 0..self.uris.len() {
            let index = (first + step) % self.uris.len();
            match self.open_node(index).await {
                Ok(link) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(link);
                }
                Err(e @ BrokerError::Unavailable(_)) if step + 1 < self.uris.len() => {
                    tracing::warn!(node = index + 1, error = %e, "rabbitmq node unreachable; trying the next");
                    failure = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(failure)
    }

    /// Opens a connection to node `index` of [`Inner::uris`], declares the topology and puts
    /// the publisher in confirm mode.
    async fn open_node(&self, index: usize) -> Result<Link, BrokerError> {
        let uri = self.uris[index].clone();
        let connecting = Connection::connect_uri(uri, ConnectionProperties::default());
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| BrokerError::Unavailable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(unavailable)?;
        let publisher = connection.create_channel().await.map_err(unavailable)?;
        self.declare(&connection, &publisher).await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        tracing::info!(
            node = index + 1,
            url = %redact_urls(&self.url),
            queue = %self.queue,
            queue_type = self.queue_type.as_str(),
            "rabbitmq connected"
        );
        Ok(Link {
            connection: Arc::new(connection),
            publisher,
        })
    }

    /// Closes the connection, if open, waiting for the broker's close-ok.
    pub(super) async fn close(&self) -> Result<(), BrokerError> {
        let link = self.link.lock().await.take();
        if let Some(link) = link {
            // connection.close waits for the broker's close-ok, which the broker sends after
            // handling every frame before it: the last acks are in.
            link.connection
                .close(200, "shutting down".into())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_size_defaults_to_16_kib_unless_the_url_sets_one() {
        let default = connection_uri("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(default.query.frame_max, Some(DEFAULT_FRAME_MAX));
        let own = connection_uri("amqp://guest:guest@127.0.0.1:5672/%2f?frame_max=131072").unwrap();
        assert_eq!(own.query.frame_max, Some(131_072));
    }

    #[test]
    fn a_url_list_has_one_uri_per_node_and_an_empty_list_is_a_config_error() {
        let uris =
            connection_uris("amqp://a:one@127.0.0.1:5681/%2f, amqp://b:two@127.0.0.1:5682/%2f,")
                .unwrap();
        let ports: Vec<u16> = uris.iter().map(|uri| uri.authority.port).collect();
        assert_eq!(ports, [5681, 5682]);
        for empty in ["", " , "] {
            let e = connection_uris(empty).unwrap_err();
            assert!(matches!(e, BrokerError::Config(_)), "{empty:?}: {e:?}");
        }
    }

    #[test]
    fn a_malformed_url_is_a_config_error_without_the_password() {
        for url in [
            "amqp://user:s3cret@127.0.0.1:5672/%2f?frame_max=many",
            "amqp://user:s3cret@[::1",
        ] {
            let e = connection_uri(url).unwrap_err();
            assert!(matches!(e, BrokerError::Config(_)), "{url}: {e:?}");
            assert!(!e.to_string().contains("s3cret"), "{url}: {e}");
        }
    }
}
