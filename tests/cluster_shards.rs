//! The cluster view spread over several hash tags (`ClusterBuilder::shards`) against a real
//! Redis Cluster of three masters started by the tests: the view is the same as with one
//! tag, the masters share the work, a master lost (with Redis's default full coverage and
//! without it) and back empty, and nodes that disagree on the number of tags.
#![cfg(feature = "redis")]

#[path = "common/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use presence_tracker::cluster::{Cluster, ClusterCounts, ClusterError};
use presence_tracker::{Kind, ManualClock, Presence, Reaper, SessionId, UserStatus};
use redis_server::{RedisCluster, RedisServer, eventually};

const FLUSH: Duration = Duration::from_millis(100);
const NODE_TIMEOUT: Duration = Duration::from_millis(600);
const IDLE: Duration = Duration::from_secs(60);
const SHARDS: usize = 16;
const NS: &str = "test";
/// The harness's servers, with a shorter `cluster-node-timeout` so that the cluster
/// notices a killed master within about a second.
const QUICK: &[&str] = &["--cluster-node-timeout", "1000"];

fn tracker() -> Presence {
    Presence::builder()
        .clock(ManualClock::new())
        .reaper(Reaper::Manual)
        .idle_timeout(IDLE)
        .idle_after(Duration::from_secs(30))
        .heartbeat_limit(Duration::from_secs(600))
        .build()
}

async fn node_with(url: &str, ns: &str, name: &str, shards: usize, p: &Presence) -> Cluster {
    Cluster::builder(url)
        .namespace(ns)
        .shards(shards)
        .node_id(name)
        .flush_interval(FLUSH)
        .node_timeout(NODE_TIMEOUT)
        .start(p)
        .await
        .expect("valid settings")
}

async fn node(url: &str, name: &str, p: &Presence) -> Cluster {
    node_with(url, NS, name, SHARDS, p).await
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

/// `(online, members, hidden, guests, bots, sessions)`.
fn totals(c: &ClusterCounts) -> (usize, usize, usize, usize, usize, usize) {
    (c.online, c.members, c.hidden, c.guests, c.bots, c.sessions)
}

/// Runs blocking harness work (waiting on the Redis Cluster) without stalling the runtime's
/// other tasks (the flush tasks).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The scenario of `tests/cluster.rs` (`two_nodes_scenario`), on 16 tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_tags_on_three_masters_show_one_view_and_a_user_on_both_nodes_counts_once() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let url = cluster.nodes[2].url();
    let (a, b) = (tracker(), tracker());
    let ca = node(&url, "a", &a).await;
    let cb = node(&url, "b", &b).await;
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
    assert!(!c.stale && !c.partial, "{c:?}");
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
    match cb.user("alice").await.unwrap() {
        UserStatus::Online {
            sessions, hidden, ..
        } => assert_eq!((sessions, hidden), (2, false)),
        other => panic!("alice should be online: {other:?}"),
    }

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

/// Many users and pages over 16 tags: every merged read is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_reads_over_sixteen_tags_are_exact() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let url = cluster.nodes[0].url();
    let (a, b) = (tracker(), tracker());
    let ca = node(&url, "a", &a).await;
    let cb = node(&url, "b", &b).await;
    // 60 users: u0..u39 on a, u20..u59 on b (u20..u39 on both), each on page /p/(i % 4);
    // h0..h9 hidden on b; 30 guests and 5 bots on each node.
    for i in 0..40 {
        a.visit(
            id(),
            Kind::member(format!("u{i:02}")),
            &format!("/p/{}", i % 4),
        )
        .unwrap();
    }
    for i in 20..60 {
        b.visit(
            id(),
            Kind::member(format!("u{i:02}")),
            &format!("/p/{}", i % 4),
        )
        .unwrap();
    }
    for i in 0..10 {
        b.visit(id(), Kind::hidden_member(format!("h{i}")), "/p/0")
            .unwrap();
    }
    for i in 0..30 {
        a.visit(id(), Kind::Guest, &format!("/g/{}", i % 3))
            .unwrap();
        b.visit(id(), Kind::Guest, &format!("/g/{}", i % 3))
            .unwrap();
    }
    for _ in 0..5 {
        a.touch(id(), Kind::Bot).unwrap();
        b.touch(id(), Kind::Bot).unwrap();
    }
    let c = settle(&[&ca, &cb]).await;
    assert_eq!(totals(&c), (130, 60, 10, 60, 10, 160), "{c:?}");
    assert_eq!(c.nodes, 2);
    // /p/k: 20 sessions of a's and b's users (80 in all), plus the hidden on /p/0.
    for (k, n) in [(0, 30), (1, 20), (2, 20), (3, 20)] {
        assert_eq!(
            ca.page_count(&format!("/p/{k}")).await.unwrap(),
            n,
            "/p/{k}"
        );
    }
    let top = cb.top_pages(3).await.unwrap();
    assert_eq!(top[0], ("/p/0".to_owned(), 30), "{top:?}");
    assert_eq!(top.len(), 3);
    assert!(top[1..].iter().all(|(_, n)| *n == 20), "{top:?}");
    let all = cb.top_pages(100).await.unwrap();
    assert_eq!(all.len(), 7, "{all:?}");
    assert_eq!(all.iter().map(|(_, n)| n).sum::<usize>(), 150);
    let members = names(ca.online_members(100).await.unwrap());
    let want: Vec<String> = (0..60).map(|i| format!("u{i:02}")).collect();
    assert_eq!(members, want, "every listed user once, in name order");
    assert_eq!(names(ca.online_members(5).await.unwrap()), want[..5]);
    let on_1 = names(cb.page_members("/p/1", 100).await.unwrap());
    let want_1: Vec<String> = (0..60)
        .filter(|i| i % 4 == 1)
        .map(|i| format!("u{i:02}"))
        .collect();
    assert_eq!(on_1, want_1);
}

