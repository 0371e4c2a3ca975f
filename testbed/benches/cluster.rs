//! What does the cluster view cost, and how far does one Redis shard go?
//!
//! Every group runs against a `redis-server` the bench starts on a free loopback port (and
//! stops by its PID), with its baseline in the same group:
//! - `cluster_touch`: `touch` of a known session with a cluster attached vs the same tracker
//!   without one (the hot path must not notice: target ≥ 0.95×).
//! - `cluster_flush`: one flush (`sync()`) after 10k sessions changed page, and one with
//!   nothing changed at 1M local sessions vs at 1k (no scan: the same cost; target ≤ 1 ms).
//! - `classic_vs_cluster`: the classic cookie + Redis design on the same server
//!   (`SET presence_<uuid> <kind> EX 300` per request, `KEYS presence_*` + `GET` each to
//!   count, at 10k and 100k sessions) vs ours (a `touch` per request, `counts()` from the
//!   cached view, or a fresh `sync()`).
//! - `cluster_ceiling`: session updates per second one `redis-server` absorbs through the
//!   flush script (renewals, and page changes), as many per call as a node's work budget
//!   puts in one.
//!
//! Figures that are not times (Redis commands per flush, memory per session, the live
//! sessions one shard carries) are printed to stdout before the groups run;
//! `PRESENCE_CLUSTER_FIGURES=1` prints only those.
//!
//! Run: `cargo bench -p presence-tracker-testbed --bench cluster -- --warm-up-time 1
//! --measurement-time 3`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use presence_tracker::cluster::Cluster;
use presence_tracker::{Kind, Presence, SessionId};
use redis::Commands;
use tokio::runtime::Runtime;

mod common;
#[path = "../../tests/common/redis.rs"]
mod redis_server;

use common::{SplitMix, full_scale, keys, tracker};
use redis_server::RedisServer;

const BATCH: usize = 1000;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A cluster that flushes only when asked (`sync`), so that no background flush competes
/// with the measured one.
fn cluster_on_demand(rt: &Runtime, url: &str, p: &Presence, ns: &str) -> Cluster {
    rt.block_on(
        Cluster::builder(url)
            .namespace(ns)
            .flush_interval(Duration::from_secs(3600))
            .node_timeout(Duration::from_secs(86_400))
            .start(p),
    )
    .expect("valid settings")
}

fn fill(p: &Presence, ids: &[uuid::Uuid]) {
    for (i, k) in ids.iter().enumerate() {
        let kind = match i % 20 {
            0 => Kind::Bot,
            1..=5 => Kind::member(format!("user{}", i / 2)),
            6 => Kind::hidden_member(format!("user{}", i / 2)),
            _ => Kind::Guest,
        };
        p.visit(SessionId::from(*k), kind, &format!("/forum/{}", i % 100))
            .expect("unbounded");
    }
}

