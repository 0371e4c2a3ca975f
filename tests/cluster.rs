//! The cluster-wide view against real `redis-server` processes started by the tests: two (or
//! three) nodes in one process, each a `Presence` with its own `Cluster`, and the failures
//! Redis can have (killed, restarted empty, stalled) or a node can have (dies, clock off).
#![cfg(feature = "redis")]

#[path = "common/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant, SystemTime};

use presence_tracker::cluster::{Cluster, ClusterCounts, ClusterError};
use presence_tracker::{Kind, ManualClock, Presence, Reaper, SessionId, UserStatus};
use redis_server::{RedisCluster, RedisServer, eventually};

const FLUSH: Duration = Duration::from_millis(150);
const NODE_TIMEOUT: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_secs(60);

fn tracker_on(clock: &ManualClock) -> Presence {
    Presence::builder()
        .clock(clock.clone())
        .reaper(Reaper::Manual)
        .idle_timeout(IDLE)
        .idle_after(Duration::from_secs(30))
        .heartbeat_limit(Duration::from_secs(600))
        .build()
}

fn tracker() -> (Presence, ManualClock) {
    let clock = ManualClock::new();
    (tracker_on(&clock), clock)
}

async fn node(url: &str, name: &str, presence: &Presence) -> Cluster {
    Cluster::builder(url)
        .namespace("test")
        .shards(redis_server::shards())
        .node_id(name)
        .flush_interval(FLUSH)
        .node_timeout(NODE_TIMEOUT)
        .start(presence)
        .await
        .expect("valid settings")
}

/// A Redis server and two nodes on it, `a` and `b`, each with its tracker; `None` when no
/// `redis-server` can be started (a failure under `CI=true`).
async fn two_nodes() -> Option<(RedisServer, Presence, Presence, Cluster, Cluster)> {
    let server = RedisServer::start()?;
    let (a, _) = tracker();
    let (b, _) = tracker();
    let ca = node(&server.url(), "a", &a).await;
    let cb = node(&server.url(), "b", &b).await;
    Some((server, a, b, ca, cb))
}

/// Syncs each node in turn, then the first again: every node has sent and read.
async fn settle(nodes: &[&Cluster]) -> ClusterCounts {
    for n in nodes {
        n.sync().await.expect("sync");
    }
    nodes[0].sync().await.expect("sync")
}

fn id() -> SessionId {
    SessionId::new_v4()
}

fn names(v: Vec<presence_tracker::UserId>) -> Vec<String> {
    v.into_iter().map(|u| u.as_str().to_owned()).collect()
}

