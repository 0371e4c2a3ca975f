//! "Who is online" on a small forum, phpBB style, refreshed live by the page script.
//!
//! ```text
//! cargo run --example whos_online --features axum
//! # then open http://127.0.0.1:3000/ in two browsers
//! ```
//!
//! Sign in by name (kept in a plain `forum_user` cookie; several tabs or browsers of one
//! name count once), hide yourself, sign out; visitors whose `User-Agent` says bot,
//! crawler or spider count as bots; `/admin` lists the sessions, 100 a page, and can kill one.
//!
//! Every number in the "who is online" block follows changes as they happen: while the tab
//! is visible the page script holds one `GET /presence/stream` open, which pushes the counts
//! when they change (within half a second) and keeps the visitor online with no polling.
//! Where the stream cannot work it falls back to reading `GET /presence/counts` every 2 s
//! (a plain `fetch`, so the back/forward cache keeps working) and a 30 s heartbeat.
//!
//! With the feature `demo-chat` (`--features axum,demo-chat`), `/chat` is a chat room on a
//! WebSocket: the socket [holds](presence_tracker::Presence::hold) the visitor's session
//! while it is open, and the room's members, joins and leaves come pushed from
//! [`Presence::watch_page`](presence_tracker::Presence::watch_page).
//!
//! Environment: `PORT` (default 3000, on 127.0.0.1), `PRESENCE_IDLE_TIMEOUT` (seconds,
//! default 300), `PRESENCE_HEARTBEAT_LIMIT` (seconds, default 1200),
//! `PRESENCE_HEARTBEAT_INTERVAL` (seconds, may be fractional; default: 30 or a third of
//! the idle timeout), `PRESENCE_DEMO_SEED` (a number of made-up visitors to start with, to
//! see the pages at scale: 95 % guests, 4 % members, 1 % bots, over the topics), `RUST_LOG`
//! (what the log on stderr shows, as `target=level` directives: `debug`,
//! `presence_tracker=debug`; default `warn,presence_tracker=info,whos_online=info`, so the
//! library's warnings and notices show: Redis errors, a stale view, refills, snapshots).
//!
//! Restarts keep the visitors: the tracker is saved to `PRESENCE_SNAPSHOT` (default
//! `whos_online-<PORT>.snapshot` in the temporary directory, one file per node; empty: no
//! snapshot) as soon as Ctrl-C or SIGTERM arrives (then open connections get
//! `PRESENCE_DRAIN_SECS`, default 10, to finish), and restored at start, with the
//! cookie signing key kept beside it (`<snapshot>.key`) so that returning browsers keep their
//! sessions. `/admin` charts "users online, last 24 hours" from `Presence::history`;
//! `PRESENCE_HISTORY_INTERVAL` (seconds, may be fractional; default 60) samples faster to
//! see the chart fill within a minute.
//!
//! With the feature `demo-metrics` (`--features axum,demo-metrics`: the `metrics` feature and
//! a Prometheus exporter, which the library itself never installs), `/metrics` serves the
//! tracker's metrics in the Prometheus text format.
//!
//! Cluster mode (feature `redis`): with `REDIS_URL` set, the node joins the cluster-wide view
//! on that Redis, and every page shows the cluster's numbers: the counts, the page counts, the
//! names, the peak, and on `/admin` the chart of the cluster's `online` as this node sampled it
//! (the session list stays this node's: those are the sessions it can end); `/metrics` adds
//! `presence_cluster_*` gauges beside this node's own metrics. Two processes on two ports show
//! the same numbers; while the view is stale (Redis did not answer the last flush, or a refill
//! is under way) the pages say so, discreetly, under the counts. Cluster nodes must
//! accept each other's cookies, so cluster mode needs `PRESENCE_SIGNING_KEY` (the same secret,
//! at least 64 bytes, on every node); each node keeps its own snapshot:
//!
//! ```text
//! export REDIS_URL=redis://127.0.0.1:6379 PRESENCE_SIGNING_KEY=$(head -c 48 /dev/urandom | base64)
//! PORT=3000 cargo run --example whos_online --features axum,redis &
//! PORT=3001 cargo run --example whos_online --features axum,redis
//! ```
//!
//! The demo has no authentication at all (anyone may sign in as anyone, and `/admin` is
//! open): it shows presence, not security.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::header::{COOKIE, REFERER, SET_COOKIE, USER_AGENT};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{AppendHeaders, Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use cookie::Cookie;
use presence_tracker::http::{self as presence_http, Key, PresenceLayer, ScriptTag};
use presence_tracker::{Kind, Presence, SessionCursor, SessionId, SessionState, UserId};
use serde::Deserialize;

const USER_COOKIE: &str = "forum_user";
const HIDDEN_COOKIE: &str = "forum_hidden";
const MAX_NAME_CHARS: usize = 24;
/// How often an open page reads the counts.
const REFRESH: Duration = Duration::from_secs(2);
/// Names in a list before "and N more"; the same number the presence routes send.
const NAMES: usize = 50;
/// How a list names the rest: "and 3 more" for members online, "and 3 guests" for a
/// page's viewers (the page script says the same from `data-presence-more`).
const MORE: (&str, &str) = ("more", "more");
const GUESTS: (&str, &str) = ("guest", "guests");
/// Sessions on one page of `/admin`.
const ADMIN_PAGE: usize = 100;

const TOPICS: [(&str, &str); 3] = [
    (
        "Welcome to the forum",
        "Say hello and tell us where you are from.",
    ),
    (
        "Rust async questions",
        "Pinning, cancellation, and why the borrow checker is right.",
    ),
    (
        "Show your project",
        "Built something with presence-tracker? Post it here.",
    ),
];

/// The tracker of the node on `port`, with the settings taken from the environment (see the
/// module docs).
pub(crate) fn presence_from_env(port: u16) -> Presence {
    let mut builder = Presence::builder();
    if let Some(path) = snapshot_path(port) {
        builder = builder.snapshot_file(path);
    }
    if let Some(interval) = history_interval() {
        builder = builder.history_interval(interval);
    }
    if let Some(secs) = env_secs("PRESENCE_IDLE_TIMEOUT") {
        builder = builder.idle_timeout(secs).idle_after(secs);
    }
    if let Some(secs) = env_secs("PRESENCE_HEARTBEAT_LIMIT") {
        builder = builder.heartbeat_limit(secs);
    }
    let presence = builder.build();
    if let Some(n) = std::env::var("PRESENCE_DEMO_SEED")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        seed(&presence, n);
    }
    presence
}

/// `PRESENCE_HISTORY_INTERVAL`, if set (the tracker's default is a minute).
fn history_interval() -> Option<Duration> {
    env_secs("PRESENCE_HISTORY_INTERVAL").map(|d| d.max(Duration::from_millis(1)))
}

