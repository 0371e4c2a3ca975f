//! What does the cluster view cost the *other* clients of a shared Redis?
//!
//! The Redis a site gives the cluster view is rarely its own: the same server holds the
//! site's caches, queues and session store, and every millisecond a script holds Redis's
//! single thread is a millisecond every other client waits. So this harness measures the
//! cluster view from a bystander's side, next to the classic design on the same server in
//! the same run:
//! - **ours**: one [`Presence`] (default settings: `idle_timeout` 300 s) with a [`Cluster`]
//!   attached (default `flush_interval` 1 s, `node_timeout` 2 s for `sweep`, its own
//!   namespace); the load thread calls `presence.visit(id, kind, page)`, and the cluster's
//!   background task flushes to Redis.
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
//! - `pageburst`: a fifth of the sessions (20k of 100k), distinct, each visit a new page
//!   (one of 20 `/hot/N`) within a few milliseconds; the window stays open two flush
//!   intervals, so that ours' background flush carries them in it (a `sync()` after the
//!   window, and the hot pages' counts, check that the view shows them all). Classic: as many
//!   `SET`s, in one pipeline.
//! - `refill` (ours only): Redis loses everything (`FLUSHALL` from another connection, the
//!   bystander's key set again at once) while the node holds its sessions; the window opens
//!   right after (so the server's own work of emptying itself is left out) and lasts until
//!   the node's `cluster.counts()` (polled every 5 ms) is no longer stale and shows them all
//!   again.
//! - `sweep` (ours only): a second node (its own `Presence` and `Cluster` on its own runtime)
//!   loads as many sessions of its own, then dies without a goodbye (its runtime is dropped);
//!   the window lasts until the first node's view, no longer stale, shows only its own
//!   sessions and one node. Both nodes have `node_timeout` 2 s: the timeout that decides is
//!   that of the node that finds the other silent.
//! - `bye` (ours only): `cluster.shutdown()`, whose final flush removes the node's sessions.
//!   The classic keys have no equivalent: they expire on their own.
//!
//! For `refill` and `sweep` the harness also reports when the view went stale (the loss or
//! the dead node noticed), when it was complete again, the rate in sessions per second, any
//! poll that showed a partial view as fresh, and, as a diagnostic, the Redis-side progress:
//! the `sessions` field of the `{ns}:c` hash the module docs describe, read every 5 ms from
//! the harness's own connection (its reads are not counted as ours). The design targets:
//! at least 100k sessions/s, and no script call over 5 ms.
//!
//! During every window a bystander on its own plain connection sends `GET bystander_key`
//! every 2 ms and records each round trip (a stalled GET is recorded once, at its full
//! length, so `max` is the longest stall a client saw). Reported per window: the bystander's
//! p50 / p99 / p99.9 / max; Redis CPU seconds per wall second (`INFO cpu`, `used_cpu_sys +
//! used_cpu_user`); Redis CPU per page view, net of the quiet baseline (a window with only
//! the bystander, measured first); Redis commands per page view (`INFO commandstats`, calls
//! made inside scripts included, the bystander's and the harness's own excluded); the mean
//! script call (`INFO commandstats`, wall time inside Redis); the slowest single call a
//! client made (`SLOWLOG`, with `slowlog-log-slower-than 1000`, i.e. 1 ms, reset before each
//! window; a script counts as one call, the commands it runs are listed apart) and how many
//! calls took 1 ms or more, and more than 5 ms (the harness's own commands are left out).
//! Then medians over the runs and the ratios ours / classic. Between designs the harness runs
//! `FLUSHALL` and waits, so that no run disturbs the next. Ours and classic alternate (ABAB:
//! two rounds by default).
//!
//! Every page view here moves its session to another page, so each one is a change ours
//! must flush: the write-heaviest case for ours (a request that only refreshes a session
//! costs ours no Redis write until its renewal, and the classic design a `SET` all the same).
//!
//! Only the public API is used (`Presence`, `Kind`, `SessionId`, `Cluster`): the figures
//! stay meaningful whatever the cluster's key layout. The one exception is the Redis counter
//! of `refill` and `sweep`, a diagnostic: if the layout changes, it shows `-`.
//!
//! Run: `cargo bench -p presence-tracker-testbed --bench shared_redis` (three to four minutes
//! at full size on a 2-core machine). `PRESENCE_SHARED_QUICK=1`: 10k sessions, 500 page
//! changes/s for 3 s, `refill` and `sweep` in the first round only, under a minute: it checks
//! that everything works end to end, and shows ours' stalls, but its CPU figures are within
//! the noise of the quiet baseline. Settings (environment): `PRESENCE_SHARED_SESSIONS`
//! (100000), `PRESENCE_SHARED_RATE` (page changes/s, 5000), `PRESENCE_SHARED_SECS` (20),
//! `PRESENCE_SHARED_BURST` (a tenth of the sessions), `PRESENCE_SHARED_PAGEBURST` (a fifth of
//! the sessions), `PRESENCE_SHARED_ROUNDS` (2), `PRESENCE_SHARED_RECOVERY` (how many rounds,
//! the first ones, run `refill` and `sweep`: all; 0 skips them, about a quarter of the run),
//! `PRESENCE_SHARED_PIN=0` (no `taskset`). Without `--bench` (`cargo test --benches`) a tiny
//! run checks that it works. Under `CI=true` a missing `redis-server` is a failure.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use presence_tracker::cluster::{Cluster, ClusterCounts};
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
/// The harness's own commands (and a client's handshake): neither counted as commands nor
/// as slow calls of the design measured.
const HARNESS: &[&str] = &[
    "info", "config", "slowlog", "flushall", "ping", "client", "hello", "dbsize",
];
/// Every node's `node_timeout`. The node that finds another silent for its own timeout
/// declares it dead, so the first node has it too.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// The pages a page burst sends its sessions to.
const HOT_PAGES: usize = 20;
/// How often `refill` and `sweep` look at the view (and at the Redis counter).
const POLL: Duration = Duration::from_millis(5);
/// How long `refill` and `sweep` wait for a complete view before reporting that it never came.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

