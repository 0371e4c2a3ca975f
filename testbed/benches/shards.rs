//! `ClusterBuilder::shards(k)`: does a Redis Cluster's work spread over its masters, and what
//! do more tags cost where they buy nothing?
//!
//! Everything runs in one process, `shards(16)` next to `shards(1)` in the same run, on
//! servers the bench starts on free loopback ports (and stops by their PIDs). The load is
//! the `cluster` bench's `cluster_ceiling` model at a site's scale: 100k sessions (a third
//! signed in, 5% bots, the rest guests) on 1000 pages, one node calling `sync()` in a loop,
//! each flush carrying the page changes of one second at 5,000 a second (random sessions
//! to random pages).
//!
//! Printed figures (stdout, before any timed group):
//! 1. On a real 3-master Redis Cluster: each master's share of Redis CPU (`INFO cpu`), of
//!    script time (`INFO commandstats`, `evalsha` usec) and of `EVALSHA` calls under that
//!    load, `shards(1)` and `shards(16)`. Target with 16 tags: each master within ±20% of a
//!    third.
//! 2. One master's ceiling: page changes, renewals and first sends per second per core of
//!    Redis CPU (one tag on one master, and 16 tags over three), the live sessions that
//!    implies per master (assumptions printed), and what 3, 16 and 100 masters carry on
//!    paper.
//! 3. On one plain `redis-server`, where more tags buy nothing: `shards(16)` / `shards(1)`
//!    for the flush time after 10k page changes, Redis CPU per page change and Redis memory
//!    per session at 100k sessions. Target: at most 1.1x each.
//!
//! Renewals (part 2) are measured through the real flush too: 100k sessions with a short
//! idle timeout, sent, kept active, and flushed once all are due, so that one flush renews
//! each once (checked: every claim's expiry moved).
//!
//! And what one flush with nothing changed runs in Redis (`INFO commandstats`, by command),
//! with 1 and 16 tags: the fixed cost of a tag's call.
//!
//! Timed groups (criterion): `shards_flush` (a `sync()` after 10k page changes on the plain
//! server, 5k on the Redis Cluster) and `shards_idle` (a `sync()` with nothing changed),
//! each at `shards(1)` and `shards(16)`. `PRESENCE_SHARDS_FIGURES=1` prints only the
//! figures.
//!
//! Run: `cargo bench -p presence-tracker-testbed --bench shards -- --warm-up-time 1
//! --measurement-time 3`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use presence_tracker::cluster::Cluster;
use presence_tracker::{Kind, Presence, Reaper, SessionId};
use tokio::runtime::Runtime;
use uuid::Uuid;

mod common;
#[path = "../../tests/common/redis.rs"]
mod redis_server;

use common::{SplitMix, full_scale, keys, tracker};
use redis_server::{RedisCluster, RedisServer};

const PAGES: usize = 1000;
/// The tag counts compared.
const KS: [usize; 2] = [1, 16];

fn sessions() -> usize {
    if full_scale() { 100_000 } else { 3_000 }
}

/// Page changes per flush on the Redis Cluster: one second at 5,000 a second.
fn cluster_changes() -> usize {
    if full_scale() { 5_000 } else { 300 }
}

/// Page changes per flush on the plain server.
fn plain_changes() -> usize {
    if full_scale() { 10_000 } else { 500 }
}