/// `n` made-up visitors spread over the topics, to try the pages at scale.
fn seed(presence: &Presence, n: usize) {
    for i in 0..n {
        let kind = match i % 100 {
            0..=3 => Kind::member(format!("member{:06}", i / 100)),
            4 => Kind::Bot,
            _ => Kind::Guest,
        };
        let page = format!("/topic/{}", i % TOPICS.len() + 1);
        if let Err(err) = presence.visit(SessionId::new_v4(), kind, &page) {
            tracing::warn!(
                "seeding stopped after {}: {err}",
                count(i, "visitor", "visitors")
            );
            return;
        }
    }
    tracing::info!("seeded {}", count(n, "made-up visitor", "made-up visitors"));
}

/// Where the node on `port` saves its tracker across restarts: `PRESENCE_SNAPSHOT`, by
/// default a file of its own in the temporary directory (two nodes on one machine must not
/// share one); `None` when set empty.
fn snapshot_path(port: u16) -> Option<PathBuf> {
    match std::env::var_os("PRESENCE_SNAPSHOT") {
        Some(path) if path.is_empty() => None,
        Some(path) => Some(PathBuf::from(path)),
        None => Some(std::env::temp_dir().join(format!("whos_online-{port}.snapshot"))),
    }
}

/// The cookie signing key, kept beside the snapshot (`<snapshot>.key`, created on the first
/// start) so that a restarted server accepts the cookies it issued; without a snapshot, a
/// key for this process only.
fn signing_key(snapshot: Option<&std::path::Path>) -> Key {
    let Some(snapshot) = snapshot else {
        return Key::generate();
    };
    let path = PathBuf::from(format!("{}.key", snapshot.display()));
    if let Ok(secret) = std::fs::read(&path) {
        match Key::try_from(&secret[..]) {
            Ok(key) => return key,
            Err(err) => tracing::warn!("ignoring {}: {err}", path.display()),
        }
    }
    // 64 random bytes from the operating system, through four v4 UUIDs.
    let secret: Vec<u8> = (0..4)
        .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
        .collect();
    let written = {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(&path).and_then(|mut f| f.write_all(&secret))
    };
    if let Err(err) = written {
        tracing::warn!("cannot keep the signing key in {}: {err}", path.display());
    }
    Key::try_from(&secret[..]).unwrap_or_else(|_| Key::generate())
}

fn env_secs(name: &str) -> Option<Duration> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Some(Duration::from_secs_f64(secs)),
        _ => {
            tracing::warn!("ignoring {name}={value:?}: expected a positive number of seconds");
            None
        }
    }
}

/// `n` and its noun: "1 user", "0 users", "2 users".
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", plural(n, one, many))
}

/// The form of a word that agrees with `n`.
fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// Where the pages' numbers come from.
#[derive(Clone, Debug)]
pub(crate) enum View {
    /// This node's tracker.
    Node,
    /// The cluster-wide view on Redis (cluster mode): every node shows the same numbers.
    #[cfg(feature = "redis")]
    Cluster(presence_tracker::cluster::Cluster),
}

struct Demo {
    presence: Presence,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // one kind of view only
    view: View,
    script_tag: String,
    /// The chat room's messages, to every open socket (the last few, for the slow).
    #[cfg(feature = "demo-chat")]
    chat: tokio::sync::broadcast::Sender<chat::Said>,
    /// Cluster mode: the cluster's `online`, sampled by this node for the admin chart (the
    /// cluster keeps no history of its own).
    #[cfg(feature = "redis")]
    cluster_history: parking_lot::Mutex<std::collections::VecDeque<(SystemTime, usize)>>,
}

/// What the "who is online" block of one page shows, from this node or the cluster.
struct Who {
    online: usize,
    members: usize,
    hidden: usize,
    guests: usize,
    bots: usize,
    sessions: usize,
    peak: presence_tracker::Peak,
    /// Cluster mode: the live nodes, and whether the view is stale (then also when it was
    /// last fresh).
    cluster: Option<(usize, Option<SystemTime>)>,
    /// Sessions on the page shown.
    here: usize,
    member_names: Vec<UserId>,
    page_names: Vec<UserId>,
    /// Sessions on each of the pages asked for, in order.
    pages: Vec<usize>,
}

impl Demo {
    /// The numbers of page `path`, and the session counts of `pages`.
    async fn who(&self, path: &str, pages: &[&str]) -> Who {
        #[cfg(feature = "redis")]
        if let View::Cluster(cluster) = &self.view {
            return self.cluster_who(cluster, path, pages).await;
        }
        // The same lists the page script keeps up to date, each costing what it returns.
        let p = &self.presence;
        let c = p.counts();
        Who {
            online: c.online,
            members: c.members,
            hidden: c.hidden,
            guests: c.guests,
            bots: c.bots,
            sessions: c.sessions,
            peak: c.peak,
            cluster: None,
            here: p.page_count(path),
            member_names: p.online_members(NAMES),
            page_names: p.page_members(path, NAMES),
            pages: pages.iter().map(|page| p.page_count(page)).collect(),
        }
    }

    /// [`Demo::who`] from the cluster's view. A read Redis does not answer falls back to this
    /// node's figure and marks the view stale, as the presence routes' JSON does.
    #[cfg(feature = "redis")]
    async fn cluster_who(
        &self,
        cluster: &presence_tracker::cluster::Cluster,
        path: &str,
        pages: &[&str],
    ) -> Who {
        let p = &self.presence;
        let c = cluster.counts();
        let mut stale = c.stale;
        let here = or_local(cluster.page_count(path).await, &mut stale, || {
            p.page_count(path)
        });
        let member_names = or_local(cluster.online_members(NAMES).await, &mut stale, || {
            p.online_members(NAMES)
        });
        let page_names = or_local(cluster.page_members(path, NAMES).await, &mut stale, || {
            p.page_members(path, NAMES)
        });
        let mut counts = Vec::with_capacity(pages.len());
        for page in pages {
            let read = cluster.page_count(page).await;
            counts.push(or_local(read, &mut stale, || p.page_count(page)));
        }
        Who {
            online: c.online,
            members: c.members,
            hidden: c.hidden,
            guests: c.guests,
            bots: c.bots,
            sessions: c.sessions,
            peak: c.peak,
            cluster: Some((c.nodes, stale.then_some(c.as_of))),
            here,
            member_names,
            page_names,
            pages: counts,
        }
    }

    /// The samples the admin chart draws: this node's history, or in cluster mode the
    /// cluster's `online` as this node sampled it.
    fn history(&self) -> Vec<(SystemTime, usize)> {
        #[cfg(feature = "redis")]
        if let View::Cluster(_) = self.view {
            return self.cluster_history.lock().iter().copied().collect();
        }
        self.presence.history()
    }
}

