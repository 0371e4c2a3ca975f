//! Holds in the cluster view: a held session is renewed in Redis like a touched one, and
//! its `Closed` leave releases this node's claim (another node's claim keeps it).
#![cfg(feature = "redis")]

#[path = "common/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use presence_tracker::cluster::Cluster;
use presence_tracker::{Kind, Presence, SessionId};
use redis_server::RedisServer;

const FLUSH: Duration = Duration::from_millis(100);
/// Short: a claim not renewed would leave the view within it.
const IDLE: Duration = Duration::from_millis(800);
const GRACE: Duration = Duration::from_millis(300);

fn tracker() -> Presence {
    Presence::builder()
        .idle_timeout(IDLE)
        .hold_grace(GRACE)
        .reap_interval(Duration::from_millis(20))
        .build()
}

async fn node(url: &str, name: &str, presence: &Presence) -> Cluster {
    Cluster::builder(url)
        .namespace("live")
        .node_id(name)
        .flush_interval(FLUSH)
        .node_timeout(Duration::from_secs(2))
        .start(presence)
        .await
        .unwrap()
}

/// Waits (up to 10 s) until `check` holds of the view read through `reader`.
async fn until(reader: &Cluster, what: &str, check: impl Fn(usize) -> bool) {
    let start = Instant::now();
    loop {
        let sessions = reader.sync().await.unwrap().sessions;
        if check(sessions) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: {sessions}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_session_is_renewed_and_its_close_releases_the_claim() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (tracker(), tracker());
    let (ca, cb) = (
        node(&server.url(), "a", &a).await,
        node(&server.url(), "b", &b).await,
    );

    let id = SessionId::new_v4();
    let hold = a.hold(id, Kind::member("ada"), "/chat").unwrap();
    until(&cb, "the held session shows", |n| n == 1).await;
    // Several idle timeouts with no touch: still in the view, renewed as held.
    for _ in 0..8 {
        tokio::time::sleep(IDLE / 2).await;
        ca.sync().await.unwrap();
        assert_eq!(
            cb.sync().await.unwrap().sessions,
            1,
            "a held session left the view"
        );
    }
    assert_eq!(cb.page_count("/chat").await.unwrap(), 1);

    // Closed: this node's claim goes at its next flush.
    drop(hold);
    until(&cb, "the closed session leaves the view", |n| n == 0).await;
    assert!(a.session(id).is_none());

    // Held on a, touched on b (one browser behind two nodes): a's close keeps b's claim.
    let hold = a.hold(id, Kind::member("ada"), "/chat").unwrap();
    b.touch(id, Kind::member("ada")).unwrap();
    until(&cb, "both claims", |n| n == 1).await;
    drop(hold);
    tokio::time::sleep(GRACE * 2).await;
    b.touch(id, Kind::member("ada")).unwrap();
    ca.sync().await.unwrap();
    assert_eq!(cb.sync().await.unwrap().sessions, 1, "b's claim keeps it");
    ca.shutdown().await;
    cb.shutdown().await;
}
