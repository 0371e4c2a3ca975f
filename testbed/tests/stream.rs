//! `GET /presence/stream` and `POST /presence/release` through the real service: counts
//! pushed at once and on change, the session held while a stream is open and trusted only
//! while the page makes requests, graces after a lost stream, releases and leaves naming a
//! stream, the caps, bad input, a flood, shutdown with streams open, and a cluster's view.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE};
use axum::http::{Request, Response, StatusCode};
use axum::routing::get;
use http_body_util::BodyExt;
use presence_tracker::http::{PresenceLayer, Routes};
use presence_tracker::{Event, Kind, LeaveReason, Presence, SessionId};
use tower::ServiceExt;

fn app(presence: &Presence, routes: Routes) -> Router {
    Router::new()
        .route("/", get(|| async { "home" }))
        .merge(routes)
        .layer(PresenceLayer::new(presence.clone()).secure(false))
}

fn default_app(presence: &Presence) -> Router {
    app(presence, Routes::new(presence.clone()))
}

/// A tracker publishing often, with `idle_timeout` and `hold_grace`.
fn tracker(idle_timeout: Duration, grace: Duration) -> Presence {
    Presence::builder()
        .idle_timeout(idle_timeout)
        .hold_grace(grace)
        .publish_interval(Duration::from_millis(20))
        .reap_interval(Duration::from_millis(10))
        .build()
}

fn req(method: &str, uri: &str, id: SessionId) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(COOKIE, format!("presence_id={id}"))
        .body(Body::empty())
        .unwrap()
}

async fn send(app: &Router, req: Request<Body>) -> Response<Body> {
    app.clone().oneshot(req).await.unwrap()
}

/// An open stream's body, read event by event.
struct Events {
    body: Body,
    buf: String,
}

impl Events {
    fn new(res: Response<Body>) -> Self {
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[CONTENT_TYPE], "text/event-stream");
        assert_eq!(res.headers()[CACHE_CONTROL], "no-cache");
        assert_eq!(res.headers()["x-accel-buffering"], "no");
        Events {
            body: res.into_body(),
            buf: String::new(),
        }
    }

    /// The next event (name, data) within `within`; `None` if the stream ended, and a
    /// panic if nothing came in time.
    async fn next(&mut self, within: Duration) -> Option<(String, String)> {
        match tokio::time::timeout(within, self.read()).await {
            Ok(event) => event,
            Err(_) => panic!("no event within {within:?}"),
        }
    }

    /// Whether an event comes within `within` (`false`: none came, the stream is open).
    async fn quiet_for(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, self.read()).await.is_err()
    }

    async fn read(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut name, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if name.is_empty() && data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((name, data));
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next `counts` event's JSON.
    async fn counts(&mut self, within: Duration) -> serde_json::Value {
        let (name, data) = self.next(within).await.expect("the stream ended");
        assert_eq!(name, "counts");
        serde_json::from_str(&data).unwrap()
    }

    /// Whether the stream ends within `within`.
    async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match tokio::time::timeout(deadline - Instant::now(), self.read()).await {
                Ok(None) => return true,
                Ok(Some(_)) => continue,
                Err(_) => return false,
            }
        }
        false
    }
}

