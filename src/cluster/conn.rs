//! The connection to Redis: one server through a `ConnectionManager` (it reconnects by
//! itself), or a Redis Cluster, detected from the server's `INFO cluster`, so the URL of any
//! cluster node works.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, Pipeline, RedisFuture, Value};

use super::ClusterError;

#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Checks the URL without connecting: the only thing `start` may fail on, besides settings.
pub(super) fn client(url: &str) -> Result<Client, ClusterError> {
    Client::open(url).map_err(|e| ClusterError::InvalidSetting(format!("Redis URL {url:?}: {e}")))
}

/// Connects, asking the server whether it is part of a Redis Cluster. `timeout` bounds each
/// step; the caller bounds the whole.
pub(super) async fn connect(
    url: &str,
    client: &Client,
    timeout: Duration,
) -> Result<Conn, ClusterError> {
    let mut probe = client
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
        )
        .await?;
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut probe)
        .await?;
    if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
        let cluster = ClusterClient::builder(vec![url])
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(1)
            .build()?;
        Ok(Conn::Cluster(cluster.get_async_connection().await?))
    } else {
        // Our own timeout bounds every call; the manager only reconnects, quickly.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(timeout);
        Ok(Conn::Single(
            ConnectionManager::new_with_config(client.clone(), config).await?,
        ))
    }
}