fn info_field(con: &mut redis::Connection, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg(section).query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Printed figures: Redis commands per flush, memory per session.
fn report(server: &RedisServer) {
    let rt = runtime();
    let mut con = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let n = if full_scale() { 100_000 } else { 2_000 };

    let p = tracker();
    let cluster = cluster_on_demand(&rt, &server.url(), &p, "mem");
    rt.block_on(cluster.sync()).unwrap();
    let before = info_field(&mut con, "memory", "used_memory");
    fill(&p, &keys(7, n));
    rt.block_on(cluster.sync()).unwrap();
    let after = info_field(&mut con, "memory", "used_memory");
    println!(
        "cluster memory: {} sessions (65% guests, 5% bots, 25% members, 5% hidden; 20% distinct users; 100 pages) took {} bytes \
         of Redis used_memory: {:.0} B per session",
        n,
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / n as f64
    );

    let changed = if full_scale() { 10_000 } else { 1_000 };
    let ids = keys(7, changed);
    for k in &ids {
        p.visit(SessionId::from(*k), Kind::Guest, "/elsewhere")
            .unwrap();
    }
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .exec(&mut con)
        .unwrap();
    let t = Instant::now();
    rt.block_on(cluster.sync()).unwrap();
    let took = t.elapsed();
    let (evalsha, total) = server.commandstats("evalsha");
    println!(
        "cluster flush of {changed} changed sessions: {took:?}, {evalsha} EVALSHA round trips, \
         {total} Redis commands in all (script-internal ones included)"
    );
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .exec(&mut con)
        .unwrap();
    rt.block_on(cluster.sync()).unwrap();
    let (evalsha, total) = server.commandstats("evalsha");
    println!("cluster flush with nothing changed: {evalsha} EVALSHA, {total} commands in all");
    rt.block_on(cluster.shutdown());
}

fn touch_group(c: &mut Criterion, server: &RedisServer) {
    let n = if full_scale() { 100_000 } else { 2_000 };
    let ids = keys(11, n);
    let mut rng = SplitMix(5);
    let stream: Vec<SessionId> = (0..BATCH)
        .map(|_| SessionId::from(ids[rng.below(n)]))
        .collect();
    let rt = runtime();
    let without = tracker();
    let with = tracker();
    for k in &ids {
        without.touch(SessionId::from(*k), Kind::Guest).unwrap();
        with.touch(SessionId::from(*k), Kind::Guest).unwrap();
    }
    // The real thing: a background flush every second.
    let cluster = rt
        .block_on(
            Cluster::builder(server.url())
                .namespace("touch")
                .start(&with),
        )
        .unwrap();
    rt.block_on(cluster.sync()).unwrap();

    let mut g = c.benchmark_group(format!("cluster_touch/{}k_sessions", n / 1000));
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("without_cluster", |b| {
        b.iter(|| {
            for id in &stream {
                black_box(without.touch(*id, Kind::Guest).unwrap());
            }
        })
    });
    g.bench_function("with_cluster", |b| {
        b.iter(|| {
            for id in &stream {
                black_box(with.touch(*id, Kind::Guest).unwrap());
            }
        })
    });
    g.finish();
    rt.block_on(cluster.shutdown());
}

fn flush_group(c: &mut Criterion, server: &RedisServer) {
    let rt = runtime();
    let mut g = c.benchmark_group("cluster_flush");
    g.sample_size(10);

    let changed = if full_scale() { 10_000 } else { 1_000 };
    let p = tracker();
    let ids = keys(21, changed);
    fill(&p, &ids);
    let cluster = cluster_on_demand(&rt, &server.url(), &p, "flush10k");
    rt.block_on(cluster.sync()).unwrap();
    g.throughput(Throughput::Elements(changed as u64));
    let mut round = 0u64;
    g.bench_function(format!("{}k_changed", changed / 1000), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let page = format!("/topic/{}", round % 2);
                for k in &ids {
                    p.visit(SessionId::from(*k), Kind::Guest, &page).unwrap();
                }
                let t = Instant::now();
                black_box(rt.block_on(cluster.sync()).unwrap());
                total += t.elapsed();
            }
            total
        })
    });
    rt.block_on(cluster.shutdown());

    g.throughput(Throughput::Elements(1));
    let big = if full_scale() { 1_000_000 } else { 10_000 };
    for (label, n) in [
        ("1k_local", 1_000),
        (&*format!("{}k_local", big / 1000), big),
    ] {
        let p = tracker();
        fill(&p, &keys(31 + n as u64, n));
        let cluster = cluster_on_demand(&rt, &server.url(), &p, &format!("idle{n}"));
        let t = Instant::now();
        rt.block_on(cluster.sync()).unwrap(); // the first flush sends them all
        println!(
            "cluster: first flush of {n} local sessions took {:?}",
            t.elapsed()
        );
        g.bench_function(format!("nothing_changed/{label}"), |b| {
            b.iter(|| black_box(rt.block_on(cluster.sync()).unwrap()))
        });
        rt.block_on(cluster.shutdown());
    }
    g.finish();
}

