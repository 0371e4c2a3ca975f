//! What does the cluster view cost the *other* clients of a shared Redis?
//!
//! The Redis a site gives the cluster view is rarely its own: the same server holds the
//! site's caches, queues and session store, and every millisecond a script holds Redis's
//! single thread is a millisecond every other client waits. So this harness measures the
//! cluster view from a bystander's side, next to the classic design on the same server in
//! the same run:
//! - **ours**: one [`Presence`] (default settings: `idle_timeout` 300 s) with a [`Cluster`]
//!   attached (default `flush_interval` 1 s, its own namespace); the load thread calls
//!   `presence.visit(id, kind, page)`, and the cluster's background task flushes to Redis.
//! - **classic**: the cookie + Redis design, `SET presence_<uuid> <json kind, user, page> EX
//!   300` per page view. Its best form is used: the page views of each 10 ms tick go out in one
//!   pipeline over one connection, as a server's connection pool would batch them.
//!
//! Scenarios, each run with ours and with classic on one `redis-server` the harness starts
//! on a free loopback port (pinned to CPU 1 with `taskset` when it exists and the machine
//! has two CPUs or more; stopped by its PID at the end):
//! - `load`: the live sessions (default 100k: 65% guests, 5% bots, 25% members, 5% hidden,
//!   distinct users = 20% of sessions, pages among 1000 `/forum/N`) loaded as fast as the
//!   design goes; ours waits until `sync()` shows them all. Redis `used_memory` per session is
//!   read after it.
//! - `steady`: 5000 page changes per second (a random session visits a random page), paced
//!   in 10 ms ticks, for 20 s.
//! - `burst`: 10% more sessions (10k) join within 1 s, on top of the loaded ones (no other
//!   load meanwhile); the window stays open 2 s more so that ours' flushes of the burst land
//!   in it.
//! - `bye` (ours only): `cluster.shutdown()`, whose final flush removes the node's sessions.
//!   The classic keys have no equivalent: they expire on their own.
//!
//! During every window a bystander on its own plain connection sends `GET bystander_key`
//! every 2 ms and records each round trip (a stalled GET is recorded once, at its full
//! length, so `max` is the longest stall a client saw). Reported per window: the bystander's
//! p50 / p99 / p99.9 / max; Redis CPU seconds per wall second (`INFO cpu`, `used_cpu_sys +
//! used_cpu_user`); Redis CPU per page view, net of the quiet baseline (a window with only
//! the bystander, measured first); Redis commands per page view (`INFO commandstats`, calls
//! made inside scripts included, the bystander's and the harness's own excluded); the
//! slowest single call a client made (`SLOWLOG`, with `slowlog-log-slower-than 1000`, i.e.
//! 1 ms, reset before each window; a script counts as one call, the commands it runs are
//! listed apart) and how many calls took 1 ms or more. Then medians over the runs and the
//! ratios ours / classic. Between designs the harness runs `FLUSHALL` and waits, so that no
//! run disturbs the next. Ours and classic alternate (ABAB: two rounds by default).
//!
//! Every page view here moves its session to another page, so each one is a change ours
//! must flush: the write-heaviest case for ours (a request that only refreshes a session
//! costs ours no Redis write until its renewal, and the classic design a `SET` all the same).
//!
//! Only the public API is used (`Presence`, `Kind`, `SessionId`, `Cluster`): the figures
//! stay meaningful whatever the cluster's key layout.
//!
//! Run: `cargo bench -p presence-tracker-testbed --bench shared_redis` (about three minutes
//! at full size on a 2-core machine). `PRESENCE_SHARED_QUICK=1`: 10k sessions, 500 page
//! changes/s for 3 s, under a minute: it checks that everything works end to end, and shows
//! ours' stalls, but its CPU figures are within the noise of the quiet baseline. Settings (environment): `PRESENCE_SHARED_SESSIONS`
//! (100000), `PRESENCE_SHARED_RATE` (page changes/s, 5000), `PRESENCE_SHARED_SECS` (20),
//! `PRESENCE_SHARED_BURST` (a tenth of the sessions), `PRESENCE_SHARED_ROUNDS` (2),
//! `PRESENCE_SHARED_PIN=0` (no `taskset`). Without `--bench` (`cargo test --benches`) a tiny
//! run checks that it works. Under `CI=true` a missing `redis-server` is a failure.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use presence_tracker::cluster::Cluster;
use presence_tracker::{Kind, Presence, SessionId};
use redis::Value;
use redis::io::tcp::TcpSettings;
use tokio::runtime::Runtime;

