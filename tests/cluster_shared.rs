//! The cluster view on a shared production Redis, against real `redis-server` processes the
//! tests start: nothing lost across a stall, bounded script calls, reads from the node's
//! cache, honest freshness during a refill, a TTL on every key, rollbacks caught, one process
//! per node id, hidden sessions kept off page lists, failures written to the log, and the peak
//! kept across a lost Redis.
#![cfg(feature = "redis")]

#[path = "common/logs.rs"]
mod logs;
#[path = "common/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use presence_tracker::cluster::{Cluster, ClusterCounts, ClusterError};
use presence_tracker::{Kind, Presence, Reaper, SessionId};
use redis_server::{RedisServer, eventually};

const FLUSH: Duration = Duration::from_millis(150);

fn tracker() -> Presence {
    Presence::builder()
        .reaper(Reaper::Manual)
        .idle_timeout(Duration::from_secs(60))
        .build()
}

async fn node_with(
    url: &str,
    name: &str,
    p: &Presence,
    flush: Duration,
    timeout: Duration,
) -> Cluster {
    Cluster::builder(url)
        .namespace("shared")
        .shards(redis_server::shards())
        .node_id(name)
        .flush_interval(flush)
        .node_timeout(timeout)
        .start(p)
        .await
        .expect("valid settings")
}

async fn node(url: &str, name: &str, p: &Presence) -> Cluster {
    node_with(url, name, p, FLUSH, Duration::from_secs(10)).await
}

fn id() -> SessionId {
    SessionId::new_v4()
}

fn names(v: Vec<presence_tracker::UserId>) -> Vec<String> {
    v.into_iter().map(|u| u.as_str().to_owned()).collect()
}

fn mixed(i: usize) -> Kind {
    match i % 6 {
        0 | 1 => Kind::member(format!("user{}", i / 3)),
        2 => Kind::hidden_member(format!("hidden{i}")),
        3 => Kind::Bot,
        _ => Kind::Guest,
    }
}

/// Redis stopped (SIGSTOP) for 3 s while both nodes take new visitors; node `b` never calls
/// `sync` itself: its flush task alone must deliver what it kept, within two flush
/// intervals (plus the reconnection) of Redis answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_loses_nothing_even_on_a_node_that_never_syncs() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (tracker(), tracker());
    let ca = node(&server.url(), "a", &a).await;
    let _cb = node(&server.url(), "b", &b).await;
    a.touch(id(), Kind::Guest).unwrap();
    b.touch(id(), Kind::Guest).unwrap();
    eventually(Duration::from_secs(3), "both nodes flushed", || {
        let c = ca.counts();
        c.nodes == 2 && c.guests == 2 && !c.stale
    })
    .await;

    server.stall();
    let stalled = Instant::now();
    for _ in 0..5 {
        a.touch(id(), Kind::Guest).unwrap();
        b.touch(id(), Kind::Guest).unwrap();
    }
    b.visit(id(), Kind::member("bea"), "/during").unwrap();
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(stalled.elapsed())).await;
    assert!(ca.counts().stale, "the stall shows: {:?}", ca.counts());
    server.resume();
    let resumed = Instant::now();

    let took = eventually(
        Duration::from_secs(5),
        "every visitor of both nodes shows",
        || {
            let c = ca.counts();
            (c.guests, c.members, c.stale) == (12, 1, false)
        },
    )
    .await;
    println!("after a 3 s stall, the full view in {took:?} (flush interval {FLUSH:?})");
    assert!(
        resumed.elapsed() < FLUSH * 2 + Duration::from_millis(1500),
        "{took:?}"
    );
    assert_eq!(ca.page_members("/during", 10).await.unwrap().len(), 1);
}