/// Flushes under load per measurement.
fn rounds() -> usize {
    if full_scale() { 10 } else { 2 }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A node whose view is spread over `k` tags, flushed when the bench asks (`sync`): its own
/// flush comes once a minute, and each flush refreshes as many key TTLs as with the default
/// interval of 1 s (a slice of the buckets in proportion to the interval over the key TTL,
/// which the node timeout of a day makes 4 days). An interval of an hour, as the `cluster`
/// bench's, would make every flush refresh 1/96 of all keys' TTLs, as an hour of flushes do.
fn cluster_node(rt: &Runtime, url: &str, p: &Presence, ns: &str, k: usize) -> Cluster {
    rt.block_on(
        Cluster::builder(url)
            .namespace(ns)
            .shards(k)
            .flush_interval(Duration::from_secs(60))
            .node_timeout(Duration::from_secs(86_400))
            .start(p),
    )
    .expect("valid settings")
}

/// The sessions of one node: a third signed in (one in ten of those hidden; 1.1 sessions
/// per user), 5% bots, the rest guests, each on one of the 1000 pages.
struct Site {
    p: Presence,
    ids: Vec<Uuid>,
    kinds: Vec<Kind>,
    rng: SplitMix,
}

impl Site {
    fn new(p: Presence, seed: u64, n: usize) -> Site {
        let ids = keys(seed, n);
        let mut signed_in = 0usize;
        let kinds = (0..n)
            .map(|i| match i % 60 {
                0..=2 => Kind::Bot,
                j if j % 3 == 0 => {
                    // Every tenth shares its user with the one before: 1.1 sessions per user.
                    let m = signed_in;
                    signed_in += 1;
                    let user = format!("user{}", m - m / 10);
                    if m % 10 == 5 {
                        Kind::hidden_member(user)
                    } else {
                        Kind::member(user)
                    }
                }
                _ => Kind::Guest,
            })
            .collect();
        let mut site = Site {
            p,
            ids,
            kinds,
            rng: SplitMix(seed ^ 0xABCD),
        };
        for i in 0..n {
            let page = site.rng.below(PAGES);
            site.visit(i, page);
        }
        site
    }

    fn visit(&self, i: usize, page: usize) {
        self.p
            .visit(
                SessionId::from(self.ids[i]),
                self.kinds[i].clone(),
                &format!("/forum/{page}"),
            )
            .expect("unbounded");
    }

    /// `n` page changes: random sessions to random pages.
    fn change_pages(&mut self, n: usize) {
        for _ in 0..n {
            let (i, page) = (self.rng.below(self.ids.len()), self.rng.below(PAGES));
            self.visit(i, page);
        }
    }

    /// Every session active again (not a change: the flush sees it at its renewal).
    fn touch_all(&self) {
        for (id, kind) in self.ids.iter().zip(&self.kinds) {
            self.p.touch(SessionId::from(*id), kind.clone()).unwrap();
        }
    }
}

/// One Redis server's counters: CPU seconds, and per command (calls, usec).
#[derive(Clone, Default)]
struct Snap {
    cpu: f64,
    cmds: BTreeMap<String, (u64, u64)>,
}

/// Commands the bench itself (or the client's connection set-up) sends.
const OURS: &[&str] = &[
    "info", "config", "cluster", "client", "hello", "ping", "command",
];

impl Snap {
    fn take(con: &mut redis::Connection) -> Snap {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .arg("commandstats")
            .query(con)
            .unwrap();
        let mut s = Snap::default();
        for l in info.lines() {
            if let Some((k, v)) = l.split_once(':') {
                if matches!(k, "used_cpu_sys" | "used_cpu_user") {
                    s.cpu += v.trim().parse::<f64>().unwrap_or(0.0);
                }
            }
            let Some(rest) = l.strip_prefix("cmdstat_") else {
                continue;
            };
            let Some((name, fields)) = rest.split_once(':') else {
                continue;
            };
            if OURS
                .iter()
                .any(|o| name == *o || name.starts_with(&format!("{o}|")))
            {
                continue;
            }
            let field = |f: &str| -> u64 {
                fields
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            s.cmds
                .insert(name.to_string(), (field("calls"), field("usec")));
        }
        s
    }

    /// What happened between `before` and `self`.
    fn since(&self, before: &Snap) -> Snap {
        let mut d = Snap {
            cpu: self.cpu - before.cpu,
            cmds: BTreeMap::new(),
        };
        for (name, &(c, u)) in &self.cmds {
            let (c0, u0) = before.cmds.get(name).copied().unwrap_or((0, 0));
            if c > c0 {
                d.cmds.insert(name.clone(), (c - c0, u.saturating_sub(u0)));
            }
        }
        d
    }

    fn add(&mut self, other: &Snap) {
        self.cpu += other.cpu;
        for (name, &(c, u)) in &other.cmds {
            let e = self.cmds.entry(name.clone()).or_default();
            e.0 += c;
            e.1 += u;
        }
    }

    /// `EVALSHA` calls and their time in Redis (µs): the flush, whole scripts.
    fn evalsha(&self) -> (u64, u64) {
        self.cmds.get("evalsha").copied().unwrap_or((0, 0))
    }
}

/// Every master of a Redis Cluster (or the one server), with a connection for `INFO`.
struct Masters {
    names: Vec<String>,
    cons: Vec<redis::Connection>,
}

impl Masters {
    fn of(servers: &[&RedisServer]) -> Masters {
        let mut names = Vec::new();
        let mut cons = Vec::new();
        for s in servers {
            let mut con = redis::Client::open(s.url())
                .unwrap()
                .get_connection()
                .unwrap();
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query(&mut con)
                .unwrap_or_default();
            let slots = nodes
                .lines()
                .find(|l| l.contains("myself"))
                .map(|l| l.split(' ').skip(8).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            names.push(if slots.is_empty() {
                format!(":{}", s.port)
            } else {
                format!(":{} slots {slots}", s.port)
            });
            cons.push(con);
        }
        Masters { names, cons }
    }

    fn snap(&mut self) -> Vec<Snap> {
        self.cons.iter_mut().map(Snap::take).collect()
    }

    /// Each master's counters over `f`.
    fn over<T>(&mut self, f: impl FnOnce() -> T) -> (Vec<Snap>, T) {
        let before = self.snap();
        let out = f();
        let after = self.snap();
        (
            after.iter().zip(&before).map(|(a, b)| a.since(b)).collect(),
            out,
        )
    }
}

fn total(per: &[Snap]) -> Snap {
    let mut t = Snap::default();
    for s in per {
        t.add(s);
    }
    t
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn share(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { 0.0 }
}

/// One flush with nothing changed, by command, summed over `masters`: (per flush) calls and
/// µs, the busiest commands first. Such a flush is one `EVALSHA` per tag: a flush of the
/// node's own that falls in the window is counted as one more.
fn idle_breakdown(rt: &Runtime, masters: &mut Masters, cluster: &Cluster, k: usize) {
    rt.block_on(cluster.sync()).unwrap();
    let (per, ()) = masters.over(|| {
        for _ in 0..5 {
            rt.block_on(cluster.sync()).unwrap();
        }
    });
    let t = total(&per);
    let (e_calls, e_usec) = t.evalsha();
    let flushes = (e_calls as f64 / k as f64).round().max(1.0);
    let calls: u64 = t.cmds.values().map(|c| c.0).sum();
    println!(
        "  shards({k}): per flush {:.0} EVALSHA ({:.0} µs of script time), {:.0} commands in \
         all (script-internal included), {:.0} µs of Redis CPU",
        e_calls as f64 / flushes,
        e_usec as f64 / flushes,
        calls as f64 / flushes,
        t.cpu * 1e6 / flushes
    );
    println!("    {}", by_command(&t, flushes, 14));
}

/// The `n` commands that took most time, each as `name calls x / µs` per `per`.
fn by_command(t: &Snap, per: f64, n: usize) -> String {
    let mut rows: Vec<(&String, &(u64, u64))> = t.cmds.iter().collect();
    rows.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(b.1.0.cmp(&a.1.0)));
    let list: Vec<String> = rows
        .iter()
        .take(n)
        .map(|(name, (c, u))| format!("{name} {:.0}x/{:.0}µs", *c as f64 / per, *u as f64 / per))
        .collect();
    list.join(", ")
}

/// What part 2 needs of part 1: Redis CPU (all masters, and the busiest) per operation.
#[derive(Default, Clone, Copy)]
struct PerOp {
    /// µs of Redis CPU per operation, summed over the masters.
    total_us: f64,
    /// µs of the busiest master's CPU per operation (of the whole cluster).
    busiest_us: f64,
    /// The busiest master's share of the CPU.
    busiest_share: f64,
}

impl PerOp {
    fn of(per: &[Snap], ops: usize) -> PerOp {
        let cpu: Vec<f64> = per.iter().map(|s| s.cpu).collect();
        let sum: f64 = cpu.iter().sum();
        let max = cpu.iter().copied().fold(0.0, f64::max);
        PerOp {
            total_us: sum * 1e6 / ops as f64,
            busiest_us: max * 1e6 / ops as f64,
            busiest_share: share(max, sum),
        }
    }
}

struct ClusterFigures {
    page: [PerOp; 2],
    renewal: [PerOp; 2],
    join: [PerOp; 2],
}

/// Part 1 (and what part 2 needs): the load on a 3-master Redis Cluster at 1 and 16 tags.
fn on_redis_cluster(rc: &RedisCluster, c: &mut Criterion, figures_only: bool) -> ClusterFigures {
    let rt = runtime();
    let url = rc.nodes[0].url();
    let servers: Vec<&RedisServer> = rc.nodes.iter().collect();
    let mut masters = Masters::of(&servers);
    let n = sessions();
    let changes = cluster_changes();
    println!(
        "\n== 1. Redis Cluster of 3 masters: {n} sessions, {PAGES} pages, one node, flushes of \
         {changes} page changes (one second at {changes}/s), {} flushes per tag count ==",
        rounds()
    );

    // Page changes. Each tag count has its own namespace and its own node.
    let mut sites = Vec::new();
    let mut nodes = Vec::new();
    let mut join = [PerOp::default(); 2];
    for (j, &k) in KS.iter().enumerate() {
        let site = Site::new(tracker(), 100 + k as u64, n);
        let (per, (cluster, took)) = masters.over(|| {
            let t = Instant::now();
            let cluster = cluster_node(&rt, &url, &site.p, &format!("pc{k}"), k);
            rt.block_on(cluster.sync()).unwrap();
            (cluster, t.elapsed())
        });
        join[j] = PerOp::of(&per, n);
        println!(
            "first send of {n} sessions, shards({k}): {took:.2?}, {:.1} µs of Redis CPU per \
             session (busiest master {:.0}% of it)",
            join[j].total_us,
            join[j].busiest_share * 100.0
        );
        sites.push(site);
        nodes.push(cluster);
    }
    // The tag counts alternate flush by flush, so that a slow moment of the machine falls on
    // both.
    let mut load: Vec<Vec<Snap>> = vec![vec![Snap::default(); masters.cons.len()]; 2];
    let mut walls: Vec<Vec<f64>> = vec![Vec::new(); 2];
    for _ in 0..rounds() {
        for j in 0..KS.len() {
            // The node's own once-a-minute flush may take some of the changes: counted too.
            let (per, took) = masters.over(|| {
                sites[j].change_pages(changes);
                let t = Instant::now();
                rt.block_on(nodes[j].sync()).unwrap();
                t.elapsed()
            });
            walls[j].push(took.as_secs_f64() * 1e3);
            for (acc, s) in load[j].iter_mut().zip(&per) {
                acc.add(s);
            }
        }
    }
    let ops = changes * rounds();
    let mut page = [PerOp::default(); 2];
    let mut shares_ok = true;
    println!(
        "{:<28} {:>7} | {:>9} {:>11} {:>9} | {:>9} {:>11} {:>9}",
        "master", "", "k=1 CPU", "script time", "EVALSHA", "k=16 CPU", "script time", "EVALSHA"
    );
    let sums: Vec<(f64, f64, f64)> = load
        .iter()
        .map(|per| {
            (
                per.iter().map(|s| s.cpu).sum(),
                per.iter().map(|s| s.evalsha().1 as f64).sum(),
                per.iter().map(|s| s.evalsha().0 as f64).sum(),
            )
        })
        .collect();
    for (m, name) in masters.names.iter().enumerate() {
        let cell = |j: usize| {
            let s = &load[j][m];
            let (cpu, usec, calls) = sums[j];
            (
                share(s.cpu, cpu),
                share(s.evalsha().1 as f64, usec),
                share(s.evalsha().0 as f64, calls),
            )
        };
        let (a, b) = (cell(0), cell(1));
        // ±20% of a third, on CPU and on script time.
        let within = |x: f64| (x - 1.0 / 3.0).abs() <= 0.2 / 3.0;
        shares_ok &= within(b.0) && within(b.1);
        println!(
            "{name:<36} | {:>8.1}% {:>10.1}% {:>8.1}% | {:>8.1}% {:>10.1}% {:>8.1}%",
            a.0 * 100.0,
            a.1 * 100.0,
            a.2 * 100.0,
            b.0 * 100.0,
            b.1 * 100.0,
            b.2 * 100.0
        );
    }
    for (j, &k) in KS.iter().enumerate() {
        page[j] = PerOp::of(&load[j], ops);
        let (cpu, usec, calls) = sums[j];
        println!(
            "shards({k}): {ops} page changes in {} flushes: {:.2} µs of Redis CPU per page \
             change (script time {:.2} µs), {:.0} EVALSHA per flush, flush {:.1} ms median",
            rounds(),
            cpu * 1e6 / ops as f64,
            usec / ops as f64,
            calls / rounds() as f64,
            median(&mut walls[j].clone())
        );
        println!(
            "    per flush: {}",
            by_command(&total(&load[j]), rounds() as f64, 12)
        );
    }
    println!(
        "target with shards(16): every master within ±20% of a third (26.7% to 40.0%) of CPU \
         and of script time: {}",
        if shares_ok { "met" } else { "MISSED" }
    );

    println!("one flush with nothing changed, all masters:");
    for (j, &k) in KS.iter().enumerate() {
        idle_breakdown(&rt, &mut masters, &nodes[j], k);
    }

    if !figures_only {
        let mut g = c.benchmark_group("shards_flush/redis_cluster");
        g.sample_size(10);
        g.throughput(Throughput::Elements(changes as u64));
        for (j, &k) in KS.iter().enumerate() {
            timed_flush(&mut g, &rt, &mut sites[j], &nodes[j], changes, k);
        }
        g.finish();
        let mut g = c.benchmark_group("shards_idle/redis_cluster");
        for (j, &k) in KS.iter().enumerate() {
            g.bench_function(format!("shards_{k}"), |b| {
                b.iter(|| black_box(rt.block_on(nodes[j].sync()).unwrap()))
            });
        }
        g.finish();
    }
    // The runtime first: its node tasks end where they are, without the bye that dropping
    // their handles would start in the background of the next measurement.
    drop(rt);
    drop(nodes);
    drop(sites);

    // Renewals: sessions with a short idle timeout, all sent at once, kept active, then
    // flushed once every one of them is due: that flush renews each once.
    let idle = if full_scale() {
        Duration::from_secs(8)
    } else {
        Duration::from_secs(3)
    };
    let rt = runtime();
    let mut renew_sites = Vec::new();
    let mut renew_nodes = Vec::new();
    for &k in &KS {
        let p = Presence::builder()
            .idle_timeout(idle)
            .idle_after(idle)
            .heartbeat_limit(Duration::from_secs(3600))
            .reaper(Reaper::Manual)
            .build();
        let site = Site::new(p, 200 + k as u64, n);
        let cluster = cluster_node(&rt, &url, &site.p, &format!("rn{k}"), k);
        rt.block_on(cluster.sync()).unwrap();
        renew_sites.push(site);
        renew_nodes.push(cluster);
        for s in &renew_sites {
            s.touch_all();
        }
    }
    let sent = Instant::now();
    // Due at half the idle timeout after the send; the renewal wheel is a second late at most.
    // Meanwhile every session stays active (a touch is not a change: only the renewal sees it).
    while sent.elapsed() < idle / 2 + Duration::from_millis(1300) {
        std::thread::sleep(Duration::from_millis(500));
        for s in &renew_sites {
            s.touch_all();
        }
    }
    let mut renewal = [PerOp::default(); 2];
    let idle_ms = u64::try_from(idle.as_millis()).unwrap();
    for (j, &k) in KS.iter().enumerate() {
        renew_sites[j].touch_all();
        let start = redis_ms(&mut masters.cons[0]);
        let (per, took) = masters.over(|| {
            let t = Instant::now();
            rt.block_on(renew_nodes[j].sync()).unwrap();
            t.elapsed()
        });
        renewal[j] = PerOp::of(&per, n);
        let t = total(&per);
        // Claims are scored by their expiry: one the flush renewed expires an idle timeout
        // after it started; one it did not, half of one (or more) before.
        let pattern = if k == 1 {
            "{rn1}:h:*".to_string()
        } else {
            format!("{{rn{k}:*}}:h:*")
        };
        let (claims, old) = claims(&mut masters, &pattern, start + idle_ms / 2);
        println!(
            "renewal of {n} sessions (nothing changed but the time), shards({k}): one flush \
             {took:.2?}, {} EVALSHA, {:.2} µs of Redis CPU per renewal (script time {:.2} µs), \
             busiest master {:.0}% of it; {} of {claims} claims renewed",
            t.evalsha().0,
            renewal[j].total_us,
            t.evalsha().1 as f64 / n as f64,
            renewal[j].busiest_share * 100.0,
            claims - old
        );
    }
    drop(rt);
    drop(renew_nodes);
    ClusterFigures {
        page,
        renewal,
        join,
    }
}

/// Redis's clock (ms).
fn redis_ms(con: &mut redis::Connection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(con).unwrap();
    s * 1000 + us / 1000
}

/// Over every master, the members of the sorted sets named like `pattern`, and how many of
/// them score below `below`.
fn claims(masters: &mut Masters, pattern: &str, below: u64) -> (u64, u64) {
    let (mut all, mut old) = (0, 0);
    for con in &mut masters.cons {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query(con)
                .unwrap();
            cursor = next;
            if keys.is_empty() {
                if cursor == 0 {
                    break;
                }
                continue;
            }
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.zcard(key);
                pipe.zcount(key, "-inf", format!("({below}"));
            }
            let counts: Vec<u64> = pipe.query(con).unwrap();
            for pair in counts.chunks(2) {
                all += pair[0];
                old += pair[1];
            }
            if cursor == 0 {
                break;
            }
        }
    }
    (all, old)
}

/// The tags each master holds, on paper: `masters` equal slot ranges, `k` tags in the middle
/// of `k` equal slices (as `shards(k)` names them). The busiest master's count.
fn busiest_tags(masters: u32, k: u32) -> u32 {
    let mut per = vec![0u32; masters as usize];
    for i in 0..k {
        let slot = (2 * i + 1) * 16_384 / (2 * k);
        per[(slot * masters / 16_384) as usize] += 1;
    }
    per.into_iter().max().unwrap_or(1)
}

/// Part 2, from part 1's figures.
fn ceiling(f: &ClusterFigures) {
    println!("\n== 2. One master's ceiling (from part 1, per core of redis-server CPU) ==");
    for (j, &k) in KS.iter().enumerate() {
        let what = if k == 1 {
            "shards(1), one tag on one master".to_string()
        } else {
            format!("shards({k}) over 3 masters, per core of all masters' CPU")
        };
        println!(
            "{what}: {:.0}k page changes/s, {:.0}k renewals/s, {:.0}k first sends/s \
             ({:.2} / {:.2} / {:.2} µs each)",
            1e3 / f.page[j].total_us,
            1e3 / f.renewal[j].total_us,
            1e3 / f.join[j].total_us,
            f.page[j].total_us,
            f.renewal[j].total_us,
            f.join[j].total_us
        );
    }
    let b = &f.page[1];
    println!(
        "shards(16) on 3 masters: the busiest master takes {:.0}% of the CPU (a third is 33%): \
         the cluster absorbs {:.0}k page changes/s before its busiest core is full ({:.2}x \
         one master with shards(1))",
        b.busiest_share * 100.0,
        1e3 / b.busiest_us,
        f.page[0].busiest_us / b.busiest_us
    );
    // Per live session and second: a renewal every 150 s, a page change every 30 s, and a
    // first send at its arrival (its leave assumed to cost as much) in a 20-minute visit.
    const RENEW_EVERY: f64 = 150.0;
    const PAGE_EVERY: f64 = 30.0;
    const VISIT: f64 = 1200.0;
    let per_session = |j: usize| {
        f.renewal[j].total_us / RENEW_EVERY
            + f.page[j].total_us / PAGE_EVERY
            + 2.0 * f.join[j].total_us / VISIT
    };
    println!(
        "assumption: each live session is re-sent every idle_timeout/2 = {RENEW_EVERY:.0} s, \
         changes page every {PAGE_EVERY:.0} s (one page view per 30 s, each on another page), \
         and arrives and leaves once in a {:.0}-minute visit (a leave costing what a first \
         send does)",
        VISIT / 60.0
    );
    for (j, &k) in KS.iter().enumerate() {
        println!(
            "  shards({k}): {:.3} µs of Redis CPU per live session per second: {:.1}M live \
             sessions per master core",
            per_session(j),
            1.0 / per_session(j)
        );
    }
    println!(
        "on paper: the busiest master full, each master carrying its tags' share; live \
         sessions at shards(16)'s measured cost per operation (at shards(1)'s, were the tags \
         free):"
    );
    let (as_is, free) = (1.0 / per_session(1), 1.0 / per_session(0));
    // The busiest master's share of the work: measured on 3 masters, else as the tags fall.
    let busiest = |m: u32, k: u32| {
        if m == 3 && k == 16 {
            f.page[1].busiest_share
        } else {
            f64::from(busiest_tags(m, k)) / f64::from(k)
        }
    };
    // A few tags per master, as many as `shards` allows.
    let tags_for = |m: u32| (4 * m).next_power_of_two().min(256);
    for m in [3u32, 16, 100] {
        let k = tags_for(m);
        let b = busiest(m, k);
        println!(
            "  {m:>3} masters, shards({k}): busiest master {:.1}% of the work (even: {:.1}%): \
             {:.1}M live sessions ({:.1}M)",
            b * 100.0,
            100.0 / f64::from(m),
            as_is / b,
            free / b
        );
    }
    let needed = |per_master: f64| {
        (1..=256u32)
            .find(|&m| per_master / busiest(m, tags_for(m)) >= 100.0)
            .map_or("more than 256".to_string(), |m| m.to_string())
    };
    println!(
        "  100M live sessions: {} masters ({} were the tags free)",
        needed(as_is),
        needed(free)
    );
}

/// `sync()` after `changes` page changes, criterion-timed.
fn timed_flush(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    site: &mut Site,
    cluster: &Cluster,
    changes: usize,
    k: usize,
) {
    g.bench_function(format!("shards_{k}/{changes}_page_changes"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                site.change_pages(changes);
                let t = Instant::now();
                black_box(rt.block_on(cluster.sync()).unwrap());
                total += t.elapsed();
            }
            total
        })
    });
}

