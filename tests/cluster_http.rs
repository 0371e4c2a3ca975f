//! The HTTP routes with a cluster attached: two nodes, each an axum server on loopback with
//! its own tracker, one real `redis-server` between them.
#![cfg(all(feature = "redis", feature = "axum"))]

#[path = "common/redis.rs"]
mod redis_server;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use presence_tracker::cluster::Cluster;
use presence_tracker::http::{PresenceLayer, Routes};
use presence_tracker::{Presence, SessionId};
use redis_server::RedisServer;

struct Node {
    addr: SocketAddr,
    cluster: Cluster,
}

async fn node(url: &str, name: &str) -> Node {
    let presence = Presence::new();
    let cluster = Cluster::builder(url)
        .namespace("http")
        .node_id(name)
        .flush_interval(Duration::from_millis(150))
        .node_timeout(Duration::from_secs(2))
        .start(&presence)
        .await
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "home" }))
        .merge(
            Routes::new(presence.clone())
                .leave_grace(Duration::ZERO)
                .cluster(cluster.clone()),
        )
        .layer(PresenceLayer::new(presence).secure(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Node { addr, cluster }
}

/// One HTTP/1.1 request on its own connection: (status, body).
async fn request(addr: SocketAddr, method: &str, path: &str, id: SessionId) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nCookie: presence_id={id}\r\n\
         Accept: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    // Blocking I/O off the runtime's threads (the servers run on them).
    let raw = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        raw
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

async fn counts(n: &Node, page: &str) -> serde_json::Value {
    let (status, body) = request(
        n.addr,
        "GET",
        &format!("/presence/counts?page={page}"),
        SessionId::new_v4(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_answer_the_same_counts_and_take_up_each_others_sessions() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = node(&server.url(), "a").await;
    let b = node(&server.url(), "b").await;
    let (one, two) = (SessionId::new_v4(), SessionId::new_v4());
    assert_eq!(
        request(a.addr, "POST", "/presence/active?page=/", one)
            .await
            .0,
        200
    );
    assert_eq!(
        request(b.addr, "POST", "/presence/active?page=/", two)
            .await
            .0,
        200
    );
    a.cluster.sync().await.unwrap();
    b.cluster.sync().await.unwrap();
    a.cluster.sync().await.unwrap();

    for n in [&a, &b] {
        let c = counts(n, "/").await;
        assert_eq!(c["online"], 2, "{c}");
        assert_eq!(c["guests"], 2, "{c}");
        assert_eq!(c["nodes"], 2, "{c}");
        assert_eq!(c["page"], 2, "{c}");
        assert_eq!(c["stale"], false, "{c}");
    }

    // Polls cost Redis nothing: the counts, the page's count and its names come from each
    // node's cache, which the flush task refreshes once per flush interval.
    let evalsha = || server.commandstats("evalsha").0;
    let (before, start) = (evalsha(), std::time::Instant::now());
    for i in 0..300 {
        let c = counts(if i % 2 == 0 { &a } else { &b }, "/").await;
        assert_eq!(c["page"], 2, "{c}");
    }
    let calls = evalsha() - before;
    // Each node's own flushes and cache refreshes, at most a few per 150 ms interval.
    let flushes = (start.elapsed().as_millis() / 150 + 2) as u64 * 2 * 3;
    assert!(
        calls <= flushes,
        "300 polls made {calls} script calls (flushes allow {flushes})"
    );

    // No sticky sessions: visitor one's heartbeat reaches node b, which never saw it.
    let (status, body) = request(b.addr, "POST", "/presence/heartbeat", one).await;
    assert_eq!(status, 200, "taken up from the cluster, not 410: {body}");
    let (status, _) = request(b.addr, "POST", "/presence/heartbeat", SessionId::new_v4()).await;
    assert_eq!(status, 410, "a session no node holds is gone");

    // Visitor two leaves on b: gone from both nodes' answers.
    assert_eq!(request(b.addr, "POST", "/presence/leave", two).await.0, 204);
    b.cluster.sync().await.unwrap();
    a.cluster.sync().await.unwrap();
    for n in [&a, &b] {
        let c = counts(n, "/").await;
        assert_eq!(
            (c["online"].as_u64(), c["page"].as_u64()),
            (Some(1), Some(1)),
            "{c}"
        );
    }

    // Visitor three, known only on a, says goodbye through b: gone from the cluster.
    let three = SessionId::new_v4();
    assert_eq!(
        request(a.addr, "POST", "/presence/active", three).await.0,
        200
    );
    a.cluster.sync().await.unwrap();
    assert_eq!(b.cluster.sync().await.unwrap().sessions, 2);
    assert_eq!(
        request(b.addr, "POST", "/presence/leave", three).await.0,
        204
    );
    b.cluster.sync().await.unwrap();
    a.cluster.sync().await.unwrap();
    let c = counts(&a, "/").await;
    assert_eq!(
        c["sessions"], 1,
        "a leave on any node ends the session: {c}"
    );

    // Redis killed: the answers keep the last view, marked stale once a flush failed; the
    // page's count and names come from the node's cache, at once.
    drop(server);
    let start = std::time::Instant::now();
    loop {
        let asked = std::time::Instant::now();
        let c = counts(&a, "/").await;
        assert!(
            asked.elapsed() < Duration::from_millis(100),
            "answered at once"
        );
        assert_eq!(
            (c["online"].as_u64(), c["page"].as_u64()),
            (Some(1), Some(1)),
            "{c}"
        );
        if c["stale"] == true {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "never marked stale: {c}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