/// The cluster's answer, or this node's figure (and the view marked stale) when Redis did not
/// answer.
#[cfg(feature = "redis")]
fn or_local<T>(
    read: Result<T, presence_tracker::cluster::ClusterError>,
    stale: &mut bool,
    local: impl FnOnce() -> T,
) -> T {
    read.unwrap_or_else(|_| {
        *stale = true;
        local()
    })
}

/// Samples the cluster's `online` into `demo.cluster_history` every history interval, at the
/// interval's wall-clock boundaries (so that every node samples at the same instants), as
/// long as the demo is served. A stale view is not sampled: the chart shows a gap, as for a
/// node that was down.
#[cfg(feature = "redis")]
fn sample_cluster(demo: &Arc<Demo>) {
    const SAMPLES: usize = 1440;
    let every = history_interval()
        .unwrap_or(Duration::from_secs(60))
        .as_millis()
        .max(1);
    let demo = Arc::downgrade(demo);
    tokio::spawn(async move {
        loop {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let next = (now / every + 1) * every;
            let wait = u64::try_from(next - now).unwrap_or(u64::MAX);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let Some(demo) = demo.upgrade() else {
                return;
            };
            let View::Cluster(cluster) = &demo.view else {
                return;
            };
            let c = cluster.counts();
            if c.stale {
                continue;
            }
            let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(next).unwrap_or(u64::MAX));
            let mut history = demo.cluster_history.lock();
            if history.len() == SAMPLES {
                history.pop_front();
            }
            history.push_back((at, c.online));
        }
    });
}

/// The whole forum: pages, presence routes, the presence layer. `heartbeat_interval`
/// overrides the script's default. Cookies are signed with a key of this process only.
#[allow(dead_code)] // the end-to-end tests serve the demo through this
pub(crate) fn app(presence: Presence, heartbeat_interval: Option<Duration>) -> Router {
    app_with_key(presence, heartbeat_interval, Key::generate())
}

/// [`app`] with the cookie signing key `key` (one that outlives the process keeps the
/// visitors' sessions across a restart).
#[allow(dead_code)] // the browser test's restart serves the demo through this
pub(crate) fn app_with_key(
    presence: Presence,
    heartbeat_interval: Option<Duration>,
    key: Key,
) -> Router {
    node_app(presence, heartbeat_interval, key, View::Node)
}

/// The forum with a given cookie key, its numbers from `view`: this node's, or (cluster
/// mode) the cluster's, for the pages and the presence routes alike. Call it in a tokio
/// runtime (cluster mode samples the cluster for the admin chart).
pub(crate) fn node_app(
    presence: Presence,
    heartbeat_interval: Option<Duration>,
    key: Key,
    view: View,
) -> Router {
    let mut tag = ScriptTag::new(&presence).refresh(REFRESH);
    if let Some(interval) = heartbeat_interval {
        tag = tag.interval(interval);
    }
    #[allow(unused_mut)]
    let mut routes = presence_http::Routes::new(presence.clone()).names(NAMES);
    #[cfg(feature = "redis")]
    if let View::Cluster(cluster) = &view {
        routes = routes.cluster(cluster.clone());
    }
    let demo = Arc::new(Demo {
        presence: presence.clone(),
        view,
        script_tag: tag.to_string(),
        #[cfg(feature = "demo-chat")]
        chat: tokio::sync::broadcast::channel(64).0,
        #[cfg(feature = "redis")]
        cluster_history: Default::default(),
    });
    #[cfg(feature = "redis")]
    if let View::Cluster(_) = demo.view {
        sample_cluster(&demo);
    }
    // Plain HTTP on loopback: no `Secure`.
    let layer = PresenceLayer::new(presence.clone())
        .secure(false)
        .signing_key(key)
        .classify(classify)
        // Form posts are not page views; the favicon is not a visit.
        .skip(|req| {
            let path = req.uri.path();
            (req.method == Method::POST && !path.starts_with("/presence/"))
                || path == "/favicon.ico"
        });
    let router = Router::new();
    #[cfg(feature = "demo-chat")]
    let router = router
        .route(chat::PAGE, get(chat::page))
        .route("/chat/ws", get(chat::socket));
    router
        .route("/", get(home))
        .route("/topic/{id}", get(topic))
        .route("/admin", get(admin))
        .route("/admin/kill", post(kill))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/hide", post(toggle_hidden))
        .merge(routes)
        .layer(layer)
        .with_state(demo)
}

fn classify(req: &Parts) -> Kind {
    kind_of(&req.headers)
}

/// The visitor's kind from a request's headers: a bot by its user agent, else signed in or
/// a guest by the demo's cookies.
fn kind_of(headers: &HeaderMap) -> Kind {
    let agent = headers
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ["bot", "crawler", "spider"]
        .iter()
        .any(|w| agent.contains(w))
    {
        return Kind::Bot;
    }
    match signed_in(headers) {
        Some((name, true)) => Kind::hidden_member(name),
        Some((name, false)) => Kind::member(name),
        None => Kind::Guest,
    }
}

/// The signed-in user name and whether they are hidden, from the demo's own cookies.
fn signed_in(headers: &HeaderMap) -> Option<(String, bool)> {
    let mut name = None;
    let mut hidden = false;
    for header in headers.get_all(COOKIE) {
        let Ok(header) = header.to_str() else {
            continue;
        };
        for cookie in Cookie::split_parse_encoded(header).flatten() {
            match cookie.name() {
                USER_COOKIE => name = valid_name(cookie.value()),
                HIDDEN_COOKIE => hidden = cookie.value() == "1",
                _ => {}
            }
        }
    }
    name.map(|n| (n, hidden))
}

fn valid_name(name: &str) -> Option<String> {
    let name = name.trim();
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && !name.chars().any(char::is_control);
    ok.then(|| name.to_owned())
}