/// Each script call carries a bounded amount of work, whatever the load: a 12k join burst
/// of mixed visitors goes in many calls, each running a bounded number of Redis commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_burst_goes_in_calls_of_bounded_work() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let p = tracker();
    let c = node_with(
        &server.url(),
        "a",
        &p,
        Duration::from_secs(3600),
        Duration::from_secs(7200),
    )
    .await;
    c.sync().await.unwrap();
    for i in 0..12_000 {
        p.visit(id(), mixed(i), &format!("/forum/{}", i % 1000))
            .unwrap();
    }
    server.cli(&["CONFIG", "RESETSTAT"]);
    let v = c.sync().await.unwrap();
    assert_eq!(v.sessions, 12_000);
    let (calls, total) = server.commandstats("evalsha");
    let per_call = total / calls.max(1);
    println!("12k joins: {calls} script calls, {total} commands, {per_call} per call");
    // At most a few hundred joins a call, however fast this Redis is.
    assert!(calls >= 12_000 / 340, "{calls} calls");
    // The budget bounds each call's commands (a join runs about ten, aggregated); the
    // time each call takes is measured by the bench, not asserted here.
    assert!(per_call <= 4_000, "{per_call} commands in one call");
}

/// Page counts, names, top pages and users are answered from the node's cache: many reads
/// cost Redis nothing, and with Redis stalled they answer the last view at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_come_from_the_cache_and_cost_redis_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let p = tracker();
    let c = node_with(
        &server.url(),
        "a",
        &p,
        Duration::from_secs(3600),
        Duration::from_secs(7200),
    )
    .await;
    p.visit(id(), Kind::member("alice"), "/a").unwrap();
    p.visit(id(), Kind::Guest, "/a").unwrap();
    c.sync().await.unwrap();
    let read_all = || async {
        (
            c.page_count("/a").await.unwrap(),
            c.top_pages(5).await.unwrap(),
            c.online_members(10).await.unwrap(),
            c.page_members("/a", 10).await.unwrap(),
            c.user("alice").await.unwrap(),
        )
    };
    let first = read_all().await;
    assert_eq!(first.0, 2);
    server.cli(&["CONFIG", "RESETSTAT"]);
    for _ in 0..1000 {
        assert_eq!(read_all().await, first);
    }
    let (evalsha, total) = server.commandstats("evalsha");
    assert_eq!((evalsha, total), (0, 0), "5000 reads made Redis calls");

    server.stall();
    let start = Instant::now();
    assert_eq!(read_all().await, first);
    let took = start.elapsed();
    server.resume();
    assert!(
        took < Duration::from_millis(100),
        "reads waited {took:?} on a stalled Redis"
    );
    // A key never read before does not wait on a stalled Redis either: it fails at once
    // once the view knows Redis is down.
    server.stall();
    assert!(c.sync().await.is_err());
    let start = Instant::now();
    assert!(matches!(
        c.page_count("/never").await,
        Err(ClusterError::Unavailable)
    ));
    assert!(start.elapsed() < Duration::from_millis(100));
    server.resume();
}

/// Redis restarted empty under a node of 20k sessions: while the node sends them again, the
/// view is stale and every read answers the last complete view, never a partial Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_refill_is_never_shown_as_fresh() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (tracker(), tracker());
    for i in 0..20_000 {
        a.visit(id(), mixed(i), &format!("/p/{}", i % 50)).unwrap();
    }
    b.visit(id(), Kind::Guest, "/p/1").unwrap();
    let ca = node(&server.url(), "a", &a).await;
    let cb = node(&server.url(), "b", &b).await;
    ca.sync().await.unwrap();
    cb.sync().await.unwrap();
    let full = cb.sync().await.unwrap();
    assert_eq!(full.sessions, 20_001);
    let page = cb.page_count("/p/1").await.unwrap();
    let members = cb.online_members(1000).await.unwrap();
    assert_eq!(page, 401);

    server.restart_empty();
    let start = Instant::now();
    let mut partial_seen = 0;
    loop {
        let v: ClusterCounts = cb.counts();
        let now_page = cb.page_count("/p/1").await.unwrap();
        let now_members = cb.online_members(1000).await.unwrap();
        if v.stale {
            partial_seen += 1;
            assert_eq!(
                v.sessions, 20_001,
                "a stale view keeps the last complete one"
            );
        }
        assert_eq!(v.sessions, 20_001, "never a partial count: {v:?}");
        assert_eq!(now_page, page, "never a partial page count");
        assert_eq!(now_members.len(), members.len(), "never partial names");
        if !v.stale && partial_seen > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "refill never completed: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!(
        "refill of 20k sessions: view fresh again after {:?}, {partial_seen} stale reads",
        start.elapsed()
    );
}