mod common;
#[path = "../../tests/common/redis.rs"]
mod redis_server;

use common::{SplitMix, keys};
use redis_server::RedisServer;

const PAGES: usize = 1000;
const BYSTANDER_KEY: &str = "bystander_key";
const BYSTANDER_EVERY: Duration = Duration::from_millis(2);
/// The classic design's pipelines, and the pacing of every load: one batch per tick.
const TICK: Duration = Duration::from_millis(10);
const CLASSIC_TTL_SECS: u64 = 300;
/// Ours flushes every second (the default); a burst's window stays open two intervals more.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
const SLOWLOG_LEN: usize = 10_000;

struct Settings {
    sessions: usize,
    rate: usize,
    steady: Duration,
    burst: usize,
    rounds: usize,
    /// The pause after `FLUSHALL`, and before each measured window.
    settle: Duration,
    quiet: Duration,
    mode: &'static str,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a valid number")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env(full: bool) -> Self {
        let quick = std::env::var("PRESENCE_SHARED_QUICK").as_deref() == Ok("1");
        let (mode, sessions, rate, secs, rounds, settle) = if !full {
            ("tiny (no --bench)", 2_000, 200, 1.0, 1, 0.2)
        } else if quick {
            ("quick", 10_000, 500, 3.0, 2, 1.0)
        } else {
            ("full", 100_000, 5_000, 20.0, 2, 2.0)
        };
        let sessions = env_or("PRESENCE_SHARED_SESSIONS", sessions);
        assert!(sessions >= 20, "PRESENCE_SHARED_SESSIONS: at least 20");
        let rate = env_or("PRESENCE_SHARED_RATE", rate);
        assert!(rate > 0, "PRESENCE_SHARED_RATE: at least 1");
        let secs: f64 = env_or("PRESENCE_SHARED_SECS", secs);
        assert!(
            secs > 0.0 && secs <= 3600.0,
            "PRESENCE_SHARED_SECS: between 0 and 3600"
        );
        Settings {
            sessions,
            rate,
            steady: Duration::from_secs_f64(secs),
            burst: env_or("PRESENCE_SHARED_BURST", sessions / 10).max(1),
            rounds: env_or("PRESENCE_SHARED_ROUNDS", rounds).clamp(1, 10),
            settle: Duration::from_secs_f64(settle),
            quiet: Duration::from_secs_f64(secs.min(3.0)),
            mode,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Design {
    Ours,
    Classic,
    Quiet,
}

impl Design {
    fn name(self) -> &'static str {
        match self {
            Design::Ours => "ours",
            Design::Classic => "classic",
            Design::Quiet => "-",
        }
    }
}

/// The visitors: each session keeps its kind for the run; the classic design stores it as
/// JSON next to the page.
struct Visitors {
    ids: Vec<SessionId>,
    kinds: Vec<Kind>,
    /// `{"kind":..,"user":..,"page":"` — the page and `"}` are appended per view.
    json_heads: Vec<String>,
}

impl Visitors {
    /// `n` sessions: 65% guests, 5% bots, 25% members, 5% hidden members; the signed-in
    /// sessions (30%) spread over `n / 5` users, so some users have two tabs. `user_base`
    /// keeps the names of a later group apart from the first one's.
    fn new(seed: u64, n: usize, user_base: usize) -> Self {
        let users = (n / 5).max(1);
        let mut signed_in = 0;
        let mut kinds = Vec::with_capacity(n);
        let mut json_heads = Vec::with_capacity(n);
        for i in 0..n {
            let (kind, head) = match i % 20 {
                0 => (Kind::Bot, r#"{"kind":"bot","page":""#.to_string()),
                1..=6 => {
                    let user = format!("user{}", user_base + signed_in % users);
                    signed_in += 1;
                    if i % 20 == 6 {
                        let head = format!(r#"{{"kind":"hidden","user":"{user}","page":""#);
                        (Kind::hidden_member(user), head)
                    } else {
                        let head = format!(r#"{{"kind":"member","user":"{user}","page":""#);
                        (Kind::member(user), head)
                    }
                }
                _ => (Kind::Guest, r#"{"kind":"guest","page":""#.to_string()),
            };
            kinds.push(kind);
            json_heads.push(head);
        }
        Visitors {
            ids: keys(seed, n).into_iter().map(SessionId::from).collect(),
            kinds,
            json_heads,
        }
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

fn pages() -> Vec<String> {
    (0..PAGES).map(|p| format!("/forum/{p}")).collect()
}

/// Calls `send(count)` once per tick with the views due by then, `rate` per second, until
/// `total` are sent. Bounded in time too: a design that falls far behind stops after twice
/// the planned duration plus 5 s, and the shortfall shows in the count returned.
fn paced(total: usize, rate: f64, mut send: impl FnMut(usize)) -> usize {
    let start = Instant::now();
    let limit = Duration::from_secs_f64(2.0 * total as f64 / rate) + Duration::from_secs(5);
    let mut done = 0;
    let mut tick = 1u32;
    while done < total && start.elapsed() < limit {
        let at = start + TICK * tick;
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        tick += 1;
        let due = ((start.elapsed().as_secs_f64() * rate) as usize).min(total);
        if due > done {
            send(due - done);
            done = due;
        }
    }
    done
}

fn connect(url: &str) -> redis::Connection {
    use redis::IntoConnectionInfo;
    // A small request must leave at once, as a tuned client's would.
    let info = url
        .into_connection_info()
        .unwrap()
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    redis::Client::open(info)
        .unwrap()
        .get_connection()
        .expect("connect to the bench's redis-server")
}

fn info(con: &mut redis::Connection, section: &str) -> String {
    redis::cmd("INFO").arg(section).query(con).unwrap()
}

fn info_field(text: &str, field: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Redis's own CPU time: on a shared machine the server does not get a whole core, and its
/// CPU seconds are what it takes from everyone else.
fn redis_cpu(con: &mut redis::Connection) -> f64 {
    let text = info(con, "cpu");
    info_field(&text, "used_cpu_sys").unwrap_or(0.0)
        + info_field(&text, "used_cpu_user").unwrap_or(0.0)
}

fn used_memory(con: &mut redis::Connection) -> f64 {
    info_field(&info(con, "memory"), "used_memory").unwrap_or(0.0)
}

/// Calls Redis executed, from `INFO commandstats` (those made inside scripts included), the
/// harness's own bookkeeping left out.
fn commands(con: &mut redis::Connection) -> u64 {
    let text = info(con, "commandstats");
    let mut total = 0;
    for line in text.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let base = name.split('|').next().unwrap_or(name);
        if matches!(
            base,
            "info" | "config" | "slowlog" | "flushall" | "ping" | "client" | "hello"
        ) {
            continue;
        }
        total += rest
            .strip_prefix("calls=")
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// What `SLOWLOG` caught in one window.
///
/// Redis 7 also logs the commands a script runs (client `?:0`); a client waits for the
/// whole script, so only the calls clients made count as calls here, and the commands
/// inside scripts are kept apart (they show where a long script spends its time, or that
/// the machine stole Redis's CPU in the middle of one).
#[derive(Default, Clone)]
struct Slow {
    /// Calls of 1 ms or more that clients made.
    count: u64,
    max_us: u64,
    max_name: String,
    /// Those calls by command.
    names: BTreeMap<String, u64>,
    /// Commands of 1 ms or more run inside scripts, by command.
    in_scripts: BTreeMap<String, u64>,
    /// More entries than the log keeps: the figures are a lower bound.
    truncated: bool,
}

fn slowlog(con: &mut redis::Connection) -> Slow {
    let len: usize = redis::cmd("SLOWLOG").arg("LEN").query(con).unwrap();
    let entries: Value = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(SLOWLOG_LEN)
        .query(con)
        .unwrap();
    let mut slow = Slow {
        truncated: len >= SLOWLOG_LEN,
        ..Slow::default()
    };
    let Value::Array(entries) = entries else {
        return slow;
    };
    for entry in &entries {
        let Value::Array(fields) = entry else {
            continue;
        };
        let took = fields.get(2).and_then(as_int).unwrap_or(0).max(0) as u64;
        let name = match fields.get(3) {
            Some(Value::Array(args)) => args
                .first()
                .and_then(as_text)
                .unwrap_or_default()
                .to_lowercase(),
            _ => String::new(),
        };
        let in_script = fields.get(4).and_then(as_text).as_deref() == Some("?:0");
        if in_script {
            *slow.in_scripts.entry(name).or_default() += 1;
            continue;
        }
        slow.count += 1;
        *slow.names.entry(name.clone()).or_default() += 1;
        if took >= slow.max_us {
            slow.max_us = took;
            slow.max_name = name;
        }
    }
    slow
}

/// One measured window.
#[derive(Clone)]
struct Sample {
    scenario: &'static str,
    design: Design,
    run: usize,
    wall: f64,
    /// Page views (or joins, or sessions) the window carried.
    views: usize,
    /// The bystander's round trips, in µs, sorted.
    latencies: Vec<u32>,
    cpu: f64,
    commands: u64,
    slow: Slow,
    memory_per_session: Option<f64>,
}

impl Sample {
    fn percentile(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank =
            ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        f64::from(self.latencies[rank - 1])
    }

    fn cpu_rate(&self) -> f64 {
        self.cpu / self.wall
    }

    /// Redis CPU per page view in µs, net of what the quiet server spends in as long.
    fn cpu_per_view(&self, quiet_rate: f64) -> f64 {
        if self.views == 0 {
            return f64::NAN;
        }
        (self.cpu - quiet_rate * self.wall).max(0.0) * 1e6 / self.views as f64
    }

    fn commands_per_view(&self) -> f64 {
        if self.views == 0 {
            return f64::NAN;
        }
        self.commands as f64 / self.views as f64
    }
}

/// Runs `load` while the bystander polls, and reads what Redis spent meanwhile. `load`
/// returns the page views it carried.
fn measure(
    url: &str,
    admin: &mut redis::Connection,
    scenario: &'static str,
    design: Design,
    run: usize,
    load: impl FnOnce() -> usize,
) -> Sample {
    let mut bystander = connect(url);
    redis::cmd("SLOWLOG").arg("RESET").exec(admin).unwrap();
    let cpu0 = redis_cpu(admin);
    let commands0 = commands(admin);

    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        thread::Builder::new()
            .name("bystander".into())
            .spawn(move || {
                let mut latencies = Vec::with_capacity(1 << 14);
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let v: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(BYSTANDER_KEY)
                        .query(&mut bystander)
                        .expect("the bystander's GET");
                    let took = t.elapsed();
                    assert!(v.is_some(), "the bystander's key is set before each run");
                    latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                    // A late poll is not made up for: one GET per 2 ms at most.
                    next = (next + BYSTANDER_EVERY).max(Instant::now());
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                }
                latencies
            })
            .unwrap()
    };

    let t = Instant::now();
    let views = load();
    let wall = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut latencies = poller.join().expect("the bystander thread");

    let cpu = redis_cpu(admin) - cpu0;
    let polls = latencies.len() as u64;
    let commands = commands(admin)
        .saturating_sub(commands0)
        .saturating_sub(polls);
    let slow = slowlog(admin);
    latencies.sort_unstable();
    Sample {
        scenario,
        design,
        run,
        wall,
        views,
        latencies,
        cpu,
        commands,
        slow,
        memory_per_session: None,
    }
}

/// Empties Redis, sets the bystander's key again and lets the server settle.
fn reset(admin: &mut redis::Connection, settle: Duration) {
    redis::cmd("FLUSHALL").arg("SYNC").exec(admin).unwrap();
    redis::cmd("SET")
        .arg(BYSTANDER_KEY)
        .arg("x".repeat(64))
        .exec(admin)
        .unwrap();
    thread::sleep(settle);
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits until the cluster view shows `n` sessions and is not stale: the upload is done.
fn await_view(rt: &Runtime, cluster: &Cluster, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match rt.block_on(cluster.sync()) {
            Ok(c) if c.sessions >= n && !c.stale => return c.sessions,
            Ok(c) => assert!(
                Instant::now() < deadline,
                "the cluster view shows {} of {n} sessions after 300 s (stale: {})",
                c.sessions,
                c.stale
            ),
            Err(e) => assert!(Instant::now() < deadline, "sync failed for 300 s: {e}"),
        }
        thread::sleep(Duration::from_millis(50));
    }
}

struct Load<'a> {
    settings: &'a Settings,
    url: &'a str,
    visitors: &'a Visitors,
    joiners: &'a Visitors,
    pages: &'a [String],
}

fn run_ours(load: &Load<'_>, admin: &mut redis::Connection, run: usize) -> Vec<Sample> {
    let Load {
        settings,
        url,
        visitors,
        joiners,
        pages,
    } = *load;
    reset(admin, settings.settle);
    let rt = runtime();
    // Built inside the runtime: the reaper is a tokio task, as in a server.
    let presence = {
        let _inside = rt.enter();
        Presence::builder().build()
    };
    let cluster = rt
        .block_on(
            Cluster::builder(url)
                .namespace(format!("shared-bench-{run}"))
                .flush_interval(FLUSH_INTERVAL)
                .start(&presence),
        )
        .expect("valid settings");
    let mut samples = Vec::new();
    let mut rng = SplitMix(1000 + run as u64);

    let memory0 = used_memory(admin);
    let mut sample = measure(url, admin, "load", Design::Ours, run, || {
        for (i, id) in visitors.ids.iter().enumerate() {
            let page = &pages[rng.below(PAGES)];
            presence
                .visit(*id, visitors.kinds[i].clone(), page)
                .expect("unbounded");
        }
        await_view(&rt, &cluster, visitors.len());
        visitors.len()
    });
    sample.memory_per_session = Some((used_memory(admin) - memory0) / visitors.len() as f64);
    samples.push(sample);
    thread::sleep(settings.settle);

    let total = (settings.rate as f64 * settings.steady.as_secs_f64()) as usize;
    let mut rng = SplitMix(2000 + run as u64);
    samples.push(measure(url, admin, "steady", Design::Ours, run, || {
        paced(total, settings.rate as f64, |due| {
            for _ in 0..due {
                let s = rng.below(visitors.len());
                let page = &pages[rng.below(PAGES)];
                presence
                    .visit(visitors.ids[s], visitors.kinds[s].clone(), page)
                    .expect("unbounded");
            }
        })
    }));
    let shown = rt.block_on(cluster.sync()).map(|c| c.sessions);
    thread::sleep(settings.settle);

    let mut rng = SplitMix(3000 + run as u64);
    let mut next = 0;
    samples.push(measure(url, admin, "burst", Design::Ours, run, || {
        let joined = paced(joiners.len(), joiners.len() as f64, |due| {
            for _ in 0..due {
                let page = &pages[rng.below(PAGES)];
                presence
                    .visit(joiners.ids[next], joiners.kinds[next].clone(), page)
                    .expect("unbounded");
                next += 1;
            }
        });
        thread::sleep(2 * FLUSH_INTERVAL);
        joined
    }));
    let after_burst = await_view(&rt, &cluster, visitors.len() + joiners.len());
    println!(
        "  ours run {run}: the cluster view showed {} sessions after steady, {after_burst} after \
         the burst (expected {} and {})",
        shown.map_or_else(|e| format!("an error ({e})"), |n| n.to_string()),
        visitors.len(),
        visitors.len() + joiners.len()
    );
    thread::sleep(settings.settle);

    let sessions = presence.counts().sessions;
    samples.push(measure(url, admin, "bye", Design::Ours, run, || {
        rt.block_on(cluster.shutdown());
        sessions
    }));
    presence.shutdown();
    drop(cluster);
    rt.shutdown_timeout(Duration::from_secs(5));
    samples
}

fn run_classic(load: &Load<'_>, admin: &mut redis::Connection, run: usize) -> Vec<Sample> {
    let Load {
        settings,
        url,
        visitors,
        joiners,
        pages,
    } = *load;
    reset(admin, settings.settle);
    let mut con = connect(url);
    let mut samples = Vec::new();
    let set = |pipe: &mut redis::Pipeline, v: &Visitors, s: usize, page: &str| {
        let key = format!("presence_{}", v.ids[s]);
        let value = format!("{}{page}\"}}", v.json_heads[s]);
        pipe.cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(CLASSIC_TTL_SECS)
            .ignore();
    };

    let mut rng = SplitMix(1000 + run as u64);
    let memory0 = used_memory(admin);
    let mut sample = measure(url, admin, "load", Design::Classic, run, || {
        for first in (0..visitors.len()).step_by(1000) {
            let mut pipe = redis::pipe();
            for s in first..(first + 1000).min(visitors.len()) {
                set(&mut pipe, visitors, s, &pages[rng.below(PAGES)]);
            }
            pipe.exec(&mut con).unwrap();
        }
        visitors.len()
    });
    sample.memory_per_session = Some((used_memory(admin) - memory0) / visitors.len() as f64);
    samples.push(sample);
    thread::sleep(settings.settle);

    let total = (settings.rate as f64 * settings.steady.as_secs_f64()) as usize;
    let mut rng = SplitMix(2000 + run as u64);
    samples.push(measure(url, admin, "steady", Design::Classic, run, || {
        paced(total, settings.rate as f64, |due| {
            let mut pipe = redis::pipe();
            for _ in 0..due {
                let s = rng.below(visitors.len());
                set(&mut pipe, visitors, s, &pages[rng.below(PAGES)]);
            }
            pipe.exec(&mut con).unwrap();
        })
    }));
    thread::sleep(settings.settle);

    let mut rng = SplitMix(3000 + run as u64);
    let mut next = 0;
    samples.push(measure(url, admin, "burst", Design::Classic, run, || {
        let joined = paced(joiners.len(), joiners.len() as f64, |due| {
            let mut pipe = redis::pipe();
            for _ in 0..due {
                set(&mut pipe, joiners, next, &pages[rng.below(PAGES)]);
                next += 1;
            }
            pipe.exec(&mut con).unwrap();
        });
        // The same window as ours, whose flushes land up to two intervals later.
        thread::sleep(2 * FLUSH_INTERVAL);
        joined
    }));
    let keys: u64 = redis::cmd("DBSIZE").query(admin).unwrap();
    println!(
        "  classic run {run}: {keys} keys after the burst (expected {}, with the bystander's)",
        visitors.len() + joiners.len() + 1
    );
    samples
}

/// Pins the server to CPU 1, so that its figures do not depend on where the scheduler put
/// it next to the load generator. Says what it did.
fn pin(server: &RedisServer) -> String {
    if std::env::var("PRESENCE_SHARED_PIN").as_deref() == Ok("0") {
        return "not pinned (PRESENCE_SHARED_PIN=0)".into();
    }
    if thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        return "not pinned (one CPU)".into();
    }
    let pinned = Command::new("taskset")
        .args(["-a", "-cp", "1", &server.pid().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if pinned {
        "pinned to CPU 1 (taskset -a -cp 1)".into()
    } else {
        "not pinned (taskset unavailable or refused)".into()
    }
}

fn duration(us: f64) -> String {
    if us.is_nan() {
        "-".into()
    } else if us < 1000.0 {
        format!("{us:.0}µs")
    } else if us < 100_000.0 {
        format!("{:.1}ms", us / 1000.0)
    } else {
        format!("{:.0}ms", us / 1000.0)
    }
}

fn number(x: f64, digits: usize) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.digits$}")
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.retain(|x| !x.is_nan());
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    }
}

/// One table line's figures: a window's, or the medians of several.
struct Line {
    wall: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    cpu_rate: f64,
    cpu_per_view: f64,
    commands_per_view: f64,
    slow_max_us: f64,
    slow_name: String,
    slow_count: f64,
    memory_per_session: f64,
}

impl Line {
    fn of(samples: &[&Sample], quiet_rate: f64) -> Self {
        let m = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(|s| f(s)).collect());
        let slowest = samples
            .iter()
            .max_by_key(|s| s.slow.max_us)
            .map(|s| s.slow.max_name.clone())
            .unwrap_or_default();
        Line {
            wall: m(&|s| s.wall),
            p50: m(&|s| s.percentile(0.50)),
            p99: m(&|s| s.percentile(0.99)),
            p999: m(&|s| s.percentile(0.999)),
            max: m(&|s| s.percentile(1.0)),
            cpu_rate: m(&|s| s.cpu_rate()),
            cpu_per_view: m(&|s| s.cpu_per_view(quiet_rate)),
            commands_per_view: m(&|s| s.commands_per_view()),
            // The worst of the runs: a stall a client saw once is not halved by a quiet run.
            slow_max_us: samples
                .iter()
                .map(|s| s.slow.max_us as f64)
                .fold(0.0, f64::max),
            slow_name: slowest,
            slow_count: m(&|s| s.slow.count as f64),
            memory_per_session: m(&|s| s.memory_per_session.unwrap_or(f64::NAN)),
        }
    }
}

const HEADER: &str = "scenario design  run   window  p50      p99      p99.9    max      cpu s/s  cpu µs/view  cmds/view  slowest call        ≥1ms  mem B/session";

fn print_line(scenario: &str, design: Design, run: &str, l: &Line) {
    let slowest = if l.slow_max_us > 0.0 {
        format!("{} {}", duration(l.slow_max_us), l.slow_name)
    } else {
        "-".into()
    };
    println!(
        "{scenario:<8} {:<7} {run:<5} {:<7} {:<8} {:<8} {:<8} {:<8} {:<8} {:<12} {:<10} {slowest:<19} {:<5} {}",
        design.name(),
        format!("{:.1}s", l.wall),
        duration(l.p50),
        duration(l.p99),
        duration(l.p999),
        duration(l.max),
        number(l.cpu_rate, 3),
        number(l.cpu_per_view, 2),
        number(l.commands_per_view, 2),
        number(l.slow_count, 0),
        number(l.memory_per_session, 0),
    );
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        "-".into()
    } else {
        format!("{:.2}x", a / b)
    }
}

/// SLOWLOG keeps only calls of 1 ms or more: a design with none is said so, not divided by.
fn slowest_ratio(ours: f64, classic: f64) -> String {
    match (ours > 0.0, classic > 0.0) {
        (true, true) => ratio(ours, classic),
        (true, false) => format!("{} vs <1ms", duration(ours)),
        (false, true) => format!("<1ms vs {}", duration(classic)),
        (false, false) => "both <1ms".into(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--list") {
        return;
    }
    let settings = Settings::from_env(has("--bench") && !has("--test"));
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let mut admin = connect(&url);
    for (name, value) in [
        ("slowlog-log-slower-than", "1000".to_string()),
        ("slowlog-max-len", SLOWLOG_LEN.to_string()),
    ] {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .exec(&mut admin)
            .unwrap();
    }
    let version = info(&mut admin, "server")
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:").map(str::to_string))
        .unwrap_or_default();

    println!(
        "shared_redis ({}): {} sessions (65% guests, 5% bots, 25% members, 5% hidden; {} users; {PAGES} pages), \
         steady {} page changes/s for {:.0?}, burst {} joins in 1 s, {} round(s) ABAB",
        settings.mode,
        settings.sessions,
        settings.sessions / 5,
        settings.rate,
        settings.steady,
        settings.burst,
        settings.rounds
    );
    println!(
        "redis-server {version} on 127.0.0.1:{} (pid {}), {}; bystander GET every {BYSTANDER_EVERY:?}; \
         classic pipelines every {TICK:?}; ours flushes every {FLUSH_INTERVAL:?}",
        server.port,
        server.pid(),
        pin(&server)
    );

    let visitors = Visitors::new(1, settings.sessions, 0);
    let joiners = Visitors::new(2, settings.burst, settings.sessions / 5);
    let pages = pages();
    let load = Load {
        settings: &settings,
        url: &url,
        visitors: &visitors,
        joiners: &joiners,
        pages: &pages,
    };

    reset(&mut admin, settings.settle);
    let quiet = measure(&url, &mut admin, "quiet", Design::Quiet, 1, || {
        thread::sleep(settings.quiet);
        0
    });
    let quiet_rate = quiet.cpu_rate();

    let started = Instant::now();
    let mut samples = vec![quiet];
    for run in 1..=settings.rounds {
        samples.extend(run_ours(&load, &mut admin, run));
        samples.extend(run_classic(&load, &mut admin, run));
    }
    let took = started.elapsed();

    println!();
    println!(
        "bystander round trips; Redis CPU per wall second; Redis CPU per page view (or per \
         session for load and bye) net of the quiet {:.4} s/s; commands per view, script-internal \
         included; slowest single call (SLOWLOG) and calls ≥ 1 ms",
        quiet_rate
    );
    println!("{HEADER}");
    let order = ["quiet", "load", "steady", "burst", "bye"];
    for scenario in order {
        for s in samples.iter().filter(|s| s.scenario == scenario) {
            print_line(
                scenario,
                s.design,
                &s.run.to_string(),
                &Line::of(&[s], quiet_rate),
            );
        }
    }

    println!();
    println!(
        "medians of {} round(s) (slowest call: the worst of them):",
        settings.rounds
    );
    println!("{HEADER}");
    let mut medians: BTreeMap<(usize, Design), Line> = BTreeMap::new();
    for (i, scenario) in order.iter().enumerate() {
        for design in [Design::Quiet, Design::Ours, Design::Classic] {
            let of: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.scenario == *scenario && s.design == design)
                .collect();
            if of.is_empty() {
                continue;
            }
            let line = Line::of(&of, quiet_rate);
            print_line(scenario, design, "med", &line);
            medians.insert((i, design), line);
        }
    }

    println!();
    println!("ours / classic (medians; below 1: ours costs the other clients less):");
    for (i, scenario) in order.iter().enumerate() {
        let (Some(o), Some(c)) = (
            medians.get(&(i, Design::Ours)),
            medians.get(&(i, Design::Classic)),
        ) else {
            continue;
        };
        println!(
            "{scenario:<8} cpu/view {:<7} cpu s/s {:<7} p99.9 {:<7} max {:<7} slowest call {:<15} memory/session {}",
            ratio(o.cpu_per_view, c.cpu_per_view),
            ratio(o.cpu_rate, c.cpu_rate),
            ratio(o.p999, c.p999),
            ratio(o.max, c.max),
            slowest_ratio(o.slow_max_us, c.slow_max_us),
            ratio(o.memory_per_session, c.memory_per_session),
        );
    }

    println!();
    println!("calls of 1 ms or more, by command (all windows of each design):");
    for design in [Design::Quiet, Design::Ours, Design::Classic] {
        let mut calls: BTreeMap<&str, u64> = BTreeMap::new();
        let mut in_scripts: BTreeMap<&str, u64> = BTreeMap::new();
        let mut truncated = false;
        for s in samples.iter().filter(|s| s.design == design) {
            for (name, n) in &s.slow.names {
                *calls.entry(name).or_default() += n;
            }
            for (name, n) in &s.slow.in_scripts {
                *in_scripts.entry(name).or_default() += n;
            }
            truncated |= s.slow.truncated;
        }
        let list = |names: &BTreeMap<&str, u64>| {
            if names.is_empty() {
                "none".to_string()
            } else {
                let l: Vec<String> = names.iter().map(|(k, v)| format!("{k} x{v}")).collect();
                l.join(", ")
            }
        };
        println!(
            "  {:<7} {}; inside scripts: {}{}",
            design.name(),
            list(&calls),
            list(&in_scripts),
            if truncated {
                " (the slowlog overflowed: lower bounds)"
            } else {
                ""
            }
        );
    }
    println!("measured in {took:.1?}");
    // Stops redis-server by its PID.
    drop(server);
}