/// "alice", "alice and bob", "alice, bob and 12 more", "12 more" or "None": the text the
/// page script writes into a `data-presence-list` element, rendered on the server too so
/// that the page is right before the script runs.
fn name_list(names: &[UserId], total: usize, (one, many): (&str, &str)) -> String {
    let more = total.saturating_sub(names.len());
    let mut parts: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    if more > 0 {
        parts.push(format!("{more} {}", if more == 1 { one } else { many }));
    }
    match parts.split_last() {
        None => "None".to_owned(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS UTC`, without a date crate.
pub(crate) fn utc(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `HH:MM` (UTC) of `time`.
fn hh_mm(time: SystemTime) -> String {
    utc(time)[11..16].to_owned()
}

/// "Users online, last 24 hours": a server-rendered SVG chart of `history` (one sample a
/// minute) with its highest point and the all-time `peak` marked, and `online` (the count
/// now) at its right end. A minute without a sample (the server was down) is a gap, not a
/// line drawn across it.
pub(crate) fn history_chart(
    history: &[(SystemTime, usize)],
    peak: presence_tracker::Peak,
    now: SystemTime,
    online: usize,
) -> String {
    const W: f64 = 760.0;
    const H: f64 = 240.0;
    const LEFT: f64 = 44.0;
    const RIGHT: f64 = 16.0;
    const TOP: f64 = 34.0;
    const BOTTOM: f64 = 28.0;
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let mut svg = format!(
        r##"<figure id="history" style="margin:0 0 1.5em 0">
<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="Users online, last 24 hours" style="background:#fff;border:1px solid #d8dee9;border-radius:6px;font:12px sans-serif">
<text x="{LEFT}" y="20" font-size="14" font-weight="bold" fill="#1a202c">Users online, last 24 hours</text>"##
    );
    let (plot_w, plot_h) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    // Now, at the top right. Not the last sample: that one is the count when its minute
    // began (at a start, often 0), while this says how many are online now.
    let _ = write!(
        svg,
        r##"<text x="{}" y="20" text-anchor="end" fill="#2b6cb0">now: <tspan id="now-online" font-weight="bold">{online}</tspan> online · {}</text>"##,
        W - RIGHT,
        count(history.len(), "sample", "samples")
    );
    if history.is_empty() {
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#718096">No samples yet: the first comes within a minute.</text></svg></figure>"##,
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
        return svg;
    }
    // The window: 24 hours back from now, or from the first sample when sampling faster.
    let end = secs(now).max(secs(history[history.len() - 1].0));
    let start = secs(history[0].0).max(end - 86_400.0).min(end - 5.0);
    let highest = history.iter().map(|&(_, n)| n).max().unwrap_or(0);
    // A round top a little above both the chart's highest point and the all-time peak.
    let top_value = highest.max(peak.online).max(online).max(4) as f64 * 1.1;
    let step = [
        1.0, 2.0, 5.0, 10.0, 20.0, 25.0, 50.0, 100.0, 200.0, 250.0, 500.0, 1000.0,
    ]
    .into_iter()
    .chain((4..12).map(|e| 10f64.powi(e)))
    .find(|s| top_value / s <= 5.0)
    .unwrap_or(1e12);
    let y_max = (top_value / step).ceil() * step;
    let x = |t: f64| LEFT + (t - start) / (end - start) * plot_w;
    // Seconds matter only on a chart of a few minutes (a demo sampling fast).
    let clock = |at: SystemTime| {
        if end - start < 600.0 {
            utc(at)[11..19].to_owned()
        } else {
            hh_mm(at)
        }
    };
    let y = |n: f64| TOP + plot_h - n / y_max * plot_h;
    // Grid and value labels.
    let mut v = 0.0;
    while v <= y_max + 0.5 {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#edf2f7"/><text x="{}" y="{:.1}" text-anchor="end" fill="#718096">{v}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y(v) + 4.0,
            y = y(v),
        );
        v += step;
    }
    // Time labels: five, evenly spaced.
    for i in 0..=4 {
        let t = start + (end - start) * f64::from(i) / 4.0;
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let label = clock(UNIX_EPOCH + Duration::from_secs_f64(t.max(0.0)));
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{}" text-anchor="{anchor}" fill="#718096">{label}</text>"##,
            x(t),
            H - 8.0
        );
    }
    // The samples, split where several are missing (the server was down); one missed now
    // and then (sampling faster than the reaper runs) is not a gap.
    let mut gaps: Vec<f64> = history
        .windows(2)
        .map(|w| secs(w[1].0) - secs(w[0].0))
        .collect();
    gaps.sort_by(f64::total_cmp);
    let spacing = gaps.get(gaps.len() / 2).copied().unwrap_or(60.0);
    let mut runs: Vec<&[(SystemTime, usize)]> = Vec::new();
    let mut from = 0;
    for i in 1..history.len() {
        if secs(history[i].0) - secs(history[i - 1].0) > spacing * 2.5 {
            runs.push(&history[from..i]);
            from = i;
        }
    }
    runs.push(&history[from..]);
    let base = y(0.0);
    for run in runs {
        let points: Vec<String> = run
            .iter()
            .map(|&(t, n)| format!("{:.1},{:.1}", x(secs(t)), y(n as f64)))
            .collect();
        let (first, last) = (x(secs(run[0].0)), x(secs(run[run.len() - 1].0)));
        let _ = write!(
            svg,
            r##"<polygon points="{first:.1},{base:.1} {} {last:.1},{base:.1}" fill="#bee3f8" fill-opacity="0.7"/><polyline points="{}" fill="none" stroke="#2b6cb0" stroke-width="2" stroke-linejoin="round"/>"##,
            points.join(" "),
            points.join(" ")
        );
    }
    // The all-time peak, as a dashed line with its date.
    let peak_y = y(peak.online as f64);
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" x2="{}" y1="{peak_y:.1}" y2="{peak_y:.1}" stroke="#c53030" stroke-dasharray="5 4"/><text id="peak-line" x="{}" y="{:.1}" text-anchor="end" fill="#c53030">most ever: {} on {}</text>"##,
        W - RIGHT,
        W - RIGHT,
        peak_y - 5.0,
        peak.online,
        utc(peak.at)
    );
    // The highest point of the day, marked and labelled.
    if let Some(&(at, n)) = history.iter().rev().find(|&&(_, n)| n == highest) {
        let (px, py) = (x(secs(at)), y(n as f64));
        let anchor = if px > LEFT + plot_w * 0.75 {
            "end"
        } else {
            "start"
        };
        let dx = if anchor == "end" { -8.0 } else { 8.0 };
        let _ = write!(
            svg,
            r##"<circle id="peak" cx="{px:.1}" cy="{py:.1}" r="4.5" fill="#c53030" stroke="#fff" stroke-width="1.5"/><text x="{:.1}" y="{:.1}" text-anchor="{anchor}" font-weight="bold" fill="#c53030">peak {n} at {}</text>"##,
            px + dx,
            (py + 16.0).min(TOP + plot_h - 4.0),
            clock(at)
        );
    }
    // The count now, at the right end of the line.
    let _ = write!(
        svg,
        r##"<circle id="now" cx="{:.1}" cy="{:.1}" r="3" fill="#2b6cb0"/></svg></figure>"##,
        x(end),
        y(online as f64),
    );
    svg
}

fn ago(time: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(time)
        .map_or(0, |d| d.as_secs());
    format!("{secs} s ago")
}

/// Keeps the words beside the numbers in agreement with them ("1 user", "2 users") once the
/// page script has rewritten the numbers: a word marked `data-plural="one|many"` follows the
/// number `data-presence="<data-for>"`.
const AGREE_SCRIPT: &str = r#"<script>
(function () {
  var stats = document.getElementById('stats');
  if (!stats || !window.MutationObserver) return;
  function agree() {
    var words = stats.querySelectorAll('[data-plural]');
    for (var i = 0; i < words.length; i++) {
      var n = stats.querySelector('[data-presence="' + words[i].getAttribute('data-for') + '"]');
      var forms = words[i].getAttribute('data-plural').split('|');
      var text = n && n.textContent.trim() === '1' ? forms[0] : forms[1];
      if (words[i].textContent !== text) words[i].textContent = text;
    }
  }
  new MutationObserver(agree).observe(stats, {subtree: true, childList: true, characterData: true});
})();
</script>"#;

/// A word that agrees with the number `data-presence="{key}"` now and after the script's
/// updates (see [`AGREE_SCRIPT`]).
fn agreeing(n: usize, key: &str, one: &str, many: &str) -> String {
    format!(
        r#"<span data-plural="{one}|{many}" data-for="{key}">{}</span>"#,
        plural(n, one, many)
    )
}

fn page(
    headers: &HeaderMap,
    path: &str,
    title: &str,
    body: &str,
    who: &Who,
    script: &str,
) -> Html<String> {
    let members = name_list(&who.member_names, who.members, MORE);
    let browsing = name_list(&who.page_names, who.here, GUESTS);
    let place = if path.starts_with("/topic/") {
        "topic"
    } else {
        "page"
    };
    // Cluster mode says so, discreetly, and whether the view is stale.
    let cluster = match who.cluster {
        None => String::new(),
        Some((nodes, stale)) => {
            let stale = match stale {
                Some(as_of) => format!(
                    r#" · <span id="stale" title="Redis did not answer lately: these are the numbers of {}">stale</span>"#,
                    utc(as_of)
                ),
                None => String::new(),
            };
            format!(
                r#"<p id="cluster" class="note">Across <span data-presence="nodes">{nodes}</span> {}{stale}</p>"#,
                agreeing(nodes, "nodes", "node", "nodes")
            )
        }
    };
    let account = match signed_in(headers) {
        Some((name, hidden)) => format!(
            r#"<form method="post" action="/hide" class="inline"><input type="hidden" name="back" value="{back}">
Signed in as <b id="me">{name}</b>{state}
<button id="hide" type="submit">{toggle}</button></form>
<form method="post" action="/logout" class="inline"><input type="hidden" name="back" value="{back}">
<button id="logout" type="submit">Sign out</button></form>"#,
            name = escape(&name),
            back = escape(path),
            state = if hidden { " (hidden)" } else { "" },
            toggle = if hidden { "Show me" } else { "Hide me" },
        ),
        None => format!(
            r#"<form method="post" action="/login" class="inline"><input type="hidden" name="back" value="{back}">
<input id="name" name="name" placeholder="your name" maxlength="{MAX_NAME_CHARS}" required>
<button id="login" type="submit">Sign in</button></form>"#,
            back = escape(path),
        ),
    };
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - Forum</title>
<style>body{{font-family:sans-serif;max-width:50em;margin:2em auto}} .inline{{display:inline}}
.stats{{background:#eef;padding:.5em 1em}} .note{{color:#718096;font-size:.85em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.2em .5em}}</style>
</head><body>
<nav><a href="/">Forum index</a> · {chat}<a href="/admin">Admin</a> · {account}</nav>
<h1>{title}</h1>
{body}
<div class="stats" id="stats">
<h3>Who is online</h3>
<p id="totals">In total there {is} <b data-presence="online">{online}</b> {users} online ::
<span data-presence="members">{members}</span> registered,
<span data-presence="hidden">{hidden}</span> hidden and
<span data-presence="guests">{guests}</span> {guest_word}
(and <span data-presence="bots">{bots}</span> {bot_word})</p>
<p><span id="here" data-presence="page">{here}</span> viewing this page</p>
<p>Registered users: <span id="members" data-presence-list="members">{member_names}</span></p>
<p>Users browsing this {place}: <span id="browsing" data-presence-list="page" data-presence-more="guest|guests">{browsing}</span></p>
<p>Most users ever online was <span data-presence="peak">{peak}</span> on <span data-presence="peak-at">{peak_at}</span></p>
{cluster}
</div>
{script}
{AGREE_SCRIPT}
</body></html>"#,
        title = escape(title),
        is = agreeing(who.online, "online", "is", "are"),
        online = who.online,
        users = agreeing(who.online, "online", "user", "users"),
        members = who.members,
        hidden = who.hidden,
        guests = who.guests,
        guest_word = agreeing(who.guests, "guests", "guest", "guests"),
        bots = who.bots,
        bot_word = agreeing(who.bots, "bots", "bot", "bots"),
        here = who.here,
        peak = who.peak.online,
        peak_at = utc(who.peak.at),
        member_names = escape(&members),
        browsing = escape(&browsing),
        chat = if cfg!(feature = "demo-chat") {
            r#"<a href="/chat">Chat</a> · "#
        } else {
            ""
        },
    ))
}

async fn home(State(demo): State<Arc<Demo>>, headers: HeaderMap) -> Html<String> {
    let paths: Vec<String> = (1..=TOPICS.len()).map(|n| format!("/topic/{n}")).collect();
    let asked: Vec<&str> = paths.iter().map(String::as_str).collect();
    let who = demo.who("/", &asked).await;
    let mut body = String::from("<ul>");
    for ((path, (title, _)), viewing) in paths.iter().zip(TOPICS).zip(&who.pages) {
        let _ = write!(
            body,
            r#"<li><a href="{path}">{}</a> (<span data-presence-page="{path}">{viewing}</span> viewing)</li>"#,
            escape(title)
        );
    }
    body.push_str("</ul>");
    page(&headers, "/", "Forum index", &body, &who, &demo.script_tag)
}

async fn topic(
    State(demo): State<Arc<Demo>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let found = id
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| TOPICS.get(i));
    match found {
        Some((title, text)) => {
            let path = format!("/topic/{id}");
            let who = demo.who(&path, &[]).await;
            let body = format!("<p>{}</p>", escape(text));
            page(&headers, &path, title, &body, &who, &demo.script_tag).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such topic").into_response(),
    }
}

#[derive(Deserialize)]
struct AdminQuery {
    from: Option<String>,
}

/// The sessions, [`ADMIN_PAGE`] a page, in the tracker's storage order: each page costs
/// its 100 sessions, not all of them (`?from=` is the cursor of the next page). In cluster
/// mode, the list is this node's sessions (those it can end); the numbers are the cluster's.
async fn admin(
    State(demo): State<Arc<Demo>>,
    Query(query): Query<AdminQuery>,
    headers: HeaderMap,
) -> Html<String> {
    // A cursor that does not parse (edited by hand) starts over.
    let from = query
        .from
        .as_deref()
        .and_then(|c| c.parse::<SessionCursor>().ok());
    let (mut sessions, next) = demo
        .presence
        .sessions_page(from.unwrap_or(SessionCursor::START), ADMIN_PAGE);
    sessions.sort_by_key(|s| std::cmp::Reverse(s.last_seen));
    let who = demo.who("/admin", &[]).await;
    let mut body = history_chart(&demo.history(), who.peak, SystemTime::now(), who.online);
    let online = count(who.sessions, "session", "sessions");
    match who.cluster {
        None => {
            let _ = write!(body, r#"<p id="showing">{online} online"#);
        }
        Some(_) => {
            let _ = write!(
                body,
                r#"<p class="note">The chart is the cluster's count, as this node sampled it since it started.</p>
<p id="showing">{online} online in the cluster, {} on this node"#,
                demo.presence.counts().sessions
            );
        }
    }
    let _ = write!(body, "; {} on this page.", sessions.len());
    if from.is_some() {
        body.push_str(r#" <a id="first" href="/admin">First page</a>"#);
    }
    if let Some(next) = next {
        let _ = write!(
            body,
            r#" <a id="next" href="/admin?from={next}">Next page</a>"#
        );
    }
    body.push_str(
        "</p><table id=\"sessions\"><tr><th>session</th><th>kind</th><th>page</th>\
         <th>last seen</th><th>state</th><th></th></tr>",
    );
    for s in &sessions {
        let kind = match &s.kind {
            Kind::Guest => "guest".to_owned(),
            Kind::Bot => "bot".to_owned(),
            Kind::Member(user) => format!("member {}", escape(user)),
            Kind::HiddenMember(user) => format!("hidden member {}", escape(user)),
            #[allow(unreachable_patterns)]
            other => escape(&format!("{other:?}")),
        };
        let state = match s.state {
            SessionState::Active => "active".to_owned(),
            SessionState::Idle => format!("idle since {}", ago(s.last_active)),
            #[allow(unreachable_patterns)]
            _ => "?".to_owned(),
        };
        let _ = write!(
            body,
            r#"<tr><td><code>{id}</code></td><td>{kind}</td><td>{page}</td><td>{seen}</td><td>{state}</td>
<td><form method="post" action="/admin/kill"><input type="hidden" name="id" value="{id}"><button type="submit">kill</button></form></td></tr>"#,
            id = s.id,
            page = escape(s.page.as_deref().unwrap_or("-")),
            seen = ago(s.last_seen),
        );
    }
    body.push_str("</table>");
    page(
        &headers,
        "/admin",
        "Sessions",
        &body,
        &who,
        &demo.script_tag,
    )
}

#[derive(Deserialize)]
struct KillForm {
    id: String,
}

async fn kill(State(demo): State<Arc<Demo>>, Form(form): Form<KillForm>) -> Redirect {
    if let Ok(id) = form.id.parse::<SessionId>() {
        demo.presence.leave(id);
    }
    Redirect::to("/admin")
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    #[serde(default)]
    back: String,
}

#[derive(Deserialize)]
struct BackForm {
    #[serde(default)]
    back: String,
}

/// Whether `path` is a path on this site that is safe to redirect to: a single leading
/// `/` (`//host` and `/\host` point to another site), no backslash, no control character (a
/// `Location` header cannot carry one).
fn same_site_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
}

/// Where to go after a form: the page it came from if that is a path on this site (the
/// form's `back`, else the `Referer`), otherwise the index.
fn back_to(back: &str, headers: &HeaderMap) -> Redirect {
    if same_site_path(back) {
        return Redirect::to(back);
    }
    let referer = headers.get(REFERER).and_then(|v| v.to_str().ok());
    let path = referer
        .and_then(|r| r.split_once("://"))
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .filter(|p| same_site_path(p));
    Redirect::to(path.unwrap_or("/"))
}

fn cookie_header(name: &str, value: String, remove: bool) -> (axum::http::HeaderName, String) {
    let mut cookie = Cookie::build((name, value))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .build();
    if remove {
        cookie.make_removal();
    }
    (SET_COOKIE, cookie.encoded().to_string())
}

async fn login(headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let back = back_to(&form.back, &headers);
    match valid_name(&form.name) {
        Some(name) => ([cookie_header(USER_COOKIE, name, false)], back).into_response(),
        None => back.into_response(),
    }
}

async fn logout(headers: HeaderMap, Form(form): Form<BackForm>) -> Response {
    // Appended, not inserted: two `Set-Cookie` headers, or the second would replace the
    // first and the user would stay signed in.
    (
        AppendHeaders([
            cookie_header(USER_COOKIE, String::new(), true),
            cookie_header(HIDDEN_COOKIE, String::new(), true),
        ]),
        back_to(&form.back, &headers),
    )
        .into_response()
}

async fn toggle_hidden(headers: HeaderMap, Form(form): Form<BackForm>) -> Response {
    let hidden = signed_in(&headers).is_some_and(|(_, hidden)| hidden);
    let set = if hidden {
        cookie_header(HIDDEN_COOKIE, String::new(), true)
    } else {
        cookie_header(HIDDEN_COOKIE, "1".to_owned(), false)
    };
    ([set], back_to(&form.back, &headers)).into_response()
}

/// Logs to stderr through `tracing`, filtered by `RUST_LOG` (see the module docs).
///
/// `RUST_LOG` is read as `target=level` directives (`Targets`), not with `EnvFilter`: that
/// one needs a regex engine, which would add to the build of every example, the README's
/// first command included.
fn log_to_stderr() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    const DEFAULT: &str = "warn,presence_tracker=info,whos_online=info";
    let default = || {
        DEFAULT
            .parse::<Targets>()
            .expect("the default filter parses")
    };
    let (filter, refused) = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => match directives.parse::<Targets>() {
            Ok(filter) => (filter, None),
            Err(err) => (default(), Some((directives, err))),
        },
        _ => (default(), None),
    };
    let installed = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .try_init();
    if installed.is_ok() {
        if let Some((directives, err)) = refused {
            tracing::warn!(
                "ignoring RUST_LOG={directives:?} ({err}): expected target=level directives; logging {DEFAULT}"
            );
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    log_to_stderr();
    match serve().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // One line a person can act on, not a `Debug` dump.
        Err(message) => {
            eprintln!("whos_online: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The demo node, from start to a graceful stop; `Err` is a startup problem, said in one line.
// The end-to-end tests compile this file into a crate without a `demo-metrics` feature.
#[allow(unexpected_cfgs)]
async fn serve() -> Result<(), String> {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p
            .trim()
            .parse()
            .map_err(|_| format!("PORT={p:?} is not a port number (1 to 65535)"))?,
        Err(_) => 3000,
    };
    // Listening first: a second process on a port in use stops here, before it touches the
    // snapshot file of the node that runs there.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|err| {
            format!("cannot listen on 127.0.0.1:{port}: {err} (set PORT to a free port)")
        })?;
    let redis_url = std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    #[cfg(not(feature = "redis"))]
    if redis_url.is_some() {
        tracing::warn!(
            "REDIS_URL is set, but this build has no cluster mode: a single node \
             (run with --features axum,redis)"
        );
    }
    // Cluster nodes share one key from the environment, so that each accepts the others'
    // cookies; a single node keeps its own beside its snapshot.
    let snapshot = snapshot_path(port);
    let key = match std::env::var("PRESENCE_SIGNING_KEY") {
        Ok(secret) => {
            Key::try_from(secret.as_bytes()).map_err(|e| format!("PRESENCE_SIGNING_KEY: {e}"))?
        }
        Err(_) if cfg!(feature = "redis") && redis_url.is_some() => {
            return Err(
                "cluster mode (REDIS_URL) needs PRESENCE_SIGNING_KEY, the same secret of \
                 at least 64 bytes on every node, so that each accepts the others' cookies: \
                 export PRESENCE_SIGNING_KEY=$(head -c 48 /dev/urandom | base64)"
                    .to_owned(),
            );
        }
        Err(_) => signing_key(snapshot.as_deref()),
    };
    // The recorder first, so that it sees every session from the start.
    #[cfg(feature = "demo-metrics")]
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|err| format!("cannot serve /metrics: {err}"))?;
    let presence = presence_from_env(port);
    if let Some(path) = &snapshot {
        println!(
            "snapshot {}: {} at start",
            path.display(),
            count(presence.counts().sessions, "session", "sessions")
        );
    }
    let interval = env_secs("PRESENCE_HEARTBEAT_INTERVAL");
    #[allow(unused_mut)]
    let mut view = View::Node;
    #[cfg(feature = "redis")]
    if let Some(url) = redis_url {
        let cluster = presence_tracker::cluster::Cluster::builder(url)
            .namespace("whos_online")
            .start(&presence)
            .await
            .map_err(|err| format!("REDIS_URL: {err}"))?;
        println!(
            "cluster mode: node {} in namespace whos_online on REDIS_URL",
            cluster.node_id()
        );
        view = View::Cluster(cluster);
    }
    let app = node_app(presence.clone(), interval, key, view.clone());
    #[cfg(feature = "demo-metrics")]
    let app = {
        let view = view.clone();
        app.route(
            "/metrics",
            get(move || {
                let (view, metrics) = (view.clone(), metrics.clone());
                async move {
                    // Cluster mode: the cluster's numbers as `presence_cluster_*` gauges, set
                    // from the cached view at each scrape (this node's own `presence_*`
                    // metrics stay as they are: they are what this node did).
                    #[cfg(feature = "redis")]
                    if let View::Cluster(cluster) = &view {
                        let c = cluster.counts();
                        for (name, value) in [
                            ("presence_cluster_online", c.online),
                            ("presence_cluster_members", c.members),
                            ("presence_cluster_hidden", c.hidden),
                            ("presence_cluster_guests", c.guests),
                            ("presence_cluster_bots", c.bots),
                            ("presence_cluster_sessions", c.sessions),
                            ("presence_cluster_nodes", c.nodes),
                            ("presence_cluster_peak", c.peak.online),
                            ("presence_cluster_stale", usize::from(c.stale)),
                        ] {
                            metrics::gauge!(name).set(value as f64);
                        }
                    }
                    let _ = &view;
                    metrics.render()
                }
            }),
        )
    };
    let addr = listener
        .local_addr()
        .map_err(|err| format!("cannot listen: {err}"))?;
    println!("who's online demo on http://{addr}/");
    // Save as soon as the signal comes, then drain the connections for a bounded time:
    // axum's graceful shutdown waits for every connection, and one client that never ends
    // its request would otherwise keep the save from ever running (until SIGKILL).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let mut stopped = stopped;
                let _ = stopped.wait_for(|s| *s).await;
            })
            .into_future(),
    );
    shutdown_signal().await;
    save(&presence);
    // The presence streams end (pages poll and retry), so the drain does not wait on them.
    presence.shutdown();
    let _ = stop.send(true);
    let drain = env_secs("PRESENCE_DRAIN_SECS").unwrap_or(Duration::from_secs(10));
    match tokio::time::timeout(drain, server).await {
        Ok(Ok(Ok(()))) => save(&presence), // what changed during the drain
        Ok(Ok(Err(err))) => return Err(format!("serving stopped: {err}")),
        Ok(Err(err)) => return Err(format!("serving stopped: {err}")),
        Err(_) => println!("connections still open after {drain:?}: closed"),
    }
    // With a snapshot just saved, the cluster keeps this node's sessions for its restart.
    #[cfg(feature = "redis")]
    if let View::Cluster(cluster) = &view {
        cluster.shutdown().await;
    }
    Ok(())
}