struct Settings {
    sessions: usize,
    rate: usize,
    steady: Duration,
    burst: usize,
    pageburst: usize,
    /// The rounds (the first ones) in which `refill` and `sweep` run.
    recovery: usize,
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
        let (mode, sessions, rate, secs, rounds, settle, recovery) = if !full {
            ("tiny (no --bench)", 2_000, 200, 1.0, 1, 0.2, 1)
        } else if quick {
            ("quick", 10_000, 500, 3.0, 2, 0.5, 1)
        } else {
            ("full", 100_000, 5_000, 20.0, 2, 2.0, 10)
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
            pageburst: env_or("PRESENCE_SHARED_PAGEBURST", sessions / 5).clamp(1, sessions),
            recovery: env_or("PRESENCE_SHARED_RECOVERY", recovery),
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
        if HARNESS.contains(&base) {
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

/// Script calls Redis ran and the µs they took in all (`INFO commandstats`, wall time:
/// a script preempted by the machine counts its wait).
fn scripts(con: &mut redis::Connection) -> (u64, u64) {
    let text = info(con, "commandstats");
    let mut total = (0, 0);
    for line in text.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        if !matches!(
            name,
            "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall"
        ) {
            continue;
        }
        let field = |f: &str| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total.0 += field("calls");
        total.1 += field("usec");
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
    /// Those of more than 5 ms.
    over5: u64,
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
        // The harness's own: a `SLOWLOG RESET` of a long log, say, takes a millisecond.
        if HARNESS.contains(&name.as_str()) {
            continue;
        }
        slow.count += 1;
        if took > 5000 {
            slow.over5 += 1;
        }
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
    /// Script calls in the window, and their total duration in µs.
    scripts: (u64, u64),
    slow: Slow,
    memory_per_session: Option<f64>,
    /// `refill` and `sweep`: how the view came back.
    recovery: Option<Recovery>,
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

    /// The mean script call, in µs.
    fn script_mean(&self) -> f64 {
        if self.scripts.0 == 0 {
            return f64::NAN;
        }
        self.scripts.1 as f64 / self.scripts.0 as f64
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
    let scripts0 = scripts(admin);

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
    let scripts1 = scripts(admin);
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
        scripts: (scripts1.0 - scripts0.0, scripts1.1 - scripts0.1),
        slow,
        memory_per_session: None,
        recovery: None,
    }
}

fn bystander_value() -> String {
    "x".repeat(64)
}

/// Empties Redis, sets the bystander's key again and lets the server settle.
fn reset(admin: &mut redis::Connection, settle: Duration) {
    redis::cmd("FLUSHALL").arg("SYNC").exec(admin).unwrap();
    redis::cmd("SET")
        .arg(BYSTANDER_KEY)
        .arg(bystander_value())
        .exec(admin)
        .unwrap();
    thread::sleep(settle);
}

/// `k` distinct indices below `n`, in random order.
fn distinct(rng: &mut SplitMix, n: usize, k: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    for i in 0..k.min(n) {
        let j = i + rng.below(n - i);
        all.swap(i, j);
    }
    all.truncate(k.min(n));
    all
}

fn hot_pages() -> Vec<String> {
    (0..HOT_PAGES).map(|p| format!("/hot/{p}")).collect()
}

/// How the view came back in `refill` or `sweep`; times from the loss, or the kill.
#[derive(Clone, Copy, Default)]
struct Recovery {
    /// Sessions sent again, or swept.
    sessions: usize,
    /// `sweep`: when the dead node's timeout fired (its last flush, by Redis's clock, plus
    /// the timeout); zero if it had already.
    fired: Option<Duration>,
    /// The first poll that found the view stale: the loss, or the dead node, noticed.
    noticed: Option<Duration>,
    /// The first poll that found the view complete and not stale; `None`: never, within
    /// [`RECOVERY_LIMIT`].
    complete: Option<Duration>,
    /// Polls that found a partial view not marked stale.
    partial: usize,
    /// The Redis counter (`{ns}:c` `sessions`): first moved, and reached its target.
    redis_moved: Option<Duration>,
    redis_done: Option<Duration>,
    /// The harness's reads of that counter, left out of ours' commands.
    probes: u64,
    /// The last view polled.
    last: Option<ClusterCounts>,
}

/// The figures a complete view must match.
fn figures(c: &ClusterCounts) -> [usize; 7] {
    [
        c.sessions, c.online, c.members, c.hidden, c.guests, c.bots, c.nodes,
    ]
}

/// Polls `cluster.counts()` and the Redis counter every [`POLL`] from `from` until the view,
/// computed after `from` and not stale, is `complete`; a view computed after `from`, not
/// stale, neither complete nor `expected` meanwhile counts as partial. The counter is
/// watched from `redis.0` to `redis.1`.
fn watch(
    cluster: &Cluster,
    probe: &mut redis::Connection,
    counter: &str,
    (from, from_wall): (Instant, SystemTime),
    redis: (i64, i64),
    complete: impl Fn(&ClusterCounts) -> bool,
    expected: impl Fn(&ClusterCounts) -> bool,
) -> Recovery {
    let mut rec = Recovery::default();
    let limit = RECOVERY_LIMIT + NODE_TIMEOUT;
    loop {
        let c = cluster.counts();
        let at = from.elapsed();
        rec.last = Some(c);
        if c.stale && rec.noticed.is_none() {
            rec.noticed = Some(at);
        }
        let mut done = false;
        if !c.stale && c.as_of > from_wall {
            if complete(&c) {
                rec.complete = Some(at);
                // The counter got there by then too: one more look.
                done = true;
            } else if !expected(&c) {
                rec.partial += 1;
            }
        }
        let v: Option<i64> = redis::cmd("HGET")
            .arg(counter)
            .arg("sessions")
            .query(probe)
            .unwrap_or(None);
        rec.probes += 1;
        let v = v.unwrap_or(0);
        if rec.redis_moved.is_none() && v != redis.0 {
            rec.redis_moved = Some(at);
        }
        if rec.redis_done.is_none() && v == redis.1 {
            rec.redis_done = Some(at);
        }
        if done || at > limit {
            return rec;
        }
        thread::sleep(POLL);
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("+{:.2}s", d.as_secs_f64()))
}

fn rate(n: usize, from: Option<Duration>, to: Option<Duration>) -> String {
    match (from, to) {
        (Some(a), Some(b)) if b > a => {
            format!(
                "{:.0}k sessions/s",
                n as f64 / (b - a).as_secs_f64() / 1000.0
            )
        }
        _ => "-".into(),
    }
}

impl Recovery {
    /// One line: when the view went stale and came back, the rates, partial views.
    fn describe(&self, scenario: &str) -> String {
        let mut line = if scenario == "sweep" {
            format!(
                "{} sessions of the killed node; its timeout fired ≈ {}, noticed {}, view complete {} \
                 ({} after the timeout fired, {} after noticed)",
                self.sessions,
                secs(self.fired),
                secs(self.noticed),
                secs(self.complete),
                rate(self.sessions, self.fired, self.complete),
                rate(self.sessions, self.noticed, self.complete),
            )
        } else {
            format!(
                "{} sessions; loss noticed {}, view complete {} ({} after noticed)",
                self.sessions,
                secs(self.noticed),
                secs(self.complete),
                rate(self.sessions, self.noticed, self.complete),
            )
        };
        line += &format!(
            "; Redis counter moved {}, done {} ({}); partial views shown as fresh: {}",
            secs(self.redis_moved),
            secs(self.redis_done),
            rate(self.sessions, self.redis_moved, self.redis_done),
            self.partial
        );
        if self.complete.is_none() {
            if let Some(c) = self.last {
                line += &format!(
                    "; NEVER COMPLETE within {:?}: last view {} sessions, {} nodes, stale {}",
                    RECOVERY_LIMIT + NODE_TIMEOUT,
                    c.sessions,
                    c.nodes,
                    c.stale
                );
            }
        }
        line
    }
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
    let namespace = format!("shared-bench-{run}");
    let counter = format!("{{{namespace}}}:c");
    let cluster = rt
        .block_on(
            Cluster::builder(url)
                .namespace(&namespace)
                .flush_interval(FLUSH_INTERVAL)
                .node_timeout(NODE_TIMEOUT)
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

    let chosen = distinct(
        &mut SplitMix(4000 + run as u64),
        visitors.len(),
        settings.pageburst,
    );
    let hot = hot_pages();
    let mut took = Duration::ZERO;
    samples.push(measure(url, admin, "pageburst", Design::Ours, run, || {
        let t = Instant::now();
        for (j, &s) in chosen.iter().enumerate() {
            presence
                .visit(
                    visitors.ids[s],
                    visitors.kinds[s].clone(),
                    &hot[j % HOT_PAGES],
                )
                .expect("unbounded");
        }
        took = t.elapsed();
        // The background flush carries them.
        thread::sleep(2 * FLUSH_INTERVAL);
        chosen.len()
    }));
    let on_hot = rt.block_on(async {
        cluster.sync().await?;
        let top = cluster.top_pages(HOT_PAGES).await?;
        Ok::<usize, presence_tracker::cluster::ClusterError>(
            top.iter()
                .filter(|(p, _)| p.starts_with("/hot/"))
                .map(|(_, n)| n)
                .sum(),
        )
    });
    println!(
        "  ours run {run}: {} page changes in {took:.1?}; the view then showed {} sessions on the \
         hot pages (expected {})",
        chosen.len(),
        on_hot.map_or_else(|e| format!("an error ({e})"), |n| n.to_string()),
        chosen.len()
    );
    thread::sleep(settings.settle);

    if run <= settings.recovery {
        samples.push(refill(load, admin, run, &rt, &presence, &cluster, &counter));
        thread::sleep(settings.settle);
        samples.push(sweep(load, admin, run, &rt, &cluster, &counter));
        thread::sleep(settings.settle);
    }

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

/// `refill`: Redis loses everything while the node holds its sessions; measured until the
/// view is complete again.
fn refill(
    load: &Load<'_>,
    admin: &mut redis::Connection,
    run: usize,
    rt: &Runtime,
    presence: &Presence,
    cluster: &Cluster,
    counter: &str,
) -> Sample {
    let n = presence.counts().sessions;
    await_view(rt, cluster, n);
    let before = cluster.counts();
    let mut probe = connect(load.url);
    let mut rec = Recovery::default();
    // The loss, just before the window: the server's own work of emptying itself (a
    // synchronous `FLUSHALL`, or the lazy free of an asynchronous one on the same pinned CPU)
    // is not the cluster's. The window opens a few milliseconds later.
    let from = (Instant::now(), SystemTime::now());
    reset(&mut probe, Duration::ZERO);
    let mut sample = measure(load.url, admin, "refill", Design::Ours, run, || {
        rec = watch(
            cluster,
            &mut probe,
            counter,
            from,
            (0, n as i64),
            |c| figures(c) == figures(&before),
            |_| false,
        );
        rec.sessions = n;
        n
    });
    // The harness's reads of the counter are not ours.
    sample.commands = sample.commands.saturating_sub(rec.probes);
    println!("  ours run {run}: refill: {}", rec.describe("refill"));
    sample.recovery = Some(rec);
    sample
}

/// `sweep`: a second node loads as many sessions, then dies without a goodbye; measured on
/// the first node until the dead node's sessions have left its view.
fn sweep(
    load: &Load<'_>,
    admin: &mut redis::Connection,
    run: usize,
    rt: &Runtime,
    cluster: &Cluster,
    counter: &str,
) -> Sample {
    let Load {
        settings,
        url,
        pages,
        ..
    } = *load;
    let before = rt
        .block_on(cluster.sync())
        .expect("the view before the second node");
    let others = Visitors::new(3, settings.sessions, 2 * settings.sessions);
    let b_rt = runtime();
    let b_presence = {
        let _inside = b_rt.enter();
        Presence::builder().build()
    };
    let b_cluster = b_rt
        .block_on(
            Cluster::builder(url)
                .namespace(format!("shared-bench-{run}"))
                .node_id(format!("doomed-{run}"))
                .flush_interval(FLUSH_INTERVAL)
                .node_timeout(NODE_TIMEOUT)
                .start(&b_presence),
        )
        .expect("valid settings");
    let mut rng = SplitMix(5000 + run as u64);
    let t = Instant::now();
    for (i, id) in others.ids.iter().enumerate() {
        b_presence
            .visit(*id, others.kinds[i].clone(), &pages[rng.below(PAGES)])
            .expect("unbounded");
    }
    let total = before.sessions + others.len();
    await_view(&b_rt, &b_cluster, total);
    let loaded = t.elapsed();
    await_view(rt, cluster, total);
    let with_b = cluster.counts();
    println!(
        "  ours run {run}: the second node loaded {} sessions in {loaded:.1?}; the first node's \
         view: {} sessions, {} nodes",
        others.len(),
        with_b.sessions,
        with_b.nodes
    );
    thread::sleep(settings.settle);

    let mut probe = connect(url);
    let mut rec = Recovery::default();
    let mut sample = measure(url, admin, "sweep", Design::Ours, run, || {
        // Its flush task and reaper go with the runtime: no final flush.
        drop(b_rt);
        let from = (Instant::now(), SystemTime::now());
        let last_flush = b_cluster.counts().as_of;
        drop(b_cluster);
        drop(b_presence);
        rec = watch(
            cluster,
            &mut probe,
            counter,
            from,
            (with_b.sessions as i64, before.sessions as i64),
            |c| figures(c) == figures(&before),
            |c| figures(c) == figures(&with_b),
        );
        rec.sessions = others.len();
        rec.fired = Some(
            (last_flush + NODE_TIMEOUT)
                .duration_since(from.1)
                .unwrap_or_default(),
        );
        others.len()
    });
    sample.commands = sample.commands.saturating_sub(rec.probes);
    println!("  ours run {run}: sweep: {}", rec.describe("sweep"));
    sample.recovery = Some(rec);
    sample
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
    thread::sleep(settings.settle);

    let chosen = distinct(
        &mut SplitMix(4000 + run as u64),
        visitors.len(),
        settings.pageburst,
    );
    let hot = hot_pages();
    samples.push(measure(
        url,
        admin,
        "pageburst",
        Design::Classic,
        run,
        || {
            let mut pipe = redis::pipe();
            for (j, &s) in chosen.iter().enumerate() {
                set(&mut pipe, visitors, s, &hot[j % HOT_PAGES]);
            }
            pipe.exec(&mut con).unwrap();
            // The same window as ours.
            thread::sleep(2 * FLUSH_INTERVAL);
            chosen.len()
        },
    ));
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
    script_mean: f64,
    slow_max_us: f64,
    slow_name: String,
    slow_count: f64,
    slow_over5: f64,
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
            script_mean: m(&|s| s.script_mean()),
            // The worst of the runs: a stall a client saw once is not halved by a quiet run.
            slow_max_us: samples
                .iter()
                .map(|s| s.slow.max_us as f64)
                .fold(0.0, f64::max),
            slow_name: slowest,
            slow_count: m(&|s| s.slow.count as f64),
            slow_over5: m(&|s| s.slow.over5 as f64),
            memory_per_session: m(&|s| s.memory_per_session.unwrap_or(f64::NAN)),
        }
    }
}

const HEADER: &str = "scenario  design  run   window  p50      p99      p99.9    max      cpu s/s  cpu µs/view  cmds/view  mean script  slowest call        ≥1ms  >5ms  mem B/session";

fn print_line(scenario: &str, design: Design, run: &str, l: &Line) {
    let slowest = if l.slow_max_us > 0.0 {
        format!("{} {}", duration(l.slow_max_us), l.slow_name)
    } else {
        "-".into()
    };
    println!(
        "{scenario:<9} {:<7} {run:<5} {:<7} {:<8} {:<8} {:<8} {:<8} {:<8} {:<12} {:<10} {:<12} {slowest:<19} {:<5} {:<5} {}",
        design.name(),
        format!("{:.1}s", l.wall),
        duration(l.p50),
        duration(l.p99),
        duration(l.p999),
        duration(l.max),
        number(l.cpu_rate, 3),
        number(l.cpu_per_view, 2),
        number(l.commands_per_view, 2),
        duration(l.script_mean),
        number(l.slow_count, 0),
        number(l.slow_over5, 0),
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
         steady {} page changes/s for {:.0?}, burst {} joins in 1 s, page burst {} page changes at \
         once, {}; {} round(s) ABAB",
        settings.mode,
        settings.sessions,
        settings.sessions / 5,
        settings.rate,
        settings.steady,
        settings.burst,
        settings.pageburst,
        if settings.recovery > 0 {
            format!(
                "refill and sweep in {} round(s) (ours, node_timeout {NODE_TIMEOUT:?}, a second \
                 node of {} sessions)",
                settings.recovery.min(settings.rounds),
                settings.sessions
            )
        } else {
            "no refill or sweep (PRESENCE_SHARED_RECOVERY=0)".to_string()
        },
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
         session for load, refill, sweep and bye) net of the quiet {:.4} s/s; commands per view, \
         script-internal included; the mean script call (wall time in Redis); slowest single call \
         (SLOWLOG) and calls ≥ 1 ms and > 5 ms",
        quiet_rate
    );
    println!("{HEADER}");
    let order = [
        "quiet",
        "load",
        "steady",
        "burst",
        "pageburst",
        "refill",
        "sweep",
        "bye",
    ];
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
            "{scenario:<9} cpu/view {:<7} cpu s/s {:<7} p99.9 {:<7} max {:<7} slowest call {:<15} memory/session {}",
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
    if settings.recovery > 0 {
        println!();
        println!(
            "refill and sweep (ours; times from the loss or the kill; targets: at least 100k \
             sessions/s, no call over 5 ms):"
        );
        for s in &samples {
            let Some(rec) = &s.recovery else {
                continue;
            };
            println!(
                "  {} run {}: {}",
                s.scenario,
                s.run,
                rec.describe(s.scenario)
            );
            println!(
                "    {} script calls, mean {} (Redis CPU {} per call); slowest call {}, calls ≥ 1 ms: \
                 {}, > 5 ms: {}; bystander p99 {} p99.9 {} max {}",
                s.scripts.0,
                duration(s.script_mean()),
                duration(s.cpu * 1e6 / s.scripts.0.max(1) as f64),
                if s.slow.max_us > 0 {
                    format!("{} {}", duration(s.slow.max_us as f64), s.slow.max_name)
                } else {
                    "<1ms".into()
                },
                s.slow.count,
                s.slow.over5,
                duration(s.percentile(0.99)),
                duration(s.percentile(0.999)),
                duration(s.percentile(1.0)),
            );
        }
    }
    println!("measured in {took:.1?}");
    // Stops redis-server by its PID.
    drop(server);
}
