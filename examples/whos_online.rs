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
//! Every number in the "who is online" block follows changes within two seconds: the
//! page script reads `GET /presence/counts` every 2 s while the tab is visible (a plain
//! `fetch`, so the back/forward cache keeps working), apart from its 30 s heartbeat.
//!
//! Environment: `PORT` (default 3000, on 127.0.0.1), `PRESENCE_IDLE_TIMEOUT` (seconds,
//! default 300), `PRESENCE_HEARTBEAT_LIMIT` (seconds, default 1200),
//! `PRESENCE_HEARTBEAT_INTERVAL` (seconds, may be fractional; default: 30 or a third of
//! the idle timeout), `PRESENCE_DEMO_SEED` (a number of made-up visitors to start with, to
//! see the pages at scale: 95 % guests, 4 % members, 1 % bots, over the topics).
//!
//! Restarts keep the visitors: the tracker is saved to `PRESENCE_SNAPSHOT` (default
//! `whos_online.snapshot` in the temporary directory; empty: no snapshot) on Ctrl-C or
//! SIGTERM, after a graceful shutdown, and restored at start, with the cookie signing key
//! kept beside it (`<snapshot>.key`) so that returning browsers keep their sessions.
//! `/admin` charts "users online, last 24 hours" from `Presence::history`;
//! `PRESENCE_HISTORY_INTERVAL` (seconds, may be fractional; default 60) samples faster to
//! see the chart fill within a minute. With `--features axum,__demo_prometheus` (the
//! `metrics` feature and an exporter), `/metrics` serves the tracker's metrics in the
//! Prometheus text format.
//!
//! Cluster mode (feature `redis`): with `REDIS_URL` set, the node joins the cluster-wide view
//! on that Redis, and its counts, page counts and names are the cluster's; two processes on
//! two ports show the same numbers. Give them the same `PRESENCE_SIGNING_KEY` (at least 64
//! bytes) so that each accepts the other's cookies:
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

/// The tracker with the settings taken from the environment (see the module docs).
pub(crate) fn presence_from_env() -> Presence {
    let mut builder = Presence::builder();
    if let Some(path) = snapshot_path() {
        builder = builder.snapshot_file(path);
    }
    if let Some(interval) = env_secs("PRESENCE_HISTORY_INTERVAL") {
        builder = builder.history_interval(interval.max(Duration::from_millis(1)));
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
            eprintln!("seeding stopped after {i} visitors: {err}");
            return;
        }
    }
    println!("seeded {n} made-up visitors");
}

/// Where the tracker is saved across restarts: `PRESENCE_SNAPSHOT`, by default a file in
/// the temporary directory; `None` when set empty.
fn snapshot_path() -> Option<PathBuf> {
    match std::env::var_os("PRESENCE_SNAPSHOT") {
        Some(path) if path.is_empty() => None,
        Some(path) => Some(PathBuf::from(path)),
        None => Some(std::env::temp_dir().join("whos_online.snapshot")),
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
            Err(err) => eprintln!("ignoring {}: {err}", path.display()),
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
        eprintln!("cannot keep the signing key in {}: {err}", path.display());
    }
    Key::try_from(&secret[..]).unwrap_or_else(|_| Key::generate())
}

fn env_secs(name: &str) -> Option<Duration> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Some(Duration::from_secs_f64(secs)),
        _ => {
            eprintln!("ignoring {name}={value:?}: expected a positive number of seconds");
            None
        }
    }
}

struct Demo {
    presence: Presence,
    script_tag: String,
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
    let routes = presence_http::Routes::new(presence.clone());
    node_app(presence, heartbeat_interval, key, routes)
}

/// The forum with a given cookie key and presence routes (cluster mode attaches its
/// cluster to them).
pub(crate) fn node_app(
    presence: Presence,
    heartbeat_interval: Option<Duration>,
    key: Key,
    routes: presence_http::Routes,
) -> Router {
    let mut tag = ScriptTag::new(&presence).refresh(REFRESH);
    if let Some(interval) = heartbeat_interval {
        tag = tag.interval(interval);
    }
    let demo = Arc::new(Demo {
        presence: presence.clone(),
        script_tag: tag.to_string(),
    });
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
    Router::new()
        .route("/", get(home))
        .route("/topic/{id}", get(topic))
        .route("/admin", get(admin))
        .route("/admin/kill", post(kill))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/hide", post(toggle_hidden))
        .merge(routes.names(NAMES))
        .layer(layer)
        .with_state(demo)
}