/// Every key has a TTL (a namespace whose nodes all stopped goes away on its own); the peak
/// a long one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_has_a_ttl() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (tracker(), tracker());
    let ca = node(&server.url(), "a", &a).await;
    let cb = node(&server.url(), "b", &b).await;
    for i in 0..300 {
        a.visit(id(), mixed(i), &format!("/t/{}", i % 7)).unwrap();
        b.visit(id(), mixed(i + 1), &format!("/t/{}", i % 5))
            .unwrap();
    }
    let gone = id();
    a.visit(gone, Kind::member("zed"), "/t/1").unwrap();
    ca.sync().await.unwrap();
    cb.sync().await.unwrap();
    a.leave(gone);
    ca.sync().await.unwrap();
    ca.shutdown().await;
    cb.sync().await.unwrap();
    // `{shared}:*`, and `{shared:3}:*` when spread over several tags.
    let keys = server.cli(&["--scan", "--pattern", "{shared[}:]*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert!(keys.len() > 20, "{keys:?}");
    for k in keys {
        let ttl: i64 = server.cli(&["PTTL", k]).parse().unwrap();
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
        if k.ends_with(":peak") {
            assert!(ttl > 29 * 86_400_000, "the peak keeps long: {ttl}");
        } else {
            assert!(ttl <= 3_600_000, "{k}: {ttl}");
        }
    }
}

/// Every key's TTL comes back within one cycle of flushes (a quarter of the key TTL), though
/// a flush refreshes only a slice: the TTLs are taken off (`PERSIST`) after the first send,
/// and a cycle of flushes with nothing changed must set each again. Flushes every 100 s and
/// a key TTL of an hour make a cycle of 9 flushes, which does not divide the session buckets
/// (4096, or 256 per tag): a slice runs past the last bucket to the first ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_of_flushes_refreshes_every_key_ttl() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let p = tracker();
    let c = node_with(
        &server.url(),
        "a",
        &p,
        Duration::from_secs(100),
        Duration::from_secs(300),
    )
    .await;
    for i in 0..3000 {
        p.visit(id(), mixed(i), &format!("/t/{}", i % 300)).unwrap();
    }
    c.sync().await.unwrap();
    // The shape of the namespace has a check (and a TTL) of its own.
    let scan = server.cli(&["--scan", "--pattern", "{shared[}:]*"]);
    let keys: Vec<&str> = scan.lines().filter(|k| !k.ends_with(":shards")).collect();
    assert!(keys.len() > 1000, "{} keys", keys.len());
    let persisted = server.cli_each("PERSIST", &keys);
    assert!(persisted.iter().all(|r| r == "1"), "each had a TTL");
    for _ in 0..9 {
        c.sync().await.unwrap();
    }
    let ttls = server.cli_each("PTTL", &keys);
    assert_eq!(ttls.len(), keys.len());
    let missed: Vec<(&str, &String)> = keys
        .iter()
        .zip(&ttls)
        .filter(|(_, t)| t.parse::<i64>().unwrap() < 0)
        .map(|(k, t)| (*k, t))
        .collect();
    assert!(missed.is_empty(), "no TTL after a cycle: {missed:?}");
    assert_eq!(c.counts().sessions, 3000);
}

/// A Redis that may evict keys is warned about at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_redis_is_warned_about() {
    logs::capture();
    let Some(server) = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]) else {
        return;
    };
    let p = tracker();
    let _c = node(&server.url(), "evicting-node", &p).await;
    let warned = logs::lines_with(&["WARN", "evicting-node", "allkeys-lru"]);
    assert_eq!(warned.len(), 1, "{warned:?}");
}