/// The scenario the Redis Cluster test runs too.
async fn two_nodes_scenario(url: &str) {
    let (a, _) = tracker();
    let (b, _) = tracker();
    let ca = node(url, "a", &a).await;
    let cb = node(url, "b", &b).await;
    let alice_a = id();
    a.visit(id(), Kind::Guest, "/").unwrap();
    a.visit(alice_a, Kind::member("alice"), "/forum/1").unwrap();
    b.visit(id(), Kind::Guest, "/forum/1").unwrap();
    b.visit(id(), Kind::member("alice"), "/forum/2").unwrap();
    b.touch(id(), Kind::Bot).unwrap();
    b.visit(id(), Kind::hidden_member("carol"), "/forum/1")
        .unwrap();

    let c = settle(&[&ca, &cb]).await;
    assert_eq!(
        (
            c.online, c.members, c.hidden, c.guests, c.bots, c.sessions, c.nodes
        ),
        (4, 1, 1, 2, 1, 6, 2),
        "alice on both nodes counts once: {c:?}"
    );
    assert!(!c.stale);
    assert_eq!(cb.counts().online, 4, "every node reads the same view");
    assert_eq!(c.peak.online, 4);
    assert_eq!(ca.page_count("/forum/1").await.unwrap(), 3);
    assert_eq!(cb.page_count("/nowhere").await.unwrap(), 0);
    assert_eq!(
        cb.top_pages(2).await.unwrap(),
        [("/forum/1".to_owned(), 3), ("/".to_owned(), 1)]
    );
    assert_eq!(names(cb.online_members(10).await.unwrap()), ["alice"]);
    assert_eq!(
        names(ca.page_members("/forum/1", 10).await.unwrap()),
        ["alice"]
    );

    // alice leaves node a: still online through node b.
    a.leave(alice_a);
    let c = settle(&[&ca, &cb]).await;
    assert_eq!((c.members, c.sessions), (1, 5), "{c:?}");
    assert_eq!(cb.page_count("/forum/1").await.unwrap(), 2);
    assert!(cb.page_members("/forum/1", 10).await.unwrap().is_empty());

    ca.shutdown().await;
    let c = cb.sync().await.unwrap();
    assert_eq!((c.online, c.sessions, c.nodes), (3, 4, 1), "{c:?}");
    cb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_show_one_view_and_a_user_on_both_counts_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    two_nodes_scenario(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_of_three_masters_runs_the_two_node_scenario() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    // Any node's URL works: the client is told it is a cluster and follows the slots.
    two_nodes_scenario(&cluster.nodes[1].url()).await;
    two_nodes_scenario(&cluster.nodes[2].url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_on_one_node_and_listed_on_the_other_is_listed() {
    let Some((_server, a, b, ca, cb)) = two_nodes().await else {
        return;
    };
    a.touch(id(), Kind::hidden_member("bob")).unwrap();
    let listed = id();
    b.touch(listed, Kind::member("bob")).unwrap();
    let c = settle(&[&ca, &cb]).await;
    assert_eq!((c.online, c.members, c.hidden), (1, 1, 0), "{c:?}");
    assert_eq!(names(ca.online_members(10).await.unwrap()), ["bob"]);
    match ca.user("bob").await.unwrap() {
        UserStatus::Online {
            sessions, hidden, ..
        } => assert_eq!((sessions, hidden), (2, false)),
        other => panic!("bob should be online: {other:?}"),
    }

    b.leave(listed);
    let c = settle(&[&cb, &ca]).await;
    assert_eq!((c.online, c.members, c.hidden), (1, 0, 1), "{c:?}");
    assert!(
        ca.online_members(10).await.unwrap().is_empty(),
        "hidden users are never listed"
    );
    assert!(matches!(
        cb.user("bob").await.unwrap(),
        UserStatus::Online {
            sessions: 1,
            hidden: true,
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_session_on_two_nodes_counts_once_until_both_let_it_go() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, clock_a) = tracker();
    let (b, clock_b) = tracker();
    let ca = node(&server.url(), "a", &a).await;
    let cb = node(&server.url(), "b", &b).await;
    // No sticky sessions: one browser's requests reach both nodes.
    let s = id();
    a.visit(s, Kind::member("dora"), "/x").unwrap();
    b.visit(s, Kind::member("dora"), "/x").unwrap();
    let c = settle(&[&ca, &cb]).await;
    assert_eq!((c.sessions, c.members), (1, 1), "{c:?}");
    assert_eq!(ca.page_count("/x").await.unwrap(), 1);

    // It expires on a: b still holds it.
    clock_a.advance(IDLE);
    assert_eq!(a.reap(), 1);
    let c = settle(&[&ca, &cb]).await;
    assert_eq!((c.sessions, c.members), (1, 1), "{c:?}");

    // And on b: gone from the view.
    clock_b.advance(IDLE);
    assert_eq!(b.reap(), 1);
    let c = settle(&[&cb, &ca]).await;
    assert_eq!((c.sessions, c.members, c.online), (0, 0, 0), "{c:?}");
    assert_eq!(ca.page_count("/x").await.unwrap(), 0);
    assert!(ca.online_members(10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_on_one_node_ends_the_session_in_every_view() {
    let Some((_server, a, b, ca, cb)) = two_nodes().await else {
        return;
    };
    let s = id();
    a.touch(s, Kind::Guest).unwrap();
    b.touch(s, Kind::Guest).unwrap();
    assert_eq!(settle(&[&ca, &cb]).await.sessions, 1);

    a.leave(s);
    ca.sync().await.unwrap();
    let c = cb.sync().await.unwrap();
    assert_eq!(c.sessions, 0, "a leave anywhere ends the session: {c:?}");
    // b still has it locally but saw no new activity: it does not send it again.
    tokio::time::sleep(FLUSH * 4).await;
    assert_eq!(cb.sync().await.unwrap().sessions, 0);
    // New activity on b brings it back.
    b.touch(s, Kind::member("erin")).unwrap();
    let c = cb.sync().await.unwrap();
    assert_eq!((c.sessions, c.members), (1, 1), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_expiry_leaves_every_view_within_two_flushes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, clock) = tracker();
    let (b, _) = tracker();
    let ca = node(&server.url(), "a", &a).await;
    let cb = node(&server.url(), "b", &b).await;
    a.visit(id(), Kind::member("fay"), "/p").unwrap();
    a.touch(id(), Kind::Guest).unwrap();
    assert_eq!(settle(&[&ca, &cb]).await.sessions, 2);
    eventually(FLUSH * 4, "b reads the view", || cb.counts().sessions == 2).await;

    clock.advance(IDLE);
    assert_eq!(a.reap(), 2);
    // No sync: the flush tasks alone carry it to b's cached view.
    let took = eventually(Duration::from_secs(3), "the expiry reaches b", || {
        cb.counts().sessions == 0
    })
    .await;
    println!("a local expiry reached the other node's view in {took:?} (flush {FLUSH:?})");
    assert!(cb.page_members("/p", 5).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_touch_works_sync_fails_fast_and_counts_go_stale() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let (a, _) = tracker();
    let ca = node(&server.url(), "a", &a).await;
    a.touch(id(), Kind::member("gus")).unwrap();
    let before = ca.sync().await.unwrap();
    assert_eq!(before.online, 1);

    server.kill();
    let s = id();
    a.touch(s, Kind::Guest).unwrap();
    assert!(a.heartbeat(s));
    assert_eq!(a.counts().online, 2, "local reads are unaffected");

    let start = Instant::now();
    let err = ca.sync().await.expect_err("Redis is down");
    assert!(
        start.elapsed() < Duration::from_millis(2_100),
        "sync took {:?}",
        start.elapsed()
    );
    println!(
        "sync with Redis killed failed in {:?}: {err}",
        start.elapsed()
    );
    assert!(matches!(
        err,
        ClusterError::Redis(_) | ClusterError::Timeout(_)
    ));
    let c = ca.counts();
    assert!(c.stale);
    assert_eq!(
        (c.online, c.members),
        (1, 1),
        "the last view is kept: {c:?}"
    );
    assert!(ca.page_count("/").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_gets_the_whole_view_back() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let (a, _) = tracker();
    let (b, _) = tracker();
    let ca = node(&server.url(), "a", &a).await;
    let cb = node(&server.url(), "b", &b).await;
    for i in 0..50 {
        a.visit(id(), Kind::member(format!("user{i}")), "/a")
            .unwrap();
        b.visit(id(), Kind::Guest, "/b").unwrap();
    }
    let c = settle(&[&ca, &cb]).await;
    assert_eq!((c.sessions, c.members, c.guests), (100, 50, 50));

    server.restart_empty();
    let answered = Instant::now();
    let restarted = SystemTime::now();
    assert_eq!(server.cli(&["DBSIZE"]), "0", "the restarted Redis is empty");
    let took = eventually(Duration::from_secs(5), "the view comes back", || {
        let (x, y) = (ca.counts(), cb.counts());
        let fresh = |c: &ClusterCounts| !c.stale && c.as_of > restarted;
        fresh(&x) && fresh(&y) && x.sessions == 100 && y.sessions == 100 && x.members == 50
    })
    .await;
    println!("view back {took:?} after the restarted Redis answered (flush interval {FLUSH:?})");
    assert!(
        answered.elapsed() < FLUSH * 2 + Duration::from_millis(1_000),
        "view back after {took:?}"
    );
    assert_eq!(ca.page_count("/a").await.unwrap(), 50);
    assert_eq!(ca.online_members(100).await.unwrap().len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stalled_three_seconds_then_resumed_counts_nothing_twice() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, clock) = tracker();
    let (b, _) = tracker();
    let ca = node(&server.url(), "a", &a).await;
    let cb = node(&server.url(), "b", &b).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let s = id();
        a.visit(s, Kind::member(format!("m{i}")), "/one").unwrap();
        ids.push(s);
    }
    b.touch(ids[0], Kind::member("m0")).unwrap();
    settle(&[&ca, &cb]).await;

    server.stall();
    let stalled = Instant::now();
    let start = Instant::now();
    let err = ca.sync().await.expect_err("Redis is stalled");
    let took = start.elapsed();
    println!("sync with Redis stalled failed in {took:?}: {err}");
    assert!(took < Duration::from_millis(2_100), "sync took {took:?}");
    assert!(ca.counts().stale);
    // Meanwhile: pages change again and again, some leave, some expire, new ones come.
    for round in 0..50 {
        for s in &ids[5..] {
            a.visit(*s, Kind::member("x"), &format!("/page/{}", round % 3))
                .unwrap();
        }
    }
    for s in &ids[1..3] {
        a.leave(*s);
    }
    for _ in 0..30 {
        a.touch(id(), Kind::Guest).unwrap();
    }
    clock.advance(Duration::from_secs(1));
    while stalled.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.resume();

    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = ca.sync().await {
        assert!(Instant::now() < deadline, "no flush after resume: {e}");
    }
    // Both nodes were silent past the node timeout: declared dead, they register anew and
    // send everything again; the view says stale until that is done.
    eventually(FLUSH * 4, "the view is complete again", || {
        !ca.counts().stale
    })
    .await;
    let c = ca.sync().await.unwrap();
    let local = a.counts();
    assert_eq!(
        (c.sessions, c.guests, c.members),
        (local.sessions, local.guests, local.members),
        "the view equals the local truth: {c:?} vs {local:?}"
    );
    assert_eq!(ca.page_count("/one").await.unwrap(), 3);
}

#[test]
fn a_node_that_dies_without_shutdown_leaves_the_view_within_node_timeout() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, _) = tracker();
    let ca = rt.block_on(node(&url, "a", &a));
    let shared = id();
    a.touch(shared, Kind::member("hal")).unwrap();

    // Node b lives in its own runtime, which is torn down without a shutdown.
    let (b, _) = tracker();
    let b_rt = tokio::runtime::Runtime::new().unwrap();
    let cb = b_rt.block_on(node(&url, "b", &b));
    b.touch(shared, Kind::member("hal")).unwrap();
    for i in 0..10 {
        b.visit(id(), Kind::member(format!("b{i}")), "/b").unwrap();
    }
    b_rt.block_on(cb.sync()).unwrap();
    let c = rt.block_on(ca.sync()).unwrap();
    assert_eq!((c.sessions, c.members, c.nodes), (11, 11, 2), "{c:?}");

    drop(b_rt); // the node dies: no final flush
    let died = Instant::now();
    drop(cb);
    rt.block_on(async {
        eventually(NODE_TIMEOUT * 3, "b's sessions leave the view", || {
            let c = ca.counts();
            c.sessions == 1 && c.nodes == 1
        })
        .await;
    });
    let took = died.elapsed();
    println!(
        "a dead node's sessions left the view {took:?} after it died (node_timeout {NODE_TIMEOUT:?})"
    );
    // node_timeout after its last flush, plus at most one flush of a live node to notice
    // (and slack for a loaded machine).
    assert!(
        took < NODE_TIMEOUT + FLUSH * 3 + Duration::from_millis(500),
        "took {took:?}"
    );
    let c = ca.counts();
    assert_eq!(c.members, 1, "the session node a also holds stays: {c:?}");
    assert_eq!(rt.block_on(ca.page_count("/b")).unwrap(), 0);
}

#[test]
fn a_node_restarted_under_a_new_id_counts_nothing_twice() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let ids: Vec<SessionId> = (0..20).map(|_| id()).collect();
    let old_rt = tokio::runtime::Runtime::new().unwrap();
    let (old, _) = tracker();
    let c_old = old_rt.block_on(node(&url, "web-1", &old));
    for s in &ids {
        old.touch(*s, Kind::Guest).unwrap();
    }
    old_rt.block_on(c_old.sync()).unwrap();
    drop(old_rt);
    drop(c_old);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (new, _) = tracker();
    for s in &ids {
        new.touch(*s, Kind::Guest).unwrap();
    }
    let c_new = rt.block_on(node(&url, "web-1-restarted", &new));
    let c = rt.block_on(c_new.sync()).unwrap();
    assert_eq!(c.sessions, 20, "{c:?}");
    rt.block_on(async { tokio::time::sleep(NODE_TIMEOUT + FLUSH * 3).await });
    let c = rt.block_on(c_new.sync()).unwrap();
    assert_eq!((c.sessions, c.nodes), (20, 1), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_is_an_hour_off_changes_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, _) = tracker();
    let late = ManualClock::new();
    late.advance(Duration::from_secs(3600)); // an hour ahead of node a's clock
    let b = tracker_on(&late);
    let ca = node(&server.url(), "a", &a).await;
    let cb = node(&server.url(), "b", &b).await;
    a.touch(id(), Kind::member("ivy")).unwrap();
    b.touch(id(), Kind::member("jon")).unwrap();
    let c = settle(&[&ca, &cb]).await;
    assert_eq!((c.members, c.sessions), (2, 2), "{c:?}");
    match ca.user("jon").await.unwrap() {
        UserStatus::Online { last_seen, .. } => {
            let off = SystemTime::now()
                .duration_since(last_seen)
                .unwrap_or_else(|e| e.duration());
            assert!(off < Duration::from_secs(5), "last seen {off:?} off");
        }
        other => panic!("jon should be online: {other:?}"),
    }
    // Its sessions live and expire by its own clock, the rest by Redis time.
    late.advance(IDLE - Duration::from_secs(1));
    b.reap();
    assert_eq!(settle(&[&cb, &ca]).await.sessions, 2);
    late.advance(Duration::from_secs(1));
    assert_eq!(b.reap(), 1);
    let c = settle(&[&cb, &ca]).await;
    assert_eq!((c.members, c.sessions), (1, 1), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_session_is_renewed_and_an_idle_one_is_not_sent_again() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // Real time here: the hold in Redis lasts the session's time left, 1.5 s.
    let p = Presence::builder()
        .idle_timeout(Duration::from_millis(1_500))
        .reaper(Reaper::Manual)
        .build();
    let c = node(&server.url(), "a", &p).await;
    let busy = id();
    let idle = id();
    p.touch(busy, Kind::Guest).unwrap();
    p.touch(idle, Kind::Bot).unwrap();
    assert_eq!(c.sync().await.unwrap().sessions, 2);
    server.cli(&["CONFIG", "RESETSTAT"]);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        assert!(p.heartbeat(busy));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = c.sync().await.unwrap();
    assert_eq!((v.sessions, v.guests, v.bots), (1, 1, 0), "{v:?}");
    let stats = server.cli(&["INFO", "commandstats"]);
    println!("{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_is_a_stale_view_that_fills_once_it_answers() {
    if !redis_server::available() {
        return;
    }
    let port = redis_server::free_port();
    let (a, _) = tracker();
    a.touch(id(), Kind::member("kim")).unwrap();
    let ca = node(&format!("redis://127.0.0.1:{port}"), "a", &a).await;
    let c = ca.counts();
    assert!(c.stale);
    assert_eq!(c.online, 0);
    let start = Instant::now();
    assert!(ca.sync().await.is_err());
    assert!(start.elapsed() < Duration::from_millis(2_100));
    assert!(matches!(
        ca.online_members(5).await,
        Err(ClusterError::Unavailable)
    ));

    let server = RedisServer::start_on(port);
    eventually(Duration::from_secs(5), "the view fills", || {
        let c = ca.counts();
        !c.stale && c.members == 1
    })
    .await;
    drop(server);
}

#[tokio::test]
async fn start_refuses_a_bad_url_or_setting() {
    let p = Presence::new();
    let bad = |b: presence_tracker::cluster::ClusterBuilder| async {
        matches!(b.start(&p).await, Err(ClusterError::InvalidSetting(_)))
    };
    assert!(bad(Cluster::builder("not a url")).await);
    assert!(bad(Cluster::builder("redis://127.0.0.1:1").namespace("")).await);
    assert!(bad(Cluster::builder("redis://127.0.0.1:1").namespace("a{b")).await);
    assert!(bad(Cluster::builder("redis://127.0.0.1:1").node_id("x".repeat(1000))).await);
    assert!(bad(Cluster::builder("redis://127.0.0.1:1").flush_interval(Duration::ZERO)).await);
    assert!(
        bad(Cluster::builder("redis://127.0.0.1:1")
            .flush_interval(Duration::from_secs(5))
            .node_timeout(Duration::from_secs(6)))
        .await
    );
    let err = Cluster::builder("not a url").start(&p).await.unwrap_err();
    assert!(err.to_string().contains("not a url"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_pages_and_users_read_across_nodes() {
    let Some((_server, a, b, ca, cb)) = two_nodes().await else {
        return;
    };
    a.visit(id(), Kind::member("Bob"), "/t/1").unwrap();
    a.visit(id(), Kind::member("carol"), "/t/2").unwrap();
    b.visit(id(), Kind::member("alice"), "/t/1").unwrap();
    b.visit(id(), Kind::member("alice"), "/t/1").unwrap(); // two tabs
    b.visit(id(), Kind::hidden_member("zed"), "/t/1").unwrap();
    b.visit(id(), Kind::Guest, "/t/3").unwrap();
    b.visit(id(), Kind::Guest, "/t/2").unwrap();
    settle(&[&ca, &cb]).await;

    assert_eq!(
        names(ca.online_members(10).await.unwrap()),
        ["alice", "Bob", "carol"]
    );
    assert_eq!(names(ca.online_members(2).await.unwrap()), ["alice", "Bob"]);
    assert!(ca.online_members(0).await.unwrap().is_empty());
    assert_eq!(
        names(cb.page_members("/t/1", 10).await.unwrap()),
        ["alice", "Bob"]
    );
    assert_eq!(names(cb.page_members("/t/1", 1).await.unwrap()), ["alice"]);
    assert_eq!(cb.page_count("/t/1").await.unwrap(), 4);
    assert_eq!(
        ca.top_pages(10).await.unwrap(),
        [
            ("/t/1".to_owned(), 4),
            ("/t/2".to_owned(), 2),
            ("/t/3".to_owned(), 1)
        ]
    );
    assert_eq!(ca.top_pages(2).await.unwrap().len(), 2);
    match ca.user("alice").await.unwrap() {
        UserStatus::Online {
            sessions,
            hidden,
            idle,
            ..
        } => assert_eq!((sessions, hidden, idle), (2, false, false)),
        other => panic!("alice is online on b: {other:?}"),
    }
    assert_eq!(ca.user("nobody").await.unwrap(), UserStatus::Unknown);
    assert!(matches!(
        ca.user("zed").await.unwrap(),
        UserStatus::Online { hidden: true, .. }
    ));
    // Odd names and pages are data, never syntax.
    let odd = "we\u{0}ird {tag} name\n";
    a.visit(id(), Kind::member(odd), "/pa{ge}\u{0}").unwrap();
    settle(&[&ca]).await;
    assert!(names(ca.online_members(10).await.unwrap()).contains(&odd.to_owned()));
    assert_eq!(ca.page_count("/pa{ge}\u{0}").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_removes_this_nodes_sessions_but_not_those_another_node_holds() {
    let Some((_server, a, b, ca, cb)) = two_nodes().await else {
        return;
    };
    let both = id();
    a.touch(both, Kind::Guest).unwrap();
    b.touch(both, Kind::Guest).unwrap();
    for _ in 0..5 {
        a.touch(id(), Kind::Bot).unwrap();
    }
    assert_eq!(settle(&[&ca, &cb]).await.sessions, 6);
    ca.shutdown().await;
    assert!(matches!(ca.sync().await, Err(ClusterError::Stopped)));
    let c = cb.sync().await.unwrap();
    assert_eq!(
        (c.sessions, c.guests, c.bots, c.nodes),
        (1, 1, 0, 1),
        "{c:?}"
    );
    // Touches on a no longer reach the view.
    a.touch(id(), Kind::Guest).unwrap();
    tokio::time::sleep(FLUSH * 3).await;
    assert_eq!(cb.sync().await.unwrap().sessions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_costs_what_changed_not_what_is_stored() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, _) = tracker();
    let ids: Vec<SessionId> = (0..2_000).map(|_| id()).collect();
    for (i, s) in ids.iter().enumerate() {
        a.visit(*s, Kind::member(format!("u{i}")), "/").unwrap();
    }
    let ca = node(&server.url(), "a", &a).await;
    assert_eq!(ca.sync().await.unwrap().sessions, 2_000);

    // Every session touched again (requests, heartbeats): nothing to send.
    for (i, s) in ids.iter().enumerate() {
        a.touch(*s, Kind::member(format!("u{i}"))).unwrap();
        assert!(a.heartbeat(*s));
    }
    server.cli(&["CONFIG", "RESETSTAT"]);
    ca.sync().await.unwrap();
    let idle = server.commandstats("").1;
    // A fixed cost per hash tag: registering, the view, a slice of key TTLs.
    let tags = redis_server::shards() as u64;
    assert!(
        idle < 60 * tags,
        "a flush with nothing changed ran {idle} commands over {tags} tags"
    );

    // Ten sessions change page: the flush grows by about ten sessions' worth, not 2000.
    for (i, s) in ids[..10].iter().enumerate() {
        a.visit(*s, Kind::member(format!("u{i}")), "/elsewhere")
            .unwrap();
    }
    server.cli(&["CONFIG", "RESETSTAT"]);
    ca.sync().await.unwrap();
    let ten = server.commandstats("").1;
    assert!(
        ten > idle && ten < idle + 10 * 40,
        "ten changes ran {ten} commands"
    );
    println!("flush commands: {idle} with nothing changed, {ten} with ten page changes");
    assert_eq!(ca.page_count("/elsewhere").await.unwrap(), 10);
    assert_eq!(ca.page_count("/").await.unwrap(), 1_990);
    assert_eq!(ca.page_members("/elsewhere", 100).await.unwrap().len(), 10);
    assert_eq!(ca.page_members("/", 5).await.unwrap().len(), 5);
    assert!(!names(ca.page_members("/", 2_000).await.unwrap()).contains(&"u3".to_owned()));
    let c = ca.counts();
    assert_eq!(
        (c.members, c.sessions),
        (2_000, 2_000),
        "a page change moves no user: {c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_leaves_between_two_flushes_ends_every_one_everywhere() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let clock = ManualClock::new();
    // A tiny event channel: the leaves must not depend on it.
    let a = Presence::builder()
        .clock(clock.clone())
        .reaper(Reaper::Manual)
        .idle_timeout(IDLE)
        .event_capacity(4)
        .build();
    let (b, _) = tracker();
    let _events = a.subscribe(); // a subscriber that never reads
    let ca = node(&server.url(), "a", &a).await;
    let cb = node(&server.url(), "b", &b).await;
    let ids: Vec<SessionId> = (0..300).map(|_| id()).collect();
    for s in &ids {
        a.touch(*s, Kind::Guest).unwrap();
        b.touch(*s, Kind::Guest).unwrap();
    }
    assert_eq!(settle(&[&ca, &cb]).await.sessions, 300);
    for s in &ids {
        assert!(a.leave(*s).is_some());
    }
    let c = settle(&[&ca, &cb]).await;
    assert_eq!(
        c.sessions, 0,
        "every leave ends the session for node b too: {c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_before_a_restart_keeps_the_sessions_saved_to_a_snapshot() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("presence-cluster-{}", SessionId::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node-a.snapshot");
    let clock = ManualClock::new();
    let a = Presence::builder()
        .clock(clock.clone())
        .reaper(Reaper::Manual)
        .idle_timeout(Duration::from_secs(3))
        .snapshot_file(&file)
        .build();
    let (b, _) = tracker();
    let ca = node(&server.url(), "a", &a).await;
    let cb = node(&server.url(), "b", &b).await;
    let a_ids: Vec<SessionId> = (0..3).map(|_| id()).collect();
    for (i, s) in a_ids.iter().enumerate() {
        a.visit(*s, Kind::member(format!("a{i}")), "/a").unwrap();
    }
    b.touch(id(), Kind::Guest).unwrap();
    assert_eq!(settle(&[&ca, &cb]).await.sessions, 4);

    // A deploy: a saves its sessions for the next start, so they stay in the view...
    ca.shutdown().await;
    a.shutdown();
    assert!(file.exists(), "the snapshot was saved");
    tokio::time::sleep(NODE_TIMEOUT + FLUSH * 3).await;
    let c = cb.sync().await.unwrap();
    assert_eq!((c.sessions, c.members, c.nodes), (4, 3, 1), "{c:?}");
    // Spread over several tags, a parked session's page is in another tag than the session,
    // which its expiry cannot reach: the parked sessions stay counted, off their pages.
    let parked_pages = redis_server::shards() == 1;
    let on_a = |n: usize| if parked_pages { n } else { 0 };
    assert_eq!(cb.page_count("/a").await.unwrap(), on_a(3));
    // One of them shows up on b, on another page: it moves there, counted once.
    b.visit(a_ids[0], Kind::member("a0"), "/b").unwrap();
    cb.sync().await.unwrap();
    assert_eq!(cb.page_count("/a").await.unwrap(), on_a(2));
    assert_eq!(cb.page_count("/b").await.unwrap(), 1);
    assert_eq!(cb.page_members("/a", 10).await.unwrap().len(), on_a(2));

    // ...and, if a never comes back, leave it on their own time (3 s here); the one b
    // holds too stays.
    eventually(Duration::from_secs(6), "a's parked sessions expire", || {
        cb.counts().sessions == 2
    })
    .await;
    let c = cb.sync().await.unwrap();
    assert_eq!((c.sessions, c.members, c.guests), (2, 1, 1), "{c:?}");
    assert_eq!(cb.page_count("/a").await.unwrap(), 0, "their page too");
    assert_eq!(cb.page_count("/b").await.unwrap(), 1);
    assert!(cb.page_members("/a", 10).await.unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_takes_its_parked_sessions_back_without_counting_twice() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("presence-cluster-{}", SessionId::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node-a.snapshot");
    let build = || {
        Presence::builder()
            .reaper(Reaper::Manual)
            .idle_timeout(IDLE)
            .snapshot_file(&file)
            .build()
    };
    let first = build();
    let ca = node(&server.url(), "a", &first).await;
    let tab = id();
    first.visit(tab, Kind::member("ada"), "/x").unwrap();
    first.touch(id(), Kind::Guest).unwrap();
    assert_eq!(ca.sync().await.unwrap().online, 2);
    ca.shutdown().await;
    first.shutdown();
    drop(first);

    let second = build();
    assert!(second.session(tab).is_some(), "restored");
    let ca = node(&server.url(), "a", &second).await;
    let c = ca.sync().await.unwrap();
    assert_eq!(
        (c.online, c.members, c.sessions, c.nodes),
        (2, 1, 2, 1),
        "{c:?}"
    );
    // An explicit leave ends the session for every hold, parked ones included.
    second.leave(tab);
    let c = ca.sync().await.unwrap();
    assert_eq!((c.online, c.members, c.sessions), (1, 0, 1), "{c:?}");
    ca.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// No sticky sessions: one browser's page views alternate between the nodes. Its page is
/// counted once, on the page it is on now, and its name is listed there only: the node that
/// sees a new page takes the session, and the one that counted it drops it in its next flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moving_between_nodes_counts_once_on_its_latest_page() {
    let Some((_server, a, b, ca, cb)) = two_nodes().await else {
        return;
    };
    let s = id();
    let g = id();
    for (step, (node, page)) in [(&a, "/1"), (&b, "/2"), (&a, "/3"), (&b, "/3"), (&a, "/1")]
        .into_iter()
        .enumerate()
    {
        node.visit(s, Kind::member("mover"), page).unwrap();
        node.visit(g, Kind::Guest, page).unwrap();
        // The node that sees the move takes the sessions; the other drops them at its next
        // flush; the next round of reads shows it everywhere (two flush intervals).
        settle(&[&ca, &cb]).await;
        let c = settle(&[&ca, &cb]).await;
        assert_eq!(
            (c.sessions, c.members, c.guests),
            (2, 1, 1),
            "step {step}: {c:?}"
        );
        for cluster in [&ca, &cb] {
            assert_eq!(
                cluster.top_pages(10).await.unwrap(),
                [(page.to_owned(), 2)],
                "step {step}: both sessions on {page} only"
            );
            assert_eq!(
                names(cluster.page_members(page, 10).await.unwrap()),
                ["mover"],
                "step {step}"
            );
        }
        for other in ["/1", "/2", "/3"].into_iter().filter(|p| *p != page) {
            assert!(
                ca.page_members(other, 10).await.unwrap().is_empty(),
                "step {step}: not listed on {other}"
            );
        }
    }
    // A heartbeat on the node that lost the session takes nothing back: its page there is
    // an old one.
    assert!(b.heartbeat(s));
    let c = settle(&[&cb, &ca]).await;
    assert_eq!(c.sessions, 2);
    assert_eq!(ca.top_pages(10).await.unwrap(), [("/1".to_owned(), 2)]);
    // It ends on the node that counts it, then on the other: its page empties with the
    // first (the other is told that nobody counts it, and it is still on an old page there
    // only), and the session leaves with the second.
    a.leave(s);
    settle(&[&ca, &cb]).await;
    assert_eq!(ca.page_count("/1").await.unwrap(), 1, "only the guest");
    assert!(cb.page_members("/1", 10).await.unwrap().is_empty());
}

/// A node that dies while it counts sessions' pages: its pages come off with it, and a
/// session the other node also holds is counted again there, on the page it has there.
#[test]
fn a_dead_nodes_pages_come_off_and_a_shared_session_is_counted_by_the_survivor() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b_rt = tokio::runtime::Runtime::new().unwrap();
    let (a, _) = tracker();
    let (b, _) = tracker();
    let ca = rt.block_on(node(&url, "a", &a));
    let cb = b_rt.block_on(node(&url, "b", &b));
    let shared = id();
    a.visit(shared, Kind::member("both"), "/seen-on-a").unwrap();
    rt.block_on(ca.sync()).unwrap();
    b.visit(shared, Kind::member("both"), "/seen-on-b").unwrap();
    for i in 0..20 {
        b.visit(id(), Kind::member(format!("b{i}")), "/b").unwrap();
    }
    b_rt.block_on(cb.sync()).unwrap();
    let c = rt.block_on(ca.sync()).unwrap();
    assert_eq!(c.sessions, 21);
    assert_eq!(rt.block_on(ca.page_count("/seen-on-a")).unwrap(), 0);
    assert_eq!(rt.block_on(ca.page_count("/seen-on-b")).unwrap(), 1);

    drop(b_rt); // b dies: no final flush
    drop(cb);
    rt.block_on(async {
        eventually(
            NODE_TIMEOUT * 4,
            "b's sessions and pages leave the view",
            || {
                let c = ca.counts();
                c.sessions == 1 && c.nodes == 1 && !c.stale
            },
        )
        .await;
        ca.sync().await.unwrap();
        assert_eq!(ca.page_count("/b").await.unwrap(), 0);
        assert_eq!(ca.page_count("/seen-on-b").await.unwrap(), 0);
        assert_eq!(
            ca.top_pages(10).await.unwrap(),
            [("/seen-on-a".to_owned(), 1)],
            "the shared session, counted by a again on its page there"
        );
        assert_eq!(
            names(ca.page_members("/seen-on-a", 10).await.unwrap()),
            ["both"]
        );
    });
}

/// Erasing a user across the cluster (a GDPR erasure): their sessions on every node end,
/// every node forgets the name, and no key or value in Redis holds it afterwards; Redis
/// only ever held a keyed hash of it for the other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_user_leaves_every_node_and_every_redis_key() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, _) = tracker();
    let (b, clock_b) = tracker();
    let ca = node(&server.url(), "a", &a).await;
    let cb = node(&server.url(), "b", &b).await;
    let name = "Erasable-Eve-7f3a";
    a.visit(id(), Kind::member(name), "/eve/a").unwrap();
    b.visit(id(), Kind::hidden_member(name), "/eve/b").unwrap();
    b.visit(id(), Kind::member(name), "/eve/b").unwrap();
    a.visit(id(), Kind::member("keeper"), "/eve/a").unwrap();
    settle(&[&ca, &cb]).await;
    assert_eq!(
        names(ca.page_members("/eve/b", 10).await.unwrap()),
        [name],
        "listed there before"
    );
    let before = server.dump_all();
    assert!(before.contains(name), "the dump shows names: {before}");
    // A third node knows eve only as offline (remembered): it forgets her too.
    let (c, _) = tracker();
    let gone = id();
    c.visit(gone, Kind::member(name), "/eve/c").unwrap();
    c.leave(gone);
    assert!(matches!(c.user(name), UserStatus::Offline { .. }));
    let cc = node(&server.url(), "c", &c).await;

    assert_eq!(ca.erase_user(name).await.unwrap(), 1, "one session on a");
    assert_eq!(a.user(name), UserStatus::Unknown);
    // The other nodes erase her at their next flush; their leaves go out in the same one.
    settle(&[&cb, &cc, &ca]).await;
    let c = settle(&[&ca, &cb, &cc]).await;
    assert_eq!(b.user(name), UserStatus::Unknown);
    assert_eq!(c.members, 1, "only keeper: {c:?}");
    assert_eq!((c.sessions, c.hidden), (1, 0), "{c:?}");
    assert_eq!(ca.user(name).await.unwrap(), UserStatus::Unknown);
    assert!(cb.page_members("/eve/b", 10).await.unwrap().is_empty());
    assert_eq!(cb.page_count("/eve/b").await.unwrap(), 0);
    let after = server.dump_all();
    assert!(
        !after.contains(name) && !after.to_lowercase().contains(&name.to_lowercase()),
        "the name is stored nowhere in Redis: {after}"
    );
    assert!(after.contains("keeper"), "everything else stays");

    // Erasing again does no harm; a name no user can have is refused.
    assert_eq!(cb.erase_user(name).await.unwrap(), 0);
    assert!(matches!(
        ca.erase_user(&"x".repeat(10_000)).await,
        Err(ClusterError::Presence(_))
    ));
    // Nothing else was erased by a hash collision of the test's making.
    clock_b.advance(Duration::from_secs(1));
    assert!(matches!(a.user("keeper"), UserStatus::Online { .. }));
    drop(cc);
}

/// Round-robin without sticky sessions, at volume: 2400 sessions, each page view on the
/// other node than the last. Every view moves every session's page owner, so each node's
/// inbox gets 1200 messages per flush, more than one call brings back; after two rounds of
/// flushes the page counts are exact and add up to the sessions, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_page_views_keep_page_counts_exact() {
    let Some((_server, a, b, ca, cb)) = two_nodes().await else {
        return;
    };
    let ids: Vec<SessionId> = (0..2_400).map(|_| id()).collect();
    for step in 0..6 {
        for (i, s) in ids.iter().enumerate() {
            let node = if (i + step) % 2 == 0 { &a } else { &b };
            let kind = if i % 3 == 0 {
                Kind::member(format!("rr{i}"))
            } else {
                Kind::Guest
            };
            node.visit(*s, kind, &format!("/rr/{}", (i + step) % 4))
                .unwrap();
        }
        settle(&[&ca, &cb]).await;
        let c = settle(&[&ca, &cb]).await;
        assert_eq!(c.sessions, 2_400, "step {step}: {c:?}");
        let top = cb.top_pages(10).await.unwrap();
        assert_eq!(
            top.iter().map(|(_, n)| n).sum::<usize>(),
            2_400,
            "step {step}: each session on one page: {top:?}"
        );
        for (page, n) in &top {
            assert_eq!(*n, 600, "step {step}: {page}");
        }
        assert_eq!(
            ca.page_members(&format!("/rr/{}", step % 4), 1000)
                .await
                .unwrap()
                .len(),
            200,
            "step {step}: the members on one page, listed once"
        );
    }
}

/// No sticky sessions around a sign-in: a guest signs in on b while the page's heartbeats
/// keep reaching a, where the session is still a guest. It counts once, as the member, and
/// a's renewals of what it had do not bring the guest back (spread over several tags, the
/// session moved to its user's tag: a keeps its claim on the mark it left behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_who_signs_in_on_another_node_counts_once_while_heartbeats_reach_both() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // Real time: claims last 1.5 s, so a renews its claim every 0.75 s of heartbeats.
    let tracker = || {
        Presence::builder()
            .idle_timeout(Duration::from_millis(1_500))
            .reaper(Reaper::Manual)
            .build()
    };
    let (a, b) = (tracker(), tracker());
    let ca = node(&server.url(), "a", &a).await;
    let cb = node(&server.url(), "b", &b).await;
    let s = id();
    a.visit(s, Kind::Guest, "/x").unwrap();
    let c = settle(&[&ca, &cb]).await;
    assert_eq!((c.sessions, c.guests, c.members), (1, 1, 0), "{c:?}");

    b.visit(s, Kind::member("erin"), "/x").unwrap();
    let c = settle(&[&cb, &ca]).await;
    assert_eq!((c.sessions, c.guests, c.members), (1, 0, 1), "{c:?}");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert!(a.heartbeat(s) && b.heartbeat(s));
        tokio::time::sleep(Duration::from_millis(100)).await;
        for c in [ca.sync().await.unwrap(), cb.sync().await.unwrap()] {
            assert_eq!(
                (c.sessions, c.guests, c.members, c.online),
                (1, 0, 1, 1),
                "after {:?}: {c:?}",
                start.elapsed()
            );
        }
    }
    assert_eq!(ca.page_count("/x").await.unwrap(), 1);
    assert_eq!(names(ca.page_members("/x", 10).await.unwrap()), ["erin"]);

    // a sees the sign-in too, then b lets the session go: a still holds it, as erin.
    a.touch(s, Kind::member("erin")).unwrap();
    settle(&[&ca, &cb]).await;
    cb.shutdown().await;
    let c = ca.sync().await.unwrap();
    assert_eq!((c.sessions, c.guests, c.members), (1, 0, 1), "{c:?}");
}