fn classify(req: &Parts) -> Kind {
    let agent = req
        .headers
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
    match signed_in(&req.headers) {
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
/// minute) with its highest point and the all-time `peak` marked. A minute without a
/// sample (the server was down) is a gap, not a line drawn across it.
pub(crate) fn history_chart(
    history: &[(SystemTime, usize)],
    peak: presence_tracker::Peak,
    now: SystemTime,
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
    let top_value = highest.max(peak.online).max(4) as f64 * 1.1;
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
    // Now, at the right end.
    let &(_, current) = &history[history.len() - 1];
    let _ = write!(
        svg,
        r##"<text x="{}" y="20" text-anchor="end" fill="#2b6cb0">now: <tspan font-weight="bold">{current}</tspan> online · {} samples</text></svg></figure>"##,
        W - RIGHT,
        history.len()
    );
    svg
}

fn ago(time: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(time)
        .map_or(0, |d| d.as_secs());
    format!("{secs} s ago")
}

fn page(demo: &Demo, headers: &HeaderMap, path: &str, title: &str, body: &str) -> Html<String> {
    // The same lists the page script keeps up to date, each costing what it returns.
    let c = demo.presence.counts();
    let here = demo.presence.page_count(path);
    let members = name_list(&demo.presence.online_members(NAMES), c.members, MORE);
    let browsing = name_list(&demo.presence.page_members(path, NAMES), here, GUESTS);
    let place = if path.starts_with("/topic/") {
        "topic"
    } else {
        "page"
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
.stats{{background:#eef;padding:.5em 1em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.2em .5em}}</style>
</head><body>
<nav><a href="/">Forum index</a> · <a href="/admin">Admin</a> · {account}</nav>
<h1>{title}</h1>
{body}
<div class="stats" id="stats">
<h3>Who is online</h3>
<p id="totals">In total there are <b data-presence="online">{online}</b> users online ::
<span data-presence="members">{members}</span> registered,
<span data-presence="hidden">{hidden}</span> hidden and
<span data-presence="guests">{guests}</span> guests
(and <span data-presence="bots">{bots}</span> bots)</p>
<p><span id="here" data-presence="page">{here}</span> viewing this page</p>
<p>Registered users: <span id="members" data-presence-list="members">{member_names}</span></p>
<p>Users browsing this {place}: <span id="browsing" data-presence-list="page" data-presence-more="guest|guests">{browsing}</span></p>
<p>Most users ever online was <span data-presence="peak">{peak}</span> on <span data-presence="peak-at">{peak_at}</span></p>
</div>
{script}
</body></html>"#,
        title = escape(title),
        online = c.online,
        members = c.members,
        hidden = c.hidden,
        guests = c.guests,
        bots = c.bots,
        peak = c.peak.online,
        peak_at = utc(c.peak.at),
        member_names = escape(&members),
        browsing = escape(&browsing),
        script = demo.script_tag,
    ))
}

async fn home(State(demo): State<Arc<Demo>>, headers: HeaderMap) -> Html<String> {
    let mut body = String::from("<ul>");
    for (i, (title, _)) in TOPICS.iter().enumerate() {
        let path = format!("/topic/{}", i + 1);
        let viewing = demo.presence.page_count(&path);
        let _ = write!(
            body,
            r#"<li><a href="{path}">{}</a> (<span data-presence-page="{path}">{viewing}</span> viewing)</li>"#,
            escape(title)
        );
    }
    body.push_str("</ul>");
    page(&demo, &headers, "/", "Forum index", &body)
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
            let body = format!("<p>{}</p>", escape(text));
            page(&demo, &headers, &format!("/topic/{id}"), title, &body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such topic").into_response(),
    }
}

#[derive(Deserialize)]
struct AdminQuery {
    from: Option<String>,
}

/// The sessions, [`ADMIN_PAGE`] a page, in the tracker's storage order: each page costs
/// its 100 sessions, not all of them (`?from=` is the cursor of the next page).
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
    let counts = demo.presence.counts();
    let mut body = history_chart(&demo.presence.history(), counts.peak, SystemTime::now());
    let _ = write!(
        body,
        "<p id=\"showing\">{} sessions online; {} on this page.",
        counts.sessions,
        sessions.len()
    );
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
    page(&demo, &headers, "/admin", "Sessions", &body)
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

// The browser test compiles this file into a crate without the `__demo_prometheus` feature.
#[allow(unexpected_cfgs)]
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p.parse().map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad PORT {p:?}"))
        })?,
        Err(_) => 3000,
    };
    // The recorder first, so that it sees every session from the start.
    #[cfg(feature = "__demo_prometheus")]
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("no other metrics recorder is installed");
    let presence = presence_from_env();
    let snapshot = snapshot_path();
    if let Some(path) = &snapshot {
        println!(
            "snapshot {}: {} sessions online at start",
            path.display(),
            presence.counts().sessions
        );
    }
    let interval = env_secs("PRESENCE_HEARTBEAT_INTERVAL");
    // Cluster nodes share one key from the environment, so each accepts the others' cookies;
    // a single node keeps its own beside the snapshot.
    let key = match std::env::var("PRESENCE_SIGNING_KEY") {
        Ok(secret) => Key::try_from(secret.as_bytes()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("PRESENCE_SIGNING_KEY: {e}"),
            )
        })?,
        Err(_) => signing_key(snapshot.as_deref()),
    };
    #[allow(unused_mut)]
    let mut routes = presence_http::Routes::new(presence.clone());
    #[cfg(feature = "redis")]
    if let Ok(url) = std::env::var("REDIS_URL") {
        let cluster = presence_tracker::cluster::Cluster::builder(url)
            .namespace("whos_online")
            .start(&presence)
            .await
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        println!("cluster mode: node {} on REDIS_URL", cluster.node_id());
        routes = routes.cluster(cluster);
    }
    let app = node_app(presence.clone(), interval, key, routes);
    #[cfg(feature = "__demo_prometheus")]
    let app = app.route("/metrics", get(move || async move { metrics.render() }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("who's online demo on http://{}/", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // Requests are done: save who is online for the next start.
    match presence.save_snapshot() {
        Ok(()) => println!("saved {} sessions", presence.counts().sessions),
        Err(err) if err.kind() == std::io::ErrorKind::InvalidInput => {}
        Err(err) => eprintln!("snapshot not saved: {err}"),
    }
    Ok(())
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
