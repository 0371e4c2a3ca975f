//! What do open presence streams cost a server, against pages that poll for the same
//! freshness? Not a criterion bench: one server, real TCP on loopback, thousands of
//! connections.
//!
//! The server (this process: the tracker, the presence routes and the layer on a tokio
//! runtime with two workers) and its clients run in two processes, so that the server's
//! CPU time (`/proc/self/stat`) and its heap (a counting global allocator; the kernel's
//! socket buffers are not counted) are its own. This binary runs itself again with
//! `PRESENCE_STREAMS_CHILD=<mode> <n> <addr>` for the clients:
//!
//! - `stream`: `n` tabs, each holding `GET /presence/stream?page=/` open (one connection
//!   each) and reading its events;
//! - `poll:<ms>`: `n` tabs, each reading `GET /presence/counts?page=/` every `<ms>` on its
//!   own keep-alive connection (the polling script's reads at that freshness).
//!
//! For each it reports the server's heap per tab once all are connected, its CPU while
//! nothing changes, and its CPU under 100 joins and leaves a second (50 of each, on the
//! tabs' page). For streams it also reports the latency from a join (and from a tab's
//! goodbye, `POST /presence/leave`, which takes effect after the 2 s leave grace) to the
//! event in every open stream: p50 and p99 over all streams and several changes.
//!
//! `ulimit -n` must allow `n` sockets per process (each has its own). Run:
//!
//! ```text
//! ulimit -n 20000; cargo bench -p presence-tracker-testbed --bench streams
//! ```
//!
//! `PRESENCE_STREAMS_TABS=1000,10000` sets the sizes (default: those two for streams, the
//! largest for polling); `PRESENCE_STREAMS_POLL=500,2000` the polling intervals in ms
//! (default those two; empty: no polling run). Without `--bench` (`cargo test --benches`) it runs once on 50 tabs.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use presence_tracker::http::{PresenceLayer, Routes};
use presence_tracker::{Kind, Presence, SessionId};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tower::ServiceExt;

mod common;
use common::{Counting, full_scale};

const CHILD_ENV: &str = "PRESENCE_STREAMS_CHILD";
const TABS_ENV: &str = "PRESENCE_STREAMS_TABS";
const POLL_ENV: &str = "PRESENCE_STREAMS_POLL";
const PAGE: &str = "/";

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// CPU seconds (user + system) this process used so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces), from its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the command.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return child(&spec);
    }
    if !cfg!(target_os = "linux") {
        println!("streams: Linux only (it reads /proc); skipped");
        return;
    }
    let full = full_scale();
    let sizes: Vec<usize> = match std::env::var(TABS_ENV) {
        Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
        Err(_) if full => vec![1000, 10_000],
        Err(_) => vec![50],
    };
    let limit = open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for &n in &sizes {
            if n + 200 > limit {
                println!("streams: {n} tabs need `ulimit -n` above {n} (now {limit}); skipped");
                continue;
            }
            run(n, Mode::Stream, full).await;
        }
        let n = sizes
            .iter()
            .copied()
            .max()
            .unwrap_or(50)
            .min(limit.saturating_sub(200));
        let polls: Vec<u64> = match std::env::var(POLL_ENV) {
            Ok(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
            Err(_) => vec![500, 2000],
        };
        for every in polls {
            run(n, Mode::Poll(every), full).await;
        }
    });
}

fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Stream,
    /// Reads every that many milliseconds.
    Poll(u64),
}

impl Mode {
    fn spec(self) -> String {
        match self {
            Mode::Stream => "stream".to_owned(),
            Mode::Poll(ms) => format!("poll:{ms}"),
        }
    }
}