/// Saves who is online for the next start (nothing without a snapshot file).
fn save(presence: &Presence) {
    match presence.save_snapshot() {
        Ok(()) => println!(
            "saved {}",
            count(presence.counts().sessions, "session", "sessions")
        ),
        Err(err) if err.kind() == std::io::ErrorKind::InvalidInput => {}
        Err(err) => tracing::error!("snapshot not saved: {err}"),
    }
}

/// Ctrl-C, or SIGTERM (what a service manager or a container runtime sends).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    println!("shutting down");
}

/// The chat room: one page, one WebSocket per open page, presence held by the socket.
///
/// The socket holds the visitor's session on the room's page (`Presence::hold`): online
/// while it is open, with no heartbeat, and gone `hold_grace` after it closes unless the page
/// comes back. The room's members, and who joins or leaves, come from
/// `Presence::watch_page`: pushed, coalesced, the names of listed members (users, not tabs;
/// hidden users never), guests counted. The socket is kept honest with pings: one that
/// stops answering is closed, so a half-open connection keeps no ghost in the room.
#[cfg(feature = "demo-chat")]
mod chat {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::extract::State;
    use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
    use axum::http::HeaderMap;
    use axum::response::{Html, IntoResponse, Response};
    use presence_tracker::http::PresenceSession;
    use presence_tracker::{Kind, PageDiff, PageWatch, SessionId};
    use serde::Serialize;