/// Redis restored from an older dump (a failover to a lagging replica, a backup): writes the
/// node saw acknowledged are gone, and it notices and sends everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_to_an_older_dump_is_caught() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (tracker(), tracker());
    let ca = node(&server.url(), "a", &a).await;
    let cb = node(&server.url(), "b", &b).await;
    for _ in 0..3 {
        a.visit(id(), Kind::Guest, "/").unwrap();
    }
    ca.sync().await.unwrap();
    cb.sync().await.unwrap();
    server.cli(&["SAVE"]);
    for _ in 0..4 {
        a.visit(id(), Kind::Guest, "/later").unwrap();
    }
    a.visit(id(), Kind::member("mo"), "/later").unwrap();
    assert_eq!(ca.sync().await.unwrap().sessions, 8, "acknowledged");

    server.restart_from_dump();
    let took = eventually(
        Duration::from_secs(5),
        "the full view after the rollback",
        || {
            let c = cb.counts();
            (c.sessions, c.members, c.stale) == (8, 1, false)
        },
    )
    .await;
    println!("rollback: full view again after {took:?}");
    assert_eq!(cb.page_count("/later").await.unwrap(), 5);
    assert_eq!(names(cb.page_members("/later", 10).await.unwrap()), ["mo"]);
}

/// Two processes started under one node id: the second is refused and touches nothing of the
/// first, not even at its shutdown; once the first has been silent for the node timeout
/// (crashed), a process under its name takes over.
#[test]
fn a_second_process_under_a_node_id_in_use_is_refused() {
    logs::capture();
    let Some(server) = RedisServer::start() else {
        return;
    };
    let timeout = Duration::from_secs(1);
    let first_rt = tokio::runtime::Runtime::new().unwrap();
    let first = tracker();
    for _ in 0..3 {
        first.touch(id(), Kind::Guest).unwrap();
    }
    let c1 = first_rt.block_on(node_with(&server.url(), "web", &first, FLUSH, timeout));
    first_rt.block_on(c1.sync()).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let second = tracker();
        second.touch(id(), Kind::Bot).unwrap();
        let c2 = node_with(&server.url(), "web", &second, FLUSH, timeout).await;
        match c2.sync().await {
            Err(ClusterError::NodeIdInUse(name)) => assert_eq!(name, "web"),
            other => panic!("expected NodeIdInUse, got {other:?}"),
        }
        c2.shutdown().await;
    });
    let v = first_rt.block_on(c1.sync()).unwrap();
    assert_eq!(
        (v.sessions, v.bots, v.nodes),
        (3, 0, 1),
        "the first is untouched: {v:?}"
    );
    assert!(!logs::lines_with(&["ERROR", "\"web\"", "in use"]).is_empty());

    // The first crashes (its runtime dropped: no goodbye); a restart under its name.
    drop(first_rt);
    rt.block_on(async {
        let third = tracker();
        third.touch(id(), Kind::Bot).unwrap();
        let c3 = node_with(&server.url(), "web", &third, FLUSH, timeout).await;
        let start = Instant::now();
        let v = loop {
            match c3.sync().await {
                Ok(v) if !v.stale => break v,
                Ok(_) | Err(ClusterError::NodeIdInUse(_)) => {
                    assert!(start.elapsed() < timeout * 4, "never took over");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(
            (v.sessions, v.bots),
            (1, 1),
            "the crashed one's sessions left: {v:?}"
        );
        c3.shutdown().await;
    });
}

/// A session hidden on a page never names its user there, even when the user is listed
/// elsewhere (as `Presence::page_members`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_session_never_names_its_user_on_its_page() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (tracker(), tracker());
    let ca = node(&server.url(), "a", &a).await;
    let cb = node(&server.url(), "b", &b).await;
    a.visit(id(), Kind::member("alice"), "/forum").unwrap();
    b.visit(id(), Kind::hidden_member("alice"), "/admin/x")
        .unwrap();
    b.visit(id(), Kind::member("bob"), "/admin/x").unwrap();
    ca.sync().await.unwrap();
    cb.sync().await.unwrap();
    assert!(
        b.page_members("/admin/x", 10)
            .iter()
            .all(|u| u.as_str() != "alice")
    );
    assert_eq!(
        names(ca.page_members("/admin/x", 10).await.unwrap()),
        ["bob"]
    );
    assert_eq!(
        names(ca.page_members("/forum", 10).await.unwrap()),
        ["alice"]
    );
    assert_eq!(
        names(ca.online_members(10).await.unwrap()),
        ["alice", "bob"]
    );
    assert_eq!(ca.page_count("/admin/x").await.unwrap(), 2);
}

/// A password Redis refuses fails `start`, with the variant that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_password_fails_start() {
    let Some(server) = RedisServer::start_with(&["--requirepass", "s3cret"]) else {
        return;
    };
    let p = tracker();
    let port = server.port;
    for url in [
        format!("redis://:wrong@127.0.0.1:{port}"),
        format!("redis://127.0.0.1:{port}"),
    ] {
        let r = Cluster::builder(&url).start(&p).await;
        assert!(
            matches!(r, Err(ClusterError::Authentication(_))),
            "{url}: {r:?}"
        );
    }
    let c = Cluster::builder(format!("redis://:s3cret@127.0.0.1:{port}"))
        .flush_interval(FLUSH)
        .start(&p)
        .await
        .unwrap();
    assert!(!c.sync().await.unwrap().stale);
    c.shutdown().await;
}