/// The server under test, listening on loopback.
async fn serve() -> (Presence, Router, SocketAddr) {
    let presence = Presence::builder()
        .idle_timeout(Duration::from_secs(3600))
        .build();
    let app = Router::new()
        .merge(Routes::new(presence.clone()).max_streams(50_000))
        .layer(PresenceLayer::new(presence.clone()).secure(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = app.clone();
    tokio::spawn(async move { axum::serve(listener, served).await });
    (presence, app, addr)
}

async fn run(n: usize, mode: Mode, full: bool) {
    let (presence, app, addr) = serve().await;
    // Some visitors already there, as on a real site: 1000 guests and 100 members.
    for i in 0..1100 {
        let kind = if i < 100 {
            Kind::member(format!("member{i}"))
        } else {
            Kind::Guest
        };
        presence.visit(SessionId::new_v4(), kind, PAGE).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let heap_before = common::live_bytes() as isize;

    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(exe)
        .env(CHILD_ENV, format!("{} {n} {addr}", mode.spec()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = Instant::now();
    let ready = from_child.next_line().await.unwrap().unwrap_or_default();
    assert_eq!(ready, "ready", "the clients could not connect");
    let connected = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let heap = common::live_bytes() as isize - heap_before;
    let window = Duration::from_secs(if full { 10 } else { 1 });

    // CPU with nothing changing (polling tabs still poll).
    let answered = count(&mut to_child, &mut from_child).await;
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(window).await;
    let idle = (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    let rate = (count(&mut to_child, &mut from_child).await - answered) as f64
        / t0.elapsed().as_secs_f64();

    // CPU under 100 joins and leaves a second.
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut live = std::collections::VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while t0.elapsed() < window {
        tick.tick().await;
        let id = SessionId::new_v4();
        presence.visit(id, Kind::Guest, PAGE).unwrap();
        live.push_back(id);
        if live.len() > 20 {
            presence.leave(live.pop_front().unwrap());
        }
    }
    let busy = (cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    for id in live {
        presence.leave(id);
    }

    let label = match mode {
        Mode::Stream => format!("{n} streams"),
        Mode::Poll(ms) => format!("{n} tabs polling every {ms} ms"),
    };
    let requests = match mode {
        Mode::Stream => String::new(),
        Mode::Poll(_) => format!(" ({rate:.0} requests/s answered)"),
    };
    println!(
        "{label}: connected in {:.1} s; server heap {:.2} KiB a tab; server CPU idle \
         {:.1}%{requests}, at 100 joins+leaves/s {:.1}%",
        connected.as_secs_f64(),
        heap as f64 / n as f64 / 1024.0,
        idle * 100.0,
        busy * 100.0
    );

    if let Mode::Stream = mode {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let marks = if full { 10 } else { 2 };
        // Joins: a new visitor on the page.
        // Spaced unevenly, so that the changes fall anywhere between two publishes.
        let mut rng = common::SplitMix(17);
        for _ in 0..marks {
            mark(&mut to_child, &mut from_child, "join").await;
            presence
                .visit(SessionId::new_v4(), Kind::Guest, PAGE)
                .unwrap();
            let pause = 1500 + rng.below(500) as u64;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        report(&mut to_child, &mut from_child, &label, "join").await;
        // Closes: a visitor's goodbye (the leave beacon), through the routes.
        let closing: Vec<SessionId> = (0..marks).map(|_| SessionId::new_v4()).collect();
        for &id in &closing {
            presence.visit(id, Kind::Guest, PAGE).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for &id in &closing {
            mark(&mut to_child, &mut from_child, "close").await;
            let leave = Request::builder()
                .method("POST")
                .uri("/presence/leave")
                .header("cookie", format!("presence_id={id}"))
                .body(Body::empty())
                .unwrap();
            app.clone().oneshot(leave).await.unwrap();
            let pause = 3500 + rng.below(500) as u64;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        report(&mut to_child, &mut from_child, &label, "close").await;
    }
    to_child.write_all(b"quit\n").await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    presence.shutdown();
}

/// Tells the clients a change is coming now, and waits until they know.
async fn mark(
    to_child: &mut tokio::process::ChildStdin,
    from_child: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    what: &str,
) {
    to_child
        .write_all(format!("mark {what} {}\n", unix_nanos()).as_bytes())
        .await
        .unwrap();
    let ack = from_child.next_line().await.unwrap().unwrap_or_default();
    assert_eq!(ack, "ok");
}

/// Responses the polling tabs received so far.
async fn count(
    to_child: &mut tokio::process::ChildStdin,
    from_child: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> u64 {
    to_child.write_all(b"count\n").await.unwrap();
    let line = from_child.next_line().await.unwrap().unwrap_or_default();
    line.trim().parse().unwrap_or(0)
}

async fn report(
    to_child: &mut tokio::process::ChildStdin,
    from_child: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    label: &str,
    what: &str,
) {
    to_child
        .write_all(format!("report {what}\n").as_bytes())
        .await
        .unwrap();
    let line = from_child.next_line().await.unwrap().unwrap_or_default();
    println!("{label}: {what} -> event in every stream: {line}");
}

// ---- The clients (the child process) -------------------------------------------------

/// What the stream readers share: the mark (when a change was made) and the latencies seen.
#[derive(Default)]
struct Marks {
    /// Unix nanoseconds of the last mark; each stream counts its first change after it.
    at: AtomicU64,
    latencies: parking_lot::Mutex<Vec<u64>>,
    /// Responses the polling tabs received.
    answered: AtomicU64,
}

fn child(spec: &str) {
    let mut parts = spec.split_whitespace();
    let mode = parts.next().unwrap_or("stream").to_owned();
    let n: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(10);
    let addr: SocketAddr = parts.next().unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let marks = Arc::new(Marks::default());
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n.max(1));
        // Connections a few hundred at a time: the listen backlog is finite.
        let gate = Arc::new(tokio::sync::Semaphore::new(256));
        for i in 0..n {
            let (marks, ready, gate, mode) =
                (marks.clone(), ready_tx.clone(), gate.clone(), mode.clone());
            tokio::spawn(async move {
                let permit = gate.acquire_owned().await.unwrap();
                let id = SessionId::new_v4();
                if mode == "stream" {
                    stream_tab(addr, id, marks, ready, permit).await;
                } else {
                    let every = mode
                        .strip_prefix("poll:")
                        .and_then(|m| m.parse().ok())
                        .unwrap_or(2000);
                    // Spread over the interval, as real tabs are.
                    let phase = Duration::from_millis(every * i as u64 / n as u64);
                    poll_tab(addr, id, every, phase, marks, ready, permit).await;
                }
            });
        }
        drop(ready_tx);
        for _ in 0..n {
            if ready_rx.recv().await.is_none() {
                break;
            }
        }
        println!("ready");
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let mut by_kind: std::collections::HashMap<String, Vec<u64>> = Default::default();
        let mut current = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["mark", what, at] => {
                    let done = std::mem::take(&mut *marks.latencies.lock());
                    by_kind.entry(current.clone()).or_default().extend(done);
                    current = (*what).to_owned();
                    marks.at.store(at.parse().unwrap(), Ordering::SeqCst);
                    println!("ok");
                }
                ["report", what] => {
                    let done = std::mem::take(&mut *marks.latencies.lock());
                    by_kind.entry(current.clone()).or_default().extend(done);
                    let mut all = by_kind.remove(*what).unwrap_or_default();
                    all.sort_unstable();
                    let pct = |p: f64| {
                        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                            .map_or(0.0, |&ns| ns as f64 / 1e6)
                    };
                    println!(
                        "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms over {} events",
                        pct(0.50),
                        pct(0.99),
                        pct(1.0),
                        all.len()
                    );
                }
                ["count"] => println!("{}", marks.answered.load(Ordering::Relaxed)),
                ["quit"] => break,
                _ => {}
            }
        }
    });
}

/// One tab with a stream open: reads its events; after each mark, records when its
/// `online` first changed.
async fn stream_tab(
    addr: SocketAddr,
    id: SessionId,
    marks: Arc<Marks>,
    ready: tokio::sync::mpsc::Sender<()>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let Ok(mut socket) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let head = format!(
        "GET /presence/stream?page=%2F HTTP/1.1\r\nHost: localhost\r\nCookie: presence_id={id}\r\n\r\n"
    );
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending = Vec::new();
    let mut online: Option<u64> = None;
    let mut seen_mark = 0u64;
    let mut ready = Some((ready, permit));
    loop {
        let Ok(read) = socket.read(&mut buf).await else {
            return;
        };
        if read == 0 {
            return;
        }
        let now = unix_nanos();
        pending.extend_from_slice(&buf[..read]);
        // Each event's `online`, in order; only the last of a read matters.
        while let Some(end) = find(&pending, b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let Some(value) = online_of(&event) else {
                continue;
            };
            if let Some((ready, permit)) = ready.take() {
                drop(permit);
                let _ = ready.send(()).await;
            }
            let mark = marks.at.load(Ordering::SeqCst);
            if online.is_some_and(|o| o != value) && mark > seen_mark && now > mark {
                seen_mark = mark;
                marks.latencies.lock().push(now - mark);
            }
            online = Some(value);
        }
    }
}

/// One polling tab: `GET /presence/counts` every `every` ms on a keep-alive connection.
async fn poll_tab(
    addr: SocketAddr,
    id: SessionId,
    every: u64,
    phase: Duration,
    marks: Arc<Marks>,
    ready: tokio::sync::mpsc::Sender<()>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let Ok(mut socket) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let head = format!(
        "GET /presence/counts?page=%2F HTTP/1.1\r\nHost: localhost\r\nCookie: presence_id={id}\r\n\r\n"
    );
    let mut buf = vec![0u8; 16 * 1024];
    let mut ready = Some((ready, permit));
    tokio::time::sleep(phase).await;
    let mut tick = tokio::time::interval(Duration::from_millis(every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if socket.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        // One response: its head, then `Content-Length` bytes of body.
        let mut got = Vec::new();
        loop {
            let Ok(read) = socket.read(&mut buf).await else {
                return;
            };
            if read == 0 {
                return;
            }
            got.extend_from_slice(&buf[..read]);
            if let Some(end) = find(&got, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + length {
                    break;
                }
            }
        }
        marks.answered.fetch_add(1, Ordering::Relaxed);
        if let Some((ready, permit)) = ready.take() {
            drop(permit);
            let _ = ready.send(()).await;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The `"online":N` of a `counts` event.
fn online_of(event: &[u8]) -> Option<u64> {
    let key = b"\"online\":";
    let at = find(event, key)? + key.len();
    let digits: Vec<u8> = event[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}