/// Part 3: one plain `redis-server`, 16 tags against 1.
fn on_plain_redis(server: &RedisServer, c: &mut Criterion, figures_only: bool) {
    let rt = runtime();
    let url = server.url();
    let mut masters = Masters::of(&[server]);
    let n = sessions();
    let changes = plain_changes();
    println!(
        "\n== 3. One plain redis-server: shards(16) against shards(1), {n} sessions, {PAGES} \
         pages, flushes of {changes} page changes =="
    );
    let used_memory = |m: &mut Masters| -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query(&mut m.cons[0])
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    // The scripts loaded and the client connected before anything is measured.
    {
        let p = tracker();
        let warm = cluster_node(&rt, &url, &p, "warm", 16);
        rt.block_on(warm.sync()).unwrap();
        rt.block_on(warm.shutdown());
    }

    let mut sites = Vec::new();
    let mut nodes = Vec::new();
    let mut memory = [0.0; 2];
    for (j, &k) in KS.iter().enumerate() {
        let site = Site::new(tracker(), 300 + k as u64, n);
        let before = used_memory(&mut masters);
        let cluster = cluster_node(&rt, &url, &site.p, &format!("plain{k}"), k);
        rt.block_on(cluster.sync()).unwrap();
        let after = used_memory(&mut masters);
        memory[j] = after.saturating_sub(before) as f64 / n as f64;
        println!(
            "shards({k}): {n} sessions took {} bytes of used_memory: {:.0} B per session",
            after.saturating_sub(before),
            memory[j]
        );
        sites.push(site);
        nodes.push(cluster);
    }

    // Alternating, flush by flush.
    let mut walls: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut script: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut calls: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut load = vec![Snap::default(); 2];
    for _ in 0..rounds() {
        for j in 0..KS.len() {
            // The node's own once-a-minute flush may take some of the changes: counted too.
            let (per, took) = masters.over(|| {
                sites[j].change_pages(changes);
                let t = Instant::now();
                rt.block_on(nodes[j].sync()).unwrap();
                t.elapsed()
            });
            walls[j].push(took.as_secs_f64() * 1e3);
            cpus[j].push(per[0].cpu * 1e6 / changes as f64);
            script[j].push(per[0].evalsha().1 as f64 / changes as f64);
            calls[j].push(per[0].evalsha().0 as f64);
            load[j].add(&per[0]);
        }
    }
    let med = |v: &Vec<f64>| median(&mut v.clone());
    for (j, &k) in KS.iter().enumerate() {
        println!(
            "shards({k}): flush after {changes} page changes {:.1} ms median ({:.1} to {:.1}), \
             {:.2} µs of Redis CPU per page change (script time {:.2} µs), {:.0} EVALSHA per \
             flush",
            med(&walls[j]),
            walls[j].iter().copied().fold(f64::INFINITY, f64::min),
            walls[j].iter().copied().fold(0.0, f64::max),
            med(&cpus[j]),
            med(&script[j]),
            med(&calls[j])
        );
        println!(
            "    per flush: {}",
            by_command(&load[j], rounds() as f64, 12)
        );
    }
    let verdict = |r: f64| if r <= 1.1 { "met" } else { "MISSED" };
    let ratios = [
        ("flush time", med(&walls[1]) / med(&walls[0])),
        ("Redis CPU per page change", med(&cpus[1]) / med(&cpus[0])),
        (
            "script time per page change",
            med(&script[1]) / med(&script[0]),
        ),
        ("memory per session", memory[1] / memory[0]),
    ];
    for (what, r) in ratios {
        println!(
            "shards(16) / shards(1), {what}: {r:.2}x (target ≤ 1.1x: {})",
            verdict(r)
        );
    }

    println!("one flush with nothing changed:");
    for (j, &k) in KS.iter().enumerate() {
        idle_breakdown(&rt, &mut masters, &nodes[j], k);
    }

    if !figures_only {
        let mut g = c.benchmark_group("shards_flush/plain_redis");
        g.sample_size(10);
        g.throughput(Throughput::Elements(changes as u64));
        for (j, &k) in KS.iter().enumerate() {
            timed_flush(&mut g, &rt, &mut sites[j], &nodes[j], changes, k);
        }
        g.finish();
        let mut g = c.benchmark_group("shards_idle/plain_redis");
        for (j, &k) in KS.iter().enumerate() {
            g.bench_function(format!("shards_{k}"), |b| {
                b.iter(|| black_box(rt.block_on(nodes[j].sync()).unwrap()))
            });
        }
        g.finish();
    }
    drop(rt);
    drop(nodes);
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    // `PRESENCE_SHARDS_FIGURES=1`: only the printed figures, no timed groups.
    let figures_only = std::env::var("PRESENCE_SHARDS_FIGURES").as_deref() == Ok("1");
    let started = Instant::now();
    {
        let Some(rc) = RedisCluster::start() else {
            return;
        };
        let f = on_redis_cluster(&rc, &mut c, figures_only);
        ceiling(&f);
    }
    {
        let Some(server) = RedisServer::start() else {
            return;
        };
        on_plain_redis(&server, &mut c, figures_only);
    }
    println!("\n(the whole run took {:.0?})", started.elapsed());
    if !figures_only {
        c.final_summary();
    }
}