/// Redis out of memory (`maxmemory` under `noeviction`): the flush fails, the operator is
/// told at warn level, and nothing is lost once memory is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_is_written_to_the_log_and_loses_nothing() {
    logs::capture();
    let Some(server) = RedisServer::start() else {
        return;
    };
    let used: u64 = server
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let p = tracker();
    let c = node(&server.url(), "oom-node", &p).await;
    c.sync().await.unwrap();
    server.cli(&[
        "CONFIG",
        "SET",
        "maxmemory",
        &(used + 64 * 1024).to_string(),
    ]);
    for i in 0..5_000 {
        p.visit(id(), mixed(i), &format!("/oom/{i}")).unwrap();
    }
    let err = c.sync().await.expect_err("out of memory");
    println!("{err}");
    assert!(!logs::lines_with(&["WARN", "oom-node", "OOM"]).is_empty());
    assert!(c.counts().stale);
    server.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    eventually(
        Duration::from_secs(3),
        "every session once memory is back",
        || {
            let v = c.counts();
            v.sessions == 5_000 && !v.stale
        },
    )
    .await;
    // Said once the flush that brought the view back ends.
    eventually(Duration::from_secs(3), "the recovery in the log", || {
        !logs::lines_with(&["INFO", "oom-node", "answers again"]).is_empty()
    })
    .await;
}

/// The cluster's all-time peak and its date survive a Redis that lost everything: the nodes
/// send back the last one they saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_peak_survives_a_lost_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let p = tracker();
    let c = node(&server.url(), "a", &p).await;
    let ids: Vec<SessionId> = (0..5).map(|_| id()).collect();
    for s in &ids {
        p.touch(*s, Kind::Guest).unwrap();
    }
    let peak = c.sync().await.unwrap().peak;
    assert_eq!(peak.online, 5);
    for s in &ids[..3] {
        p.leave(*s);
    }
    assert_eq!(c.sync().await.unwrap().online, 2);
    server.cli(&["FLUSHALL"]);
    eventually(Duration::from_secs(3), "the view is back", || {
        let v = c.counts();
        v.online == 2 && !v.stale && v.as_of > peak.at
    })
    .await;
    let back = c.sync().await.unwrap().peak;
    assert_eq!(back, peak, "the peak and its date came back");
}

/// Each node is judged by its own `node_timeout`: a node that flushes every 3 s with a 10 s
/// timeout stays in the view of a node whose own timeout is 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_is_declared_dead_by_its_own_timeout() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (tracker(), tracker());
    let ca = node_with(&server.url(), "quick", &a, FLUSH, Duration::from_secs(1)).await;
    let cb = node_with(
        &server.url(),
        "slow",
        &b,
        Duration::from_secs(3),
        Duration::from_secs(10),
    )
    .await;
    for _ in 0..5 {
        b.touch(id(), Kind::Guest).unwrap();
    }
    cb.sync().await.unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        let v = ca.sync().await.unwrap();
        assert_eq!(
            (v.nodes, v.guests),
            (2, 5),
            "after {:?}: {v:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