/// No sticky sessions around a sign-in: each guest is seen by a, then signs in on b, which
/// moves it from its id's tag to its user's. It counts once, as the member, while both
/// nodes keep receiving its heartbeats (a's renewals of the guest count nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_who_signs_in_on_the_other_node_counts_once_across_tags() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let url = cluster.nodes[1].url();
    // Real time: claims last 1.5 s, so a renews its claims every 0.75 s of heartbeats.
    let tracker = || {
        Presence::builder()
            .idle_timeout(Duration::from_millis(1_500))
            .reaper(Reaper::Manual)
            .build()
    };
    let (a, b) = (tracker(), tracker());
    let ca = node(&url, "a", &a).await;
    let cb = node(&url, "b", &b).await;
    // Eight of them, so that (almost surely) most have an id tag other than their user's.
    let ids: Vec<SessionId> = (0..8).map(|_| id()).collect();
    for s in &ids {
        a.visit(*s, Kind::Guest, "/x").unwrap();
    }
    let c = settle(&[&ca, &cb]).await;
    assert_eq!((c.sessions, c.guests, c.members), (8, 8, 0), "{c:?}");

    for (i, s) in ids.iter().enumerate() {
        b.visit(*s, Kind::member(format!("signed{i}")), "/x")
            .unwrap();
    }
    let c = settle(&[&cb, &ca]).await;
    assert_eq!((c.sessions, c.guests, c.members), (8, 0, 8), "{c:?}");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        for s in &ids {
            assert!(a.heartbeat(*s) && b.heartbeat(*s));
        }
        tokio::time::sleep(FLUSH).await;
        for c in [ca.sync().await.unwrap(), cb.sync().await.unwrap()] {
            assert_eq!(
                (c.sessions, c.guests, c.members, c.online),
                (8, 0, 8, 8),
                "after {:?}: {c:?}",
                start.elapsed()
            );
        }
    }
    assert_eq!(ca.page_count("/x").await.unwrap(), 8);
    assert_eq!(ca.page_members("/x", 20).await.unwrap().len(), 8);
    assert_eq!(cb.online_members(20).await.unwrap().len(), 8);
}

