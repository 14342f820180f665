//! The connection: URL parsing (with a small default frame size), the shared
//! confirm-mode publishing channel, and reconnecting with backoff when either broke.

use std::sync::Arc;

use backon::Retryable;
use lapin::options::ConfirmSelectOptions;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};

use super::{BrokerError, Inner};
use crate::config::redact_url;

/// The AMQP frame size asked for when the URL sets no `frame_max`. lapin keeps a send and a
/// receive buffer of 32 frames per connection, zero-filled up front: with RabbitMQ's default
/// 128 KiB frames that is 8 MiB resident in every ingress and worker process, with 16 KiB
/// frames 1 MiB. A larger message body is split over several frames, so job size is not
/// limited by it.
pub const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

/// Parses the AMQP URL and asks for [`DEFAULT_FRAME_MAX`] unless the URL names a
/// `frame_max` of its own. The error never carries the URL's password.
pub(super) fn connection_uri(url: &str) -> Result<AMQPUri, BrokerError> {
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
    fn healthy(&self) -> bool {
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

    /// Opens a connection, declares the topology and puts the publisher in confirm mode.
    async fn open(&self) -> Result<Link, BrokerError> {
        let connection = Connection::connect_uri(self.uri.clone(), ConnectionProperties::default())
            .await
            .map_err(unavailable)?;
        let publisher = connection.create_channel().await.map_err(unavailable)?;
        self.declare(&publisher).await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        tracing::info!(url = %redact_url(&self.url), queue = %self.queue, "rabbitmq connected");
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