/// Opens a stream for session `id` on `page`, named `name`; checks the hello.
async fn open(app: &Router, id: SessionId, page: &str, name: &str) -> Events {
    let res = send(
        app,
        req(
            "GET",
            &format!("/presence/stream?page={page}&stream={name}"),
            id,
        ),
    )
    .await;
    let mut events = Events::new(res);
    let (name, data) = events.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(name, "stream");
    let hello: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert!(hello["heartbeat"].as_u64().unwrap() > 0);
    events
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_stream_pushes_the_counts_at_once_then_only_on_change() {
    let presence = tracker(Duration::from_secs(60), Duration::from_secs(5));
    let app = default_app(&presence);
    let (me, other) = (SessionId::new_v4(), SessionId::new_v4());
    let mut events = open(&app, me, "/t/1", "a").await;
    let first = events.counts(WAIT).await;
    assert_eq!(
        (first["online"].as_u64(), first["page"].as_u64()),
        (Some(1), Some(1)),
        "{first}"
    );
    assert!(
        events.quiet_for(Duration::from_millis(300)).await,
        "nothing changed"
    );

    presence
        .visit(other, Kind::member("alice"), "/t/1")
        .unwrap();
    let next = events.counts(WAIT).await;
    assert_eq!(next["online"], 2);
    assert_eq!(next["page"], 2);
    assert_eq!(next["page_names"], serde_json::json!(["alice"]));
    assert_eq!(next["names"], serde_json::json!(["alice"]));
    // A touch changes nothing shown: nothing is sent.
    presence.touch(other, Kind::member("alice")).unwrap();
    assert!(events.quiet_for(Duration::from_millis(300)).await);
}

#[tokio::test]
async fn an_open_stream_holds_the_session_past_its_heartbeat_limit() {
    let presence = Presence::builder()
        .idle_timeout(Duration::from_secs(2))
        .heartbeat_limit(Duration::from_millis(200))
        .reap_interval(Duration::from_millis(10))
        .publish_interval(Duration::from_millis(20))
        .build();
    let app = default_app(&presence);
    let id = SessionId::new_v4();
    let mut events = open(&app, id, "/", "a").await;
    events.counts(WAIT).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(presence.session(id).is_some(), "held: no heartbeat needed");
    drop(events);
}

#[tokio::test]
async fn a_lost_stream_leaves_after_the_hold_grace_unless_the_page_comes_back() {
    let grace = Duration::from_millis(300);
    let presence = tracker(Duration::from_secs(60), grace);
    let mut rx = presence.subscribe();
    let app = default_app(&presence);
    let id = SessionId::new_v4();

    // Lost, then a new stream within the grace: the same session goes on.
    let mut events = open(&app, id, "/", "a").await;
    events.counts(WAIT).await;
    drop(events);
    tokio::time::sleep(grace / 3).await;
    let mut events = open(&app, id, "/", "b").await;
    events.counts(WAIT).await;
    tokio::time::sleep(grace * 2).await;
    assert!(presence.session(id).is_some());

    // Lost for good: Closed, after the grace.
    let dropped = Instant::now();
    drop(events);
    tokio::time::sleep(grace / 2).await;
    assert!(presence.session(id).is_some(), "within the grace");
    while presence.session(id).is_some() {
        assert!(dropped.elapsed() < WAIT, "never left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Gone for reads at once; the event comes with the next reap.
    let (mut joined, mut reasons) = (0, Vec::new());
    while reasons.is_empty() {
        match tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("no Left")
            .unwrap()
        {
            Event::Joined { .. } => joined += 1,
            Event::Left { reason, .. } => reasons.push(reason),
            _ => {}
        }
    }
    assert_eq!(
        (joined, reasons),
        (1, vec![LeaveReason::Closed]),
        "one session, one leave"
    );
}

#[tokio::test]
async fn a_stream_is_trusted_only_while_the_page_makes_requests() {
    let idle = Duration::from_millis(400);
    let presence = tracker(idle, Duration::from_secs(5));
    let app = default_app(&presence);

    // Heartbeats every 100 ms: trusted, held.
    let kept = SessionId::new_v4();
    let mut events = open(&app, kept, "/", "a").await;
    events.counts(WAIT).await;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let res = send(&app, req("POST", "/presence/heartbeat", kept)).await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }
    assert!(presence.session(kept).is_some());

    // Silent (a half-open connection): the hold goes and the stream ends, within
    // idle_timeout and a check; no grace: the session was already quiet that long.
    let ghost = SessionId::new_v4();
    let mut silent = open(&app, ghost, "/", "b").await;
    silent.counts(WAIT).await;
    assert!(
        silent.ends_within(idle * 4).await,
        "an untrusted stream ends"
    );
    assert!(presence.session(ghost).is_none(), "no ghost online");
    drop(events);
}

#[tokio::test]
async fn release_by_name_ends_the_stream_and_keeps_the_visitor_online_as_an_ordinary_session() {
    let presence = tracker(Duration::from_secs(60), Duration::from_millis(100));
    let mut rx = presence.subscribe();
    let app = default_app(&presence);
    let id = SessionId::new_v4();
    let mut events = open(&app, id, "/", "tab-1").await;
    events.counts(WAIT).await;
    let res = send(&app, req("POST", "/presence/release?stream=tab-1", id)).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(events.ends_within(WAIT).await, "released: the stream ends");
    tokio::time::sleep(Duration::from_millis(300)).await; // past the hold grace
    assert!(presence.session(id).is_some(), "a hidden tab stays online");
    assert_eq!(presence.session(id).unwrap().page.as_deref(), Some("/"));
    while let Ok(event) = rx.try_recv() {
        assert!(!matches!(event, Event::Left { .. }), "{event:?}");
    }
    // Releasing a stream that is gone, or a name never used, is harmless.
    for name in ["tab-1", "nope", "bad%20name!", &"x".repeat(5000)] {
        let uri = format!("/presence/release?stream={name}");
        let res = send(&app, req("POST", &uri, id)).await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "{name}");
    }
}

#[tokio::test]
async fn a_leave_naming_the_stream_takes_the_visitor_offline_after_the_leave_grace() {
    let presence = tracker(Duration::from_secs(60), Duration::from_secs(30));
    let app = app(
        &presence,
        Routes::new(presence.clone()).leave_grace(Duration::from_millis(200)),
    );
    let id = SessionId::new_v4();
    let mut events = open(&app, id, "/", "tab").await;
    events.counts(WAIT).await;
    let left = Instant::now();
    let res = send(&app, req("POST", "/presence/leave?page=/&stream=tab", id)).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    while presence.session(id).is_some() {
        assert!(left.elapsed() < WAIT, "the leave never took effect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        left.elapsed() < Duration::from_secs(2),
        "left through the leave, not the 30 s hold grace"
    );
    assert!(events.ends_within(WAIT).await);
}

#[tokio::test]
async fn a_release_arriving_after_the_leave_does_not_cancel_it() {
    // A closing tab sends its release (on hide) and its leave (on pagehide): in either
    // order the visitor goes.
    let presence = tracker(Duration::from_secs(60), Duration::from_secs(30));
    let app = app(
        &presence,
        Routes::new(presence.clone()).leave_grace(Duration::from_millis(200)),
    );
    for release_first in [true, false] {
        let id = SessionId::new_v4();
        let mut events = open(&app, id, "/", "tab").await;
        events.counts(WAIT).await;
        let release = req("POST", "/presence/release?stream=tab", id);
        let leave = req("POST", "/presence/leave?page=/", id);
        let (first, second) = if release_first {
            (release, leave)
        } else {
            (leave, release)
        };
        send(&app, first).await;
        send(&app, second).await;
        let left = Instant::now();
        while presence.session(id).is_some() {
            assert!(left.elapsed() < WAIT, "release first: {release_first}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn a_leave_from_one_tab_keeps_a_visitor_whose_other_tab_streams() {
    let presence = tracker(Duration::from_secs(60), Duration::from_secs(30));
    let app = app(
        &presence,
        Routes::new(presence.clone()).leave_grace(Duration::from_millis(100)),
    );
    let id = SessionId::new_v4();
    let mut one = open(&app, id, "/", "one").await;
    let mut two = open(&app, id, "/", "two").await;
    one.counts(WAIT).await;
    two.counts(WAIT).await;
    send(&app, req("POST", "/presence/leave?page=/&stream=one", id)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(presence.session(id).is_some(), "tab two still streams");
    assert!(one.ends_within(WAIT).await);
    drop(two);
}

#[tokio::test]
async fn streams_are_capped_per_session_and_in_all() {
    let presence = tracker(Duration::from_secs(60), Duration::from_secs(5));
    let app = app(&presence, Routes::new(presence.clone()).max_streams(6));
    let id = SessionId::new_v4();
    let mut open_ones = Vec::new();
    for n in 0..4 {
        open_ones.push(open(&app, id, "/", &format!("s{n}")).await);
    }
    let res = send(&app, req("GET", "/presence/stream?stream=s5", id)).await;
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a fifth for one session"
    );
    let other = SessionId::new_v4();
    open_ones.push(open(&app, other, "/", "a").await);
    open_ones.push(open(&app, other, "/", "b").await);
    let res = send(&app, req("GET", "/presence/stream", SessionId::new_v4())).await;
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "max_streams in all"
    );
    // A closed stream gives its place back.
    open_ones.pop();
    tokio::task::yield_now().await;
    open_ones.push(open(&app, SessionId::new_v4(), "/", "c").await);
}

#[tokio::test]
async fn one_session_asking_for_a_thousand_streams_gets_four() {
    let presence = tracker(Duration::from_secs(60), Duration::from_secs(5));
    let app = default_app(&presence);
    let id = SessionId::new_v4();
    let mut ok = Vec::new();
    let mut refused = 0;
    for n in 0..1000 {
        let res = send(
            &app,
            req("GET", &format!("/presence/stream?stream=s{n}"), id),
        )
        .await;
        match res.status() {
            StatusCode::OK => ok.push(res),
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("{other}"),
        }
    }
    assert_eq!((ok.len(), refused), (4, 996));
    assert_eq!(presence.counts().sessions, 1);
    drop(ok);
    tokio::task::yield_now().await;
    open(&app, id, "/", "again").await;
}

#[tokio::test]
async fn a_flood_of_streams_from_new_sessions_is_bounded() {
    let presence = tracker(Duration::from_secs(60), Duration::from_millis(50));
    let app = app(&presence, Routes::new(presence.clone()).max_streams(200));
    let mut ok = Vec::new();
    let mut refused = 0;
    for _ in 0..5000 {
        let res = send(&app, req("GET", "/presence/stream", SessionId::new_v4())).await;
        match res.status() {
            StatusCode::OK => ok.push(res),
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("{other}"),
        }
    }
    assert_eq!((ok.len(), refused), (200, 4800));
    assert_eq!(
        presence.counts().sessions,
        200,
        "refused streams hold nothing"
    );
    drop(ok);
    let start = Instant::now();
    while presence.counts().sessions > 0 {
        assert!(start.elapsed() < WAIT, "the flood's sessions never left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn bad_input_is_never_an_error_of_the_server() {
    let presence = tracker(Duration::from_secs(60), Duration::from_secs(5));
    let app = default_app(&presence);
    let id = SessionId::new_v4();
    // A huge page: cut as the layer cuts paths, and held there.
    let huge = format!("/{}", "p".repeat(60_000));
    let res = send(
        &app,
        req("GET", &format!("/presence/stream?page={huge}"), id),
    )
    .await;
    let mut events = Events::new(res);
    events.next(WAIT).await.unwrap();
    let counts = events.counts(WAIT).await;
    assert_eq!(counts["page"], 1);
    let page = presence.session(id).unwrap().page.unwrap();
    assert_eq!(page.len(), presence_tracker::MAX_PAGE_LEN);
    drop(events);
    // Malformed queries, pages that are not paths, many pages, odd names.
    let many: String = (0..500).map(|n| format!("&pages=/p/{n}")).collect();
    for query in [
        "page=%ZZ&stream=%00",
        "page=not-a-path",
        &format!("page=/x{many}"),
        "stream=&stream=&page=",
        "page=/%F0%9F%92%A9",
    ] {
        let res = send(
            &app,
            req(
                "GET",
                &format!("/presence/stream?{query}"),
                SessionId::new_v4(),
            ),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK, "{query}");
    }
    // No cookie: a fresh id is issued and nothing is held until it comes back.
    let res = send(
        &app,
        Request::builder()
            .uri("/presence/stream")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::GONE);
    // Without the layer: a server misconfiguration, said so.
    let bare: Router = Routes::new(presence.clone()).build();
    let res = send(&bare, req("GET", "/presence/stream", id)).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn a_quiet_stream_gets_a_keep_alive_comment_every_15_seconds() {
    let presence = tracker(Duration::from_secs(60), Duration::from_secs(5));
    let app = default_app(&presence);
    let mut events = open(&app, SessionId::new_v4(), "/", "a").await;
    events.counts(WAIT).await;
    let opened = Instant::now();
    let comment = tokio::time::timeout(Duration::from_secs(25), async {
        loop {
            if let Some(at) = events.buf.find(": \n\n") {
                return at;
            }
            let frame = events.body.frame().await.unwrap().unwrap();
            let data = frame.into_data().unwrap();
            events.buf.push_str(std::str::from_utf8(&data).unwrap());
        }
    })
    .await;
    assert!(comment.is_ok(), "no keep-alive comment");
    assert!(
        opened.elapsed() >= Duration::from_secs(10),
        "not before it is needed"
    );
}

#[tokio::test]
async fn an_admin_kill_ends_the_stream_and_the_page_must_come_back() {
    let presence = tracker(Duration::from_secs(60), Duration::from_secs(5));
    let app = default_app(&presence);
    let id = SessionId::new_v4();
    let mut events = open(&app, id, "/", "a").await;
    events.counts(WAIT).await;
    presence.leave(id);
    assert!(
        events.ends_within(WAIT).await,
        "its hold no longer holds anything"
    );
    assert!(
        presence.session(id).is_none(),
        "the stream did not revive it"
    );
}

/// One raw HTTP/1.1 request that stays open: the socket, after the response head.
async fn raw_stream(addr: SocketAddr, id: SessionId) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /presence/stream?page=/ HTTP/1.1\r\nHost: localhost\r\nCookie: presence_id={id}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0; 4096];
    let n = socket.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_completes_with_streams_open() {
    let presence = tracker(Duration::from_secs(60), Duration::from_secs(5));
    let app = default_app(&presence);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(raw_stream(addr, SessionId::new_v4()).await);
    }
    assert_eq!(presence.counts().sessions, 20);
    // The documented order: save on the signal, shut the tracker down (the streams end),
    // then drain.
    presence.shutdown();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the graceful shutdown waited on the open streams")
        .unwrap()
        .unwrap();
    // A stream asked for after the shutdown is refused (the page polls, tries later).
    let app = default_app(&presence);
    let res = send(&app, req("GET", "/presence/stream", SessionId::new_v4())).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    drop(sockets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_by_the_client_releases_its_hold() {
    // Over real TCP: the server sees the connection close (a killed tab) and the session
    // leaves at the grace.
    let grace = Duration::from_millis(200);
    let presence = tracker(Duration::from_secs(60), grace);
    let app = default_app(&presence);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let id = SessionId::new_v4();
    let socket = raw_stream(addr, id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(presence.session(id).is_some());
    let closed = Instant::now();
    drop(socket);
    while presence.session(id).is_some() {
        assert!(closed.elapsed() < WAIT, "a closed connection kept its hold");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The tracker's clock is the coarse monotonic one (a tick of 4 to 10 ms, read in whole
    // milliseconds): the grace may end up to a tick early as this test's precise clock sees it.
    let tick = Duration::from_millis(11);
    assert!(
        closed.elapsed() + tick >= grace,
        "left {:?} after the close, before the grace",
        closed.elapsed()
    );
}

#[path = "../../tests/common/redis.rs"]
mod redis_server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cluster_streams_push_the_cluster_view_without_a_redis_call_each() {
    let Some(server) = redis_server::RedisServer::start() else {
        return;
    };
    let flush = Duration::from_millis(150);
    let node = |name: &'static str| {
        let url = server.url();
        async move {
            let presence = tracker(Duration::from_secs(60), Duration::from_secs(5));
            let cluster = presence_tracker::cluster::Cluster::builder(&url)
                .namespace("stream")
                .node_id(name)
                .flush_interval(flush)
                .start(&presence)
                .await
                .unwrap();
            let app = app(
                &presence,
                Routes::new(presence.clone()).cluster(cluster.clone()),
            );
            (presence, cluster, app)
        }
    };
    let (_pa, _ca, app_a) = node("a").await;
    let (pb, cb, _app_b) = node("b").await;
    let calls = |s: &redis_server::RedisServer| {
        let names = [
            "evalsha", "eval", "hmget", "zrange", "get", "mget", "hgetall", "zcard",
        ];
        names.iter().map(|c| s.commandstats(c).0).sum::<u64>()
    };
    // Redis calls in 2 s with `streams` open, once they are warm.
    let over_two_seconds = |server: &redis_server::RedisServer| {
        let before = calls(server);
        async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            before
        }
    };
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut events = open(&app_a, SessionId::new_v4(), "/room", "s").await;
        let first = events.counts(WAIT).await;
        assert!(first.get("nodes").is_some(), "the cluster's JSON: {first}");
        streams.push(events);
    }
    // A visitor on the other node shows in every stream of this one.
    pb.visit(SessionId::new_v4(), Kind::member("bea"), "/room")
        .unwrap();
    cb.sync().await.unwrap();
    for events in &mut streams {
        loop {
            let counts = events.counts(WAIT).await;
            if counts["online"] == 51 && counts["page_names"] == serde_json::json!(["bea"]) {
                break;
            }
        }
    }
    // The 50 streams cost the Redis calls of one reader, not 50: the same with one open.
    tokio::time::sleep(flush * 2).await;
    let before = over_two_seconds(&server).await;
    let with_fifty = calls(&server) - before;
    streams.truncate(1);
    tokio::time::sleep(flush * 2).await;
    let before = over_two_seconds(&server).await;
    let with_one = calls(&server) - before;
    assert!(
        with_fifty <= with_one + with_one / 2 + 10,
        "{with_fifty} Redis calls in 2 s with 50 streams open, {with_one} with one"
    );
    drop(streams);
}