/// A node that dies without `shutdown()`: its sessions leave the view within
/// `node_timeout` in every tag; a session the other node also holds stays.
#[test]
fn a_node_that_dies_without_shutdown_leaves_every_tag_within_node_timeout() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let url = cluster.nodes[0].url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = tracker();
    let ca = rt.block_on(node(&url, "a", &a));
    let shared = id();
    a.touch(shared, Kind::member("hal")).unwrap();

    // Node b lives in its own runtime, which is torn down without a shutdown.
    let b = tracker();
    let b_rt = tokio::runtime::Runtime::new().unwrap();
    let cb = b_rt.block_on(node(&url, "b", &b));
    b.touch(shared, Kind::member("hal")).unwrap();
    for i in 0..30 {
        b.visit(id(), Kind::member(format!("b{i}")), "/b").unwrap();
        b.visit(id(), Kind::Guest, "/b").unwrap();
    }
    b_rt.block_on(cb.sync()).unwrap();
    let c = rt.block_on(ca.sync()).unwrap();
    assert_eq!((c.sessions, c.members, c.nodes), (61, 31, 2), "{c:?}");

    drop(b_rt); // the node dies: no final flush
    let died = Instant::now();
    drop(cb);
    rt.block_on(async {
        eventually(NODE_TIMEOUT * 4, "b's sessions leave the view", || {
            let c = ca.counts();
            c.sessions == 1 && c.nodes == 1
        })
        .await;
    });
    let took = died.elapsed();
    println!(
        "a dead node's sessions left the 16-tag view {took:?} after it died (node_timeout {NODE_TIMEOUT:?})"
    );
    assert!(
        took < NODE_TIMEOUT + FLUSH * 3 + Duration::from_millis(500),
        "took {took:?}"
    );
    let c = rt.block_on(ca.sync()).unwrap();
    assert_eq!((c.members, c.guests), (1, 0), "hal stays: {c:?}");
    assert_eq!(rt.block_on(ca.page_count("/b")).unwrap(), 0);
    assert_eq!(names(rt.block_on(ca.online_members(10)).unwrap()), ["hal"]);
}

/// The same load on 16 tags, then on 1: with 16 every master runs a real share of the
/// flush scripts; with 1, one master runs them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_tags_spread_the_work_over_every_master() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let url = cluster.nodes[0].url();
    for (k, ns) in [(16, "spread16"), (1, "spread1")] {
        let p = tracker();
        let c = node_with(&url, ns, "a", k, &p).await;
        c.sync().await.unwrap();
        cluster.reset_stats();
        let cpu0 = cluster.cpu_per_master();
        let ids: Vec<SessionId> = (0..3_000).map(|_| id()).collect();
        let kind = |i: usize| {
            if i % 3 == 0 {
                Kind::member(format!("w{i}"))
            } else {
                Kind::Guest
            }
        };
        for round in 0..4 {
            for (i, s) in ids.iter().enumerate() {
                p.visit(*s, kind(i), &format!("/w/{}", (i + round) % 20))
                    .unwrap();
            }
            let v = c.sync().await.unwrap();
            assert_eq!((v.sessions, v.members), (3_000, 1_000), "{v:?}");
        }
        for s in &ids[..500] {
            p.leave(*s);
        }
        assert_eq!(c.sync().await.unwrap().sessions, 2_500);
        let calls = cluster.calls_per_master("evalsha");
        let cpu: Vec<f64> = cluster
            .cpu_per_master()
            .iter()
            .zip(&cpu0)
            .map(|(x, y)| x - y)
            .collect();
        let total: u64 = calls.iter().sum();
        println!("shards({k}): EVALSHA calls per master {calls:?}, CPU seconds {cpu:.3?}");
        assert!(total > 0);
        if k > 1 {
            for (m, n) in calls.iter().enumerate() {
                assert!(
                    *n as f64 >= total as f64 * 0.15,
                    "master {m} ran {n} of {total} script calls: {calls:?}"
                );
            }
        } else {
            assert_eq!(
                calls.iter().filter(|n| **n > 0).count(),
                1,
                "one tag, one master: {calls:?}"
            );
        }
        c.shutdown().await;
    }
}

/// 142 sessions over two nodes: 40 members (10 of them on both nodes), 2 hidden, 80
/// guests, 10 bots; pages /a (a's members), /b (b's), /g (guests).
fn load(a: &Presence, b: &Presence) -> Vec<SessionId> {
    for i in 0..40 {
        a.visit(id(), Kind::member(format!("m{i:02}")), "/a")
            .unwrap();
    }
    for i in 0..10 {
        b.visit(id(), Kind::member(format!("m{i:02}")), "/b")
            .unwrap();
    }
    for i in 0..2 {
        b.visit(id(), Kind::hidden_member(format!("h{i}")), "/b")
            .unwrap();
    }
    let mut b_guests = Vec::new();
    for _ in 0..40 {
        a.visit(id(), Kind::Guest, "/g").unwrap();
        let s = id();
        b.visit(s, Kind::Guest, "/g").unwrap();
        b_guests.push(s);
    }
    for _ in 0..10 {
        b.touch(id(), Kind::Bot).unwrap();
    }
    b_guests
}