    use super::{Demo, GUESTS, NAMES, escape, kind_of, name_list};

    /// The room's page: where its sessions are held.
    pub(crate) const PAGE: &str = "/chat";
    /// The longest message, in characters; longer ones are cut.
    const MAX_MESSAGE: usize = 500;
    /// A ping this often; a socket silent for three of them is closed.
    const PING: Duration = Duration::from_secs(20);

    /// A message said in the room.
    #[derive(Clone, Debug)]
    pub(crate) struct Said {
        from: String,
        text: String,
    }

    /// What the page is sent.
    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Out<'a> {
        /// Who is in the room ("alice, bob and 2 guests"), and who came or went.
        Room {
            text: String,
            count: usize,
            joined: &'a [presence_tracker::UserId],
            left: &'a [presence_tracker::UserId],
        },
        Said {
            from: &'a str,
            text: &'a str,
        },
    }

    pub(crate) async fn page(State(demo): State<Arc<Demo>>, headers: HeaderMap) -> Html<String> {
        let who = demo.who(PAGE, &[]).await;
        let body = format!(
            r#"<p>In this room: <b id="room">{}</b></p>
<ul id="chat-log" class="note"></ul>
<form id="say"><input id="message" maxlength="{MAX_MESSAGE}" placeholder="say something" autocomplete="off">
<button id="send" type="submit">Send</button></form>
{CHAT_SCRIPT}"#,
            escape(&name_list(&who.page_names, who.here, GUESTS)),
        );
        super::page(&headers, PAGE, "Chat", &body, &who, &demo.script_tag)
    }

    pub(crate) async fn socket(
        State(demo): State<Arc<Demo>>,
        PresenceSession(id): PresenceSession,
        headers: HeaderMap,
        upgrade: WebSocketUpgrade,
    ) -> Response {
        let kind = kind_of(&headers);
        upgrade
            .max_message_size(4 * MAX_MESSAGE)
            .on_upgrade(move |socket| chat(demo, id, kind, socket))
            .into_response()
    }

    /// One open socket: holds its session in the room until it closes.
    async fn chat(demo: Arc<Demo>, id: SessionId, kind: Kind, mut socket: WebSocket) {
        let presence = &demo.presence;
        let (hold, mut room) = match (
            presence.hold(id, kind.clone(), PAGE),
            presence.watch_page(PAGE),
        ) {
            (Ok(hold), Ok(room)) => (hold, room),
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!("chat refused: {err}");
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        };
        let name = match &kind {
            Kind::Member(user) => user.to_string(),
            Kind::HiddenMember(_) => "someone (hidden)".to_owned(),
            _ => "a guest".to_owned(),
        };
        let mut said = demo.chat.subscribe();
        let mut ping = tokio::time::interval(PING);
        let mut silent = 0;
        // The room as it is, then what changes.
        if send_room(&mut socket, &room, &PageDiff::default(), room.count())
            .await
            .is_err()
        {
            return;
        }
        loop {
            tokio::select! {
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        silent = 0;
                        // Input: the visitor is active, not idle.
                        if !hold.is_live() || !hold.activity() {
                            break; // ended by an admin: the page reconnects on its own
                        }
                        let text: String = text.trim().chars().take(MAX_MESSAGE).collect();
                        if !text.is_empty() {
                            let _ = demo.chat.send(Said { from: name.clone(), text });
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => silent = 0, // pongs and pings
                },
                diff = room.changed() => {
                    if !hold.is_live()
                        || send_room(&mut socket, &room, &diff, diff.count).await.is_err()
                    {
                        break; // ended by an admin, or the page went
                    }
                }
                message = said.recv() => match message {
                    Ok(Said { from, text }) => {
                        let out = Out::Said { from: &from, text: &text };
                        if send(&mut socket, &out).await.is_err() {
                            break;
                        }
                    }
                    // Too slow for the room: skips ahead.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                _ = ping.tick() => {
                    silent += 1;
                    if silent > 3 || socket.send(Message::Ping(Default::default())).await.is_err() {
                        break; // no answer: a half-open connection keeps no ghost here
                    }
                }
            }
        }
        // The hold goes with the socket: the visitor leaves after the grace unless the
        // page reconnects.
        drop(hold);
    }

    async fn send_room(
        socket: &mut WebSocket,
        room: &PageWatch,
        diff: &PageDiff,
        count: usize,
    ) -> Result<(), axum::Error> {
        let names = room.members(NAMES);
        let out = Out::Room {
            text: name_list(&names, count, GUESTS),
            count,
            joined: &diff.joined,
            left: &diff.left,
        };
        send(socket, &out).await
    }

    async fn send(socket: &mut WebSocket, out: &Out<'_>) -> Result<(), axum::Error> {
        let json = serde_json::to_string(out).unwrap_or_default();
        socket.send(Message::Text(json.into())).await
    }

    /// The page's side: one socket while the page is shown, closed on `pagehide` (so the
    /// back/forward cache keeps the page) and opened again when it comes back; reconnects
    /// after a lost connection. Everything is written as text.
    const CHAT_SCRIPT: &str = r#"<script>