fn classic_group(c: &mut Criterion, server: &RedisServer) {
    let rt = runtime();
    let mut con = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut g = c.benchmark_group("classic_vs_cluster");
    g.sample_size(10);
    let sizes: &[usize] = if full_scale() {
        &[10_000, 100_000]
    } else {
        &[1_000]
    };
    for &n in sizes {
        redis::cmd("FLUSHALL").exec(&mut con).unwrap();
        let ids = keys(41, n);
        let mut pipe = redis::pipe();
        for (i, k) in ids.iter().enumerate() {
            let kind = if i % 5 == 0 { "member" } else { "guest" };
            pipe.set_ex(format!("presence_{k}"), kind, 300).ignore();
            if pipe.len() >= 10_000 {
                pipe.exec(&mut con).unwrap();
                pipe = redis::pipe();
            }
        }
        if !pipe.is_empty() {
            pipe.exec(&mut con).unwrap();
        }
        let label = format!("{}k_sessions", n / 1000);

        // The classic count: KEYS, then every value (pipelined: its best form).
        g.bench_function(format!("classic_count/{label}"), |b| {
            b.iter(|| {
                let keys: Vec<String> = con.keys("presence_*").unwrap();
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.get(k);
                }
                let kinds: Vec<Option<String>> = pipe.query(&mut con).unwrap();
                let members = kinds
                    .iter()
                    .filter(|k| k.as_deref() == Some("member"))
                    .count();
                black_box((kinds.len(), members))
            })
        });

        let p = tracker();
        fill(&p, &ids);
        let cluster = cluster_on_demand(&rt, &server.url(), &p, &format!("ours{n}"));
        rt.block_on(cluster.sync()).unwrap();
        g.bench_function(format!("ours_counts_cached/{label}"), |b| {
            b.iter(|| black_box(cluster.counts()))
        });
        g.bench_function(format!("ours_sync_fresh/{label}"), |b| {
            b.iter(|| black_box(rt.block_on(cluster.sync()).unwrap()))
        });
        rt.block_on(cluster.shutdown());

        // One page view: the classic design writes to Redis, ours touches memory.
        let mut rng = SplitMix(9);
        g.bench_function(format!("classic_page_view/{label}"), |b| {
            b.iter(|| {
                let k = ids[rng.below(n)];
                let _: () = con.set_ex(format!("presence_{k}"), "guest", 300).unwrap();
            })
        });
        g.bench_function(format!("ours_page_view/{label}"), |b| {
            b.iter(|| {
                let k = ids[rng.below(n)];
                black_box(p.touch(SessionId::from(k), Kind::Guest).unwrap())
            })
        });
    }
    g.finish();
}