const LOADED: (usize, usize, usize, usize, usize, usize) = (122, 40, 2, 80, 10, 142);

/// Waits until `pred` holds for the counts of every node in `nodes`, failing with `what`
/// and their counts; returns how long it took.
async fn until(
    nodes: &[&Cluster],
    within: Duration,
    what: &str,
    pred: impl Fn(&ClusterCounts) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let counts: Vec<ClusterCounts> = nodes.iter().map(|n| n.counts()).collect();
        if counts.iter().all(&pred) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "not within {within:?}: {what}: {counts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The master to lose: the one that keeps the namespace's own key (`{ns}:shards`, which
/// every node checks the number of tags with), or another; and a master that stays up,
/// for the nodes' URL.
fn victim(cluster: &RedisCluster, namespace_master: bool) -> (usize, String) {
    let ns_master = cluster.master_of_key(&format!("{{{NS}}}:shards"));
    let victim = if namespace_master {
        ns_master
    } else {
        (ns_master + 1) % 3
    };
    (victim, cluster.nodes[(victim + 1) % 3].url())
}

/// Redis's default `cluster-require-full-coverage yes`: one master down and every master
/// refuses, so every node's view is stale (not partial) with the last good numbers; the
/// master back empty, the lost tags are sent again and the view is exact, the changes made
/// meanwhile included.
async fn full_coverage_scenario(namespace_master: bool) {
    let Some(mut cluster) = RedisCluster::start_with(QUICK) else {
        return;
    };
    let (victim, url) = victim(&cluster, namespace_master);
    let (a, b) = (tracker(), tracker());
    // a was given the lost master's URL: it reconnects through the other masters it learnt.
    let ca = node(&cluster.nodes[victim].url(), "a", &a).await;
    let cb = node(&url, "b", &b).await;
    let b_guests = load(&a, &b);
    settle(&[&ca, &cb]).await;
    let good = settle(&[&ca, &cb]).await;
    assert_eq!(totals(&good), LOADED, "{good:?}");
    assert_eq!(ca.page_count("/g").await.unwrap(), 80);

    let killed = Instant::now();
    blocking(|| cluster.kill_master(victim));
    let failed = blocking(|| cluster.wait_state(victim, "fail", Duration::from_secs(10)));
    println!(
        "cluster_state:fail on the other masters {failed:?} after the kill (cluster-node-timeout 1000 ms)"
    );
    match ca.sync().await {
        Err(e) => println!("sync with a master down and full coverage: {e} ({e:?})"),
        Ok(c) => panic!("sync succeeded with the cluster down: {c:?}"),
    }
    until(
        &[&ca, &cb],
        FLUSH * 10,
        "every view is stale, not partial, with the last good numbers",
        |c| c.stale && !c.partial && totals(c) == LOADED,
    )
    .await;
    // Meanwhile: 10 new guests on a, 5 of b's guests leave. Nothing can reach Redis.
    for _ in 0..10 {
        a.visit(id(), Kind::Guest, "/g").unwrap();
    }
    for s in &b_guests[..5] {
        b.leave(*s);
    }
    tokio::time::sleep(FLUSH * 5).await;
    until(
        &[&ca, &cb],
        Duration::ZERO,
        "still stale, not partial, with the last good numbers",
        |c| c.stale && !c.partial && totals(c) == LOADED,
    )
    .await;
    assert_eq!(
        ca.page_count("/g").await.unwrap(),
        80,
        "a page read before answers the last view"
    );

    let down = killed.elapsed();
    let ok = blocking(|| cluster.restart_master(victim, Duration::from_secs(20)));
    println!(
        "master down {down:?}; back empty, cluster_state:ok everywhere {ok:?} after its restart"
    );
    let want = (127, 40, 2, 85, 10, 147);
    let took = until(
        &[&ca, &cb],
        Duration::from_secs(3),
        "the view is complete and exact",
        |c| !c.stale && !c.partial && totals(c) == want,
    )
    .await;
    println!("view complete again {took:?} after cluster_state:ok (flush {FLUSH:?})");
    let c = settle(&[&ca, &cb]).await;
    assert_eq!(totals(&c), want, "nothing counted twice: {c:?}");
    assert_eq!(c.nodes, 2, "{c:?}");
    assert_eq!(ca.page_count("/g").await.unwrap(), 85);
    assert_eq!(cb.page_count("/a").await.unwrap(), 40);
    assert_eq!(ca.online_members(100).await.unwrap().len(), 40);
    let top = cb.top_pages(10).await.unwrap();
    assert_eq!(top.iter().map(|(_, n)| n).sum::<usize>(), 137, "{top:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_lost_with_full_coverage_makes_the_view_stale_until_it_returns_empty() {
    full_coverage_scenario(false).await;
}

/// As above, the lost master being the one that keeps `{ns}:shards`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_namespace_keys_master_with_full_coverage_is_stale_not_partial() {
    full_coverage_scenario(true).await;
}

/// `cluster-require-full-coverage no`: one master down (past the cluster's own failure
/// detection), the tags of the others go on and the view says it is partial; changes in the
/// live tags show, flush after flush; the master back empty, the view is complete and
/// exact.
async fn partial_scenario(namespace_master: bool) {
    let Some(mut cluster) = RedisCluster::start_with(&[
        "--cluster-node-timeout",
        "1000",
        "--cluster-require-full-coverage",
        "no",
    ]) else {
        return;
    };
    let (victim, url) = victim(&cluster, namespace_master);
    let (a, b) = (tracker(), tracker());
    let ca = node(&url, "a", &a).await;
    let cb = node(&url, "b", &b).await;
    load(&a, &b);
    settle(&[&ca, &cb]).await;
    let good = settle(&[&ca, &cb]).await;
    assert_eq!(totals(&good), LOADED, "{good:?}");

    let killed = Instant::now();
    blocking(|| cluster.kill_master(victim));
    let flagged = blocking(|| cluster.wait_flagged_fail(victim, Duration::from_secs(10)));
    let states = blocking(|| cluster.states());
    println!(
        "lost master flagged fail {flagged:?} after the kill; cluster_state per master, full coverage off: {states:?}"
    );
    match ca.sync().await {
        Err(e) => println!("sync with a master down, no full coverage: {e} ({e:?})"),
        Ok(c) => println!("sync with a master down, no full coverage: Ok({c:?})"),
    }
    until(
        &[&ca, &cb],
        FLUSH * 10,
        "every view is partial, with the last good numbers",
        |c| c.stale && c.partial && totals(c) == LOADED,
    )
    .await;

    // Two batches of 50 new guests, on a then (later) on b: those whose tag is on a live
    // master show on both nodes, the others not yet.
    let mut shown = 0;
    for (round, (p, c)) in [(&a, &ca), (&b, &cb)].into_iter().enumerate() {
        tokio::time::sleep(NODE_TIMEOUT).await;
        for _ in 0..50 {
            p.visit(id(), Kind::Guest, "/new").unwrap();
        }
        let _ = c.sync().await;
        let before = LOADED.3 + shown;
        until(
            &[&ca, &cb],
            FLUSH * 10,
            &format!("round {round}: the live tags' new guests show"),
            |c| c.partial && c.guests > before,
        )
        .await;
        tokio::time::sleep(FLUSH * 3).await;
        let (x, y) = (ca.counts(), cb.counts());
        let moved = x.guests - before;
        println!("round {round}: {moved} of 50 new guests counted with one master of three down");
        assert!(x.partial && y.partial, "{x:?} {y:?}");
        assert!(
            (15..50).contains(&moved),
            "round {round}: the live tags' guests count, the lost tags' do not: {x:?}"
        );
        assert_eq!(x.sessions, LOADED.5 + shown + moved, "{x:?}");
        assert_eq!(
            (y.guests, y.sessions),
            (x.guests, x.sessions),
            "round {round}: both nodes read the same live tags"
        );
        shown += moved;
    }

    let down = killed.elapsed();
    let ok = blocking(|| cluster.restart_master(victim, Duration::from_secs(20)));
    println!("master down {down:?}; cluster_state:ok everywhere {ok:?} after its restart");
    let want = (222, 40, 2, 180, 10, 242);
    let took = until(
        &[&ca, &cb],
        Duration::from_secs(3),
        "the view is complete and exact",
        |c| !c.stale && !c.partial && totals(c) == want,
    )
    .await;
    println!("view complete again {took:?} after cluster_state:ok (flush {FLUSH:?})");
    let c = settle(&[&ca, &cb]).await;
    assert_eq!(totals(&c), want, "nothing counted twice: {c:?}");
    assert_eq!(c.nodes, 2, "{c:?}");
    assert_eq!(ca.page_count("/new").await.unwrap(), 100);
    assert_eq!(cb.page_count("/g").await.unwrap(), 80);
    assert_eq!(ca.online_members(100).await.unwrap().len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_full_coverage_a_lost_master_makes_the_view_partial_then_exact_again() {
    partial_scenario(false).await;
}

/// As above, the lost master being the one that keeps `{ns}:shards`, the key every node
/// checks the number of tags with: the other tags still go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_full_coverage_losing_the_namespace_keys_master_still_gives_a_partial_view() {
    partial_scenario(true).await;
}

/// Two nodes of one namespace that disagree on the number of tags: the later one is
/// refused and sends nothing; the first is unaffected; once it shut down, the later works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_disagree_on_shards_never_share_a_namespace() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for (first, second, ns) in [(1, 16, "mismatch-a"), (16, 1, "mismatch-b")] {
        let (a, b) = (tracker(), tracker());
        let ca = node_with(&server.url(), ns, "a", first, &a).await;
        for i in 0..5 {
            a.visit(id(), Kind::member(format!("a{i}")), "/a").unwrap();
        }
        let before = ca.sync().await.unwrap();
        assert_eq!((before.sessions, before.members, before.nodes), (5, 5, 1));

        let cb = node_with(&server.url(), ns, "b", second, &b).await;
        for i in 0..3 {
            b.visit(id(), Kind::member(format!("b{i}")), "/b").unwrap();
        }
        b.touch(id(), Kind::Guest).unwrap();
        match cb.sync().await {
            Err(ClusterError::ShardsMismatch { ours, theirs }) => {
                assert_eq!((ours, theirs), (second, first));
            }
            other => panic!("b should be refused: {other:?}"),
        }
        assert!(cb.counts().stale);
        // The refused node sends nothing, on the tick either.
        tokio::time::sleep(FLUSH * 3).await;
        assert!(matches!(
            cb.sync().await,
            Err(ClusterError::ShardsMismatch { .. })
        ));
        let c = ca.sync().await.expect("the first node is unaffected");
        assert_eq!(
            (c.sessions, c.members, c.guests, c.nodes),
            (5, 5, 0, 1),
            "{c:?}"
        );
        assert!(!c.stale);
        assert_eq!(ca.page_count("/b").await.unwrap(), 0);
        assert_eq!(ca.page_count("/a").await.unwrap(), 5);

        ca.shutdown().await;
        let c = cb.sync().await.expect("the first node is gone");
        assert_eq!(
            (c.sessions, c.members, c.guests, c.nodes),
            (4, 3, 1, 1),
            "only b's sessions: {c:?}"
        );
        assert_eq!(cb.page_count("/b").await.unwrap(), 3);
        assert_eq!(cb.page_count("/a").await.unwrap(), 0);
        cb.shutdown().await;
    }
}

#[tokio::test]
async fn shards_outside_one_to_256_is_an_invalid_setting() {
    let p = Presence::new();
    let start = |k: usize| {
        Cluster::builder("redis://127.0.0.1:1")
            .shards(k)
            .flush_interval(FLUSH)
            .node_timeout(NODE_TIMEOUT)
            .start(&p)
    };
    for k in [0, 257, 10_000] {
        match start(k).await {
            Err(ClusterError::InvalidSetting(s)) => assert!(s.contains("shards"), "{s}"),
            other => panic!("shards({k}) should be refused: {other:?}"),
        }
    }
    for k in [1, 2, 16, 256] {
        let c = start(k).await.expect("a valid number of tags");
        c.shutdown().await;
    }
}