(function () {
  var log = document.getElementById('chat-log');
  var room = document.getElementById('room');
  var socket = null, shown = true;
  function line(text, cls) {
    var li = document.createElement('li');
    li.textContent = text;
    li.className = cls;
    log.appendChild(li);
    while (log.children.length > 50) log.removeChild(log.firstChild);
  }
  function connect() {
    if (socket || !shown) return;
    var s = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/chat/ws');
    socket = s;
    s.onmessage = function (e) {
      var m;
      try { m = JSON.parse(e.data); } catch (err) { return; }
      if (m.type === 'room') {
        room.textContent = m.text;
        m.joined.forEach(function (n) { line(n + ' joined', 'joined'); });
        m.left.forEach(function (n) { line(n + ' left', 'left'); });
      } else if (m.type === 'said') {
        line(m.from + ': ' + m.text, 'said');
      }
    };
    s.onclose = function () {
      if (socket === s) socket = null;
      setTimeout(connect, 2000);
    };
  }
  document.getElementById('say').addEventListener('submit', function (e) {
    e.preventDefault();
    var input = document.getElementById('message');
    if (socket && socket.readyState === 1 && input.value.trim()) {
      socket.send(input.value);
      input.value = '';
    }
  });
  window.addEventListener('pagehide', function () {
    shown = false;
    if (socket) socket.close();
    socket = null;
  });
  window.addEventListener('pageshow', function (e) {
    shown = true;
    if (e.persisted) connect();
  });
  connect();
})();
</script>"#;
}