fn ceiling_group(c: &mut Criterion, server: &RedisServer, figures_only: bool) {
    let rt = runtime();
    let mut con = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut g = c.benchmark_group("cluster_ceiling");
    g.sample_size(10);
    const OPS: usize = 4_000;
    // Renewals in one script call: what the node's work budget puts in one.
    const RENEWALS: usize = 150;
    g.throughput(Throughput::Elements(OPS as u64));

    // Page changes through the real flush: each session moves page every round.
    let p = tracker();
    let ids = keys(51, OPS);
    fill(&p, &ids);
    let cluster = cluster_on_demand(&rt, &server.url(), &p, "ceiling");
    rt.block_on(cluster.sync()).unwrap();
    let mut round = 0u64;
    if !figures_only {
        g.bench_function("page_changes_per_call", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    let page = format!("/p/{}", round % 2);
                    for k in &ids {
                        p.visit(SessionId::from(*k), Kind::Guest, &page).unwrap();
                    }
                    let t = Instant::now();
                    black_box(rt.block_on(cluster.sync()).unwrap());
                    total += t.elapsed();
                }
                total
            })
        });
    }
    rt.block_on(cluster.shutdown());

    // Renewals, the steady load of busy sessions: the same script, called directly with the
    // operations a node sends for them (packed as flush.lua's header says), as many per
    // call as the node's work budget allows. "u": the full upsert path (a first send, or a
    // renewal with a change); "n": a renewal with nothing changed but the expiry, the
    // common one. Next to them, in the same run, the classic design's pipelined
    // `SET presence_<uuid> ... EX 300`, as many per pipeline.
    let script = redis::Script::new(include_str!("../../src/cluster/flush.lua"));
    let renewal_ops = |op: u8| -> Vec<Vec<u8>> {
        keys(61, RENEWALS)
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let (kind, user) = if i % 4 == 0 {
                    (b'm', format!("user{i}"))
                } else {
                    (b'g', String::new())
                };
                let mut a = vec![op];
                a.extend_from_slice(k.as_bytes());
                a.push(kind);
                a.push(b'1');
                a.extend_from_slice(b"000493e0" /* 300 s */);
                a.extend_from_slice(b"0000000000000000");
                a.extend_from_slice(format!("{:04x}", user.len()).as_bytes());
                a.extend_from_slice(user.as_bytes());
                a.extend_from_slice(format!("{:04x}", user.len()).as_bytes());
                a.extend_from_slice(user.as_bytes());
                a.push(b'1'); // this node counts its page
                a
            })
            .collect()
    };
    let (upserts, renewals) = (renewal_ops(b'u'), renewal_ops(b'n'));
    let mut seq = 0u64;
    let mut call = |con: &mut redis::Connection, ops: &[Vec<u8>]| {
        seq += 1;
        let mut inv = script.key("{ceiling2}:n");
        for a in [
            "bench-node".to_string(),
            "token".into(),
            seq.to_string(),
            (seq - 1).to_string(),
            "86400000".into(),
            "1000".into(),
            "f".into(),
            "1".into(),
            "0".into(),
            "0".into(),
            "200".into(),
            "0".into(),
            "0".into(),
            "0".into(),
            "0".into(),
            "3600000".into(),
            "0".into(),
        ] {
            inv.arg(a);
        }
        for a in ops {
            inv.arg(a.as_slice());
        }
        let r: redis::Value = inv.invoke(con).unwrap();
        r
    };
    let classic_keys: Vec<String> = keys(71, RENEWALS)
        .iter()
        .map(|k| format!("presence_{k}"))
        .collect();
    let mut classic = |con: &mut redis::Connection| {
        let mut pipe = redis::pipe();
        for k in &classic_keys {
            pipe.cmd("SET")
                .arg(k)
                .arg(r#"{"kind":"guest","page":"/forum/1"}"#)
                .arg("EX")
                .arg(300)
                .ignore();
        }
        let () = pipe.query(con).unwrap();
    };
    call(&mut con, &upserts);
    // Redis's own CPU time, not the wall clock: on a shared machine the server does not get
    // a whole core, and its CPU seconds per update are what caps one shard.
    let cpu = |con: &mut redis::Connection| {
        let info: String = redis::cmd("INFO").arg("cpu").query(con).unwrap();
        info.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                matches!(k, "used_cpu_sys" | "used_cpu_user")
                    .then(|| v.trim().parse::<f64>().ok())?
            })
            .sum::<f64>()
    };
    // µs of redis-server CPU per operation, over 2 s of calls of `RENEWALS` operations.
    let per_op = |con: &mut redis::Connection, f: &mut dyn FnMut(&mut redis::Connection)| {
        let cpu0 = cpu(con);
        let t = Instant::now();
        let mut calls = 0;
        while t.elapsed() < Duration::from_secs(2) {
            f(con);
            calls += 1;
        }
        (cpu(con) - cpu0) * 1e6 / (calls * RENEWALS) as f64
    };
    let upsert_us = per_op(&mut con, &mut |con| {
        call(con, &upserts);
    });
    let renewal_us = per_op(&mut con, &mut |con| {
        call(con, &renewals);
    });
    let classic_us = per_op(&mut con, &mut classic);
    println!(
        "cluster ceiling: a renewal with nothing changed {renewal_us:.2} µs of redis-server CPU, \
         through the full upsert path {upsert_us:.2} µs, the classic pipelined SET ... EX 300 \
         {classic_us:.2} µs (renewal / SET {:.2}x); at the default idle_timeout of 300 s (a \
         re-send every 150 s) one hash tag on one core carries about {:.1}M busy live sessions",
        renewal_us / classic_us,
        150.0 / renewal_us
    );
    if !figures_only {
        g.throughput(Throughput::Elements(RENEWALS as u64));
        g.bench_function("renewals_per_call", |b| {
            b.iter(|| black_box(call(&mut con, &renewals)))
        });
        g.bench_function("classic_set_per_pipeline", |b| b.iter(|| classic(&mut con)));
    }
    g.finish();
}

fn main() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut c = Criterion::default().configure_from_args();
    report(&server);
    // `PRESENCE_CLUSTER_FIGURES=1`: only the printed figures, no timed groups.
    let figures_only = std::env::var("PRESENCE_CLUSTER_FIGURES").as_deref() == Ok("1");
    ceiling_group(&mut c, &server, figures_only);
    if figures_only {
        return;
    }
    touch_group(&mut c, &server);
    flush_group(&mut c, &server);
    classic_group(&mut c, &server);
    c.final_summary();
}
