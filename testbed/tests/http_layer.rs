//! The HTTP layer and routes through the real tower service: cookies good and bad,
//! counting once the cookie comes back, cookie flags, signing, skip, classify, a full
//! tracker, every presence route with its settings, and the demo's forms.

#[allow(dead_code, unreachable_pub)]
#[path = "../../examples/whos_online.rs"]
mod demo;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_TYPE, COOKIE, ETAG, IF_NONE_MATCH, SET_COOKIE,
};
use axum::http::{HeaderValue, Request, Response, StatusCode};
use axum::routing::get;
use http_body_util::BodyExt;
use presence_tracker::http::{
    self as presence_http, Key, PresenceLayer, PresenceSession, Routes, SCRIPT,
};
use presence_tracker::{Kind, ManualClock, Presence, Reaper, SessionId};
use tower::{Layer, ServiceExt};

const NAME: &str = "presence_id";

/// Counts the bytes allocated and freed by the current thread, so that a test on a
/// current-thread runtime can tell what a flood of requests left behind.
struct ThreadCounting;

thread_local! {
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to `System`; the counter is a plain thread-local `Cell`
// with a const initialiser, which allocates nothing.
unsafe impl GlobalAlloc for ThreadCounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE_BYTES.try_with(|n| n.set(n.get() + layout.size() as isize));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE_BYTES.try_with(|n| n.set(n.get() - layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ =
            LIVE_BYTES.try_with(|n| n.set(n.get() + new_size as isize - layout.size() as isize));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: ThreadCounting = ThreadCounting;

fn live_bytes() -> isize {
    LIVE_BYTES.with(Cell::get)
}

fn tracker() -> (Presence, ManualClock) {
    let clock = ManualClock::new();
    let presence = Presence::builder()
        .clock(clock.clone())
        .reaper(Reaper::Manual)
        .idle_timeout(Duration::from_secs(60))
        .build();
    (presence, clock)
}

/// An application echoing the session id the handler sees ("-" when there is none).
fn app(presence: &Presence, layer: PresenceLayer) -> Router {
    let echo = |session: Option<PresenceSession>| async move {
        session.map_or_else(|| "-".to_owned(), |PresenceSession(id)| id.to_string())
    };
    Router::new()
        .route("/", get(echo))
        .route("/topic/{n}", get(echo))
        .route("/static/app.css", get(echo))
        .merge(presence_http::routes(presence.clone()))
        .layer(layer)
}

/// A page view, as a browser's navigation sends it (only those set the visitor's page).
fn get_req(path: &str) -> axum::http::request::Builder {
    Request::builder()
        .uri(path)
        .header("sec-fetch-dest", "document")
}

/// A request for a subresource or an API (a stylesheet, an image, a `fetch`).
fn sub_req(path: &str, dest: Option<&str>, accept: Option<&str>) -> axum::http::request::Builder {
    let mut req = Request::builder().uri(path);
    if let Some(dest) = dest {
        req = req.header("sec-fetch-dest", dest);
    }
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    req
}

fn post_req(path: &str) -> axum::http::request::Builder {
    Request::builder().method("POST").uri(path)
}

async fn send(app: &Router, req: axum::http::request::Builder) -> Response<Body> {
    app.clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn body_text(res: Response<Body>) -> String {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The `Set-Cookie` header for the presence cookie, if any.
fn set_cookie(res: &Response<Body>) -> Option<String> {
    res.headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with(&format!("{NAME}=")) || v.starts_with("sid="))
}

/// `name=value` of a `Set-Cookie` header, ready for a `Cookie` header.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

/// The session id in a (possibly signed) cookie value: its last 36 characters.
fn id_of(set_cookie: &str) -> SessionId {
    let pair = pair(set_cookie);
    pair[pair.len() - 36..].parse().unwrap()
}

/// A browser's first two requests (the first gets the cookie, the second returns it and
/// counts): returns the `Cookie` header value to send next time.
async fn join(app: &Router) -> (String, SessionId) {
    let res = send(app, get_req("/")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let set = set_cookie(&res).expect("a fresh visitor gets a cookie");
    let echoed: SessionId = body_text(res).await.parse().unwrap();
    assert_eq!(echoed, id_of(&set));
    let res = send(app, get_req("/").header(COOKIE, pair(&set))).await;
    assert_eq!(set_cookie(&res), None, "the returned cookie is kept");
    (pair(&set), echoed)
}

fn attributes(set_cookie: &str) -> Vec<String> {
    set_cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_owned())
        .collect()
}

#[tokio::test]
async fn fresh_visitor_gets_a_cookie_with_all_flags() {
    let (presence, _) = tracker();
    let app = app(&presence, PresenceLayer::new(presence.clone()));
    let res = send(&app, get_req("/")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let set = set_cookie(&res).unwrap();
    let attrs = attributes(&set);
    for flag in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Secure",
        "Max-Age=31536000",
    ] {
        assert!(attrs.iter().any(|a| a == flag), "{flag} missing in {set}");
    }
    let id = id_of(&set);
    assert_eq!(pair(&set), format!("{NAME}={id}"), "unsigned by default");
    assert_eq!(
        body_text(res).await,
        id.to_string(),
        "the handler sees the issued id"
    );
    assert_eq!(
        presence.session(id),
        None,
        "not counted before the cookie comes back"
    );

    let res = send(&app, get_req("/topic/1").header(COOKIE, pair(&set))).await;
    assert_eq!(set_cookie(&res), None);
    let session = presence
        .session(id)
        .expect("counted once the cookie came back");
    assert_eq!(session.kind, Kind::Guest);
    assert_eq!(session.page.as_deref(), Some("/topic/1"));
}

#[tokio::test]
async fn returning_visitor_keeps_the_id_and_gets_no_new_cookie() {
    let (presence, _) = tracker();
    let app = app(&presence, PresenceLayer::new(presence.clone()));
    let (cookie, id) = join(&app).await;
    let res = send(
        &app,
        get_req("/topic/7").header(COOKIE, format!("theme=dark; {cookie}; lang=en")),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(set_cookie(&res), None);
    assert_eq!(body_text(res).await, id.to_string());
    assert_eq!(presence.counts().sessions, 1);
    assert_eq!(
        presence.session(id).unwrap().page.as_deref(),
        Some("/topic/7")
    );
}

#[tokio::test]
async fn every_bad_cookie_gets_a_fresh_id_and_the_request_succeeds() {
    let (presence, _) = tracker();
    let app = app(&presence, PresenceLayer::new(presence.clone()));
    let valid = SessionId::new_v4();
    let other = SessionId::new_v4();
    let cases: Vec<(&str, Vec<HeaderValue>)> = vec![
        ("missing", vec![]),
        ("empty", vec![HeaderValue::from_static("presence_id=")]),
        (
            "malformed",
            vec![HeaderValue::from_static("presence_id=not-a-uuid")],
        ),
        (
            "unhyphenated",
            vec![HeaderValue::from_str(&format!("{NAME}={}", valid.as_uuid().simple())).unwrap()],
        ),
        (
            "braced",
            vec![HeaderValue::from_str(&format!("{NAME}={{{valid}}}")).unwrap()],
        ),
        (
            "oversized",
            vec![HeaderValue::from_str(&format!("{NAME}={valid}{}", "a".repeat(4000))).unwrap()],
        ),
        (
            "duplicated, none valid",
            vec![
                HeaderValue::from_str(&format!("{NAME}=x; {NAME}={valid}0")).unwrap(),
                HeaderValue::from_str(&format!("{NAME}={{{other}}}")).unwrap(),
            ],
        ),
        (
            "not UTF-8",
            vec![
                HeaderValue::from_bytes(
                    b"presence_id=\xff\xfe\xfd\xfc-0000-0000-0000-000000000000",
                )
                .unwrap(),
            ],
        ),
        (
            "signed format without a key",
            vec![
                HeaderValue::from_str(&format!(
                    "{NAME}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA={valid}"
                ))
                .unwrap(),
            ],
        ),
    ];
    for (what, headers) in cases {
        let mut req = Request::builder().uri("/");
        for h in headers {
            req = req.header(COOKIE, h);
        }
        let res = send(&app, req).await;
        assert!(res.status().is_success(), "{what}: {}", res.status());
        let set = set_cookie(&res).unwrap_or_else(|| panic!("{what}: no fresh cookie"));
        let fresh = id_of(&set);
        assert!(
            fresh != valid && fresh != other,
            "{what}: the old id was kept"
        );
        assert_eq!(body_text(res).await, fresh.to_string(), "{what}");
        let back = send(&app, get_req("/").header(COOKIE, pair(&set))).await;
        assert_eq!(set_cookie(&back), None, "{what}: the fresh id is kept");
        assert!(
            presence.session(fresh).is_some(),
            "{what}: fresh id not counted once returned"
        );
    }
    assert!(presence.session(valid).is_none() && presence.session(other).is_none());
}

#[tokio::test]
async fn cookieless_requests_are_never_counted_and_leave_nothing_allocated() {
    // 200k requests from clients that never keep cookies (curl, probes, scrapers), to
    // pages and to the presence routes.
    const FLOOD: usize = 200_000;
    let presence = Presence::builder().reaper(Reaper::Manual).build();
    let app = app(
        &presence,
        PresenceLayer::new(presence.clone()).signing_key(Key::generate()),
    );
    let paths = [
        "/",
        "/topic/1",
        "/presence/active?page=/",
        "/presence/heartbeat",
    ];
    // Warm up whatever is allocated once (the router's caches, the runtime's buffers).
    for path in paths {
        let method = if path.starts_with("/presence/") {
            "POST"
        } else {
            "GET"
        };
        send(&app, get_req(path).method(method)).await;
    }
    let before = live_bytes();
    for n in 0..FLOOD {
        let path = paths[n % paths.len()];
        let method = if path.starts_with("/presence/") {
            "POST"
        } else {
            "GET"
        };
        let res = send(&app, get_req(path).method(method)).await;
        assert!(set_cookie(&res).is_some(), "each is offered an id");
    }
    let grown = live_bytes() - before;
    let c = presence.counts();
    assert_eq!((c.sessions, c.online, c.peak.online), (0, 0, 0));
    assert!(presence.top_pages(10).is_empty());
    assert!(
        grown < 64 * 1024,
        "{FLOOD} cookieless requests left {grown} bytes allocated"
    );

    let (_, id) = join(&app).await;
    assert!(presence.session(id).is_some(), "a browser is still counted");
}

#[tokio::test]
async fn cookieless_flood_does_not_keep_visitors_out_of_a_full_tracker() {
    let presence = Presence::builder()
        .reaper(Reaper::Manual)
        .max_sessions(10)
        .build();
    let app = app(&presence, PresenceLayer::new(presence.clone()));
    for _ in 0..1000 {
        send(&app, get_req("/")).await;
    }
    for _ in 0..10 {
        let (_, id) = join(&app).await;
        assert!(presence.session(id).is_some(), "a real visitor is counted");
    }
}

#[tokio::test]
async fn first_valid_of_duplicated_cookies_wins() {
    let (presence, _) = tracker();
    let app = app(&presence, PresenceLayer::new(presence.clone()));
    let (cookie, id) = join(&app).await;
    let parent = SessionId::new_v4(); // a parent domain's cookie of the same name
    let headers = [
        format!("{NAME}=junk; {cookie}; {NAME}={parent}"),
        format!("{cookie}; {NAME}={parent}"),
        format!("theme=dark; {NAME}=; {cookie}"),
    ];
    for header in &headers {
        for _ in 0..100 {
            let res = send(&app, get_req("/").header(COOKIE, header)).await;
            assert_eq!(set_cookie(&res), None, "{header}: no fresh id");
            assert_eq!(body_text(res).await, id.to_string(), "{header}");
        }
    }
    // Across two `Cookie` headers too.
    for _ in 0..100 {
        let res = send(
            &app,
            get_req("/")
                .header(COOKIE, format!("{NAME}=not-ours"))
                .header(COOKIE, cookie.clone()),
        )
        .await;
        assert_eq!(set_cookie(&res), None);
    }
    assert_eq!(presence.counts().sessions, 1, "one browser, one session");
    assert!(presence.session(parent).is_none());
}

#[tokio::test]
async fn only_the_first_8_cookies_of_our_name_are_checked() {
    let (presence, _) = tracker();
    let app = app_with_key(&presence, Key::generate());
    let (cookie, id) = join(&app).await;
    // Forged values of the signed length, each of which would cost an HMAC.
    let forged = |n: usize| -> String {
        (0..n)
            .map(|_| format!("{NAME}={}{}; ", "A".repeat(43) + "=", SessionId::new_v4()))
            .collect()
    };
    let res = send(
        &app,
        get_req("/").header(COOKIE, format!("{}{cookie}", forged(7))),
    )
    .await;
    assert_eq!(set_cookie(&res), None, "8th: still looked at");
    assert_eq!(body_text(res).await, id.to_string());
    let res = send(
        &app,
        get_req("/").header(COOKIE, format!("{}{cookie}", forged(8))),
    )
    .await;
    assert!(set_cookie(&res).is_some(), "9th: ignored, a fresh id");
    let res = send(&app, get_req("/").header(COOKIE, forged(5000))).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(set_cookie(&res).is_some());
}

#[tokio::test]
async fn duplicated_signed_cookies_keep_the_one_we_signed() {
    let (presence, _) = tracker();
    let app = app_with_key(&presence, Key::generate());
    let (cookie, id) = join(&app).await;
    // The parent domain's cookie comes first and is a valid UUID, but not signed by us.
    let header = format!("{NAME}={}; {cookie}", SessionId::new_v4());
    for _ in 0..100 {
        let res = send(&app, get_req("/").header(COOKIE, header.clone())).await;
        assert_eq!(set_cookie(&res), None);
        assert_eq!(body_text(res).await, id.to_string());
    }
    assert_eq!(presence.counts().sessions, 1);
}

#[tokio::test]
async fn count_first_request_counts_a_visitor_at_once() {
    let (presence, _) = tracker();
    let app = app(
        &presence,
        PresenceLayer::new(presence.clone()).count_first_request(true),
    );
    let res = send(&app, get_req("/topic/2")).await;
    let id = id_of(&set_cookie(&res).unwrap());
    assert_eq!(
        presence.session(id).unwrap().page.as_deref(),
        Some("/topic/2")
    );
    let res = send(&app, post_req("/presence/active?page=/topic/3")).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(presence.counts().sessions, 2);
}

#[tokio::test]
async fn unsigned_ids_are_taken_as_sent_and_signing_refuses_made_up_ones() {
    // Documented: without a key, made-up UUIDs are visitors; with one, they are not.
    let (presence, _) = tracker();
    let unsigned = app(&presence, PresenceLayer::new(presence.clone()));
    for _ in 0..1000 {
        let made_up = SessionId::new_v4();
        send(
            &unsigned,
            get_req("/").header(COOKIE, format!("{NAME}={made_up}")),
        )
        .await;
    }
    assert_eq!(presence.counts().sessions, 1000);

    let (presence, _) = tracker();
    let signed = app_with_key(&presence, Key::generate());
    for _ in 0..1000 {
        let made_up = SessionId::new_v4();
        send(
            &signed,
            get_req("/").header(COOKIE, format!("{NAME}={made_up}")),
        )
        .await;
    }
    assert_eq!(presence.counts().sessions, 0);
}

#[test]
fn signing_key_needs_a_64_byte_secret() {
    let secret = [42u8; 64];
    assert!(Key::try_from(&secret[..]).is_ok());
    let err = Key::try_from(&secret[..63]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a presence signing key needs a secret of at least 64 bytes, got 63"
    );
    assert_eq!(
        format!("{:?}", Key::generate()),
        "Key(..)",
        "the secret never shows"
    );
}

#[tokio::test]
async fn one_secret_makes_keys_that_accept_each_others_cookies() {
    let secret = [9u8; 64];
    let (presence, _) = tracker();
    let first = app_with_key(&presence, Key::try_from(&secret[..]).unwrap());
    let restarted = app_with_key(&presence, Key::try_from(&secret[..]).unwrap());
    let (cookie, id) = join(&first).await;
    let res = send(&restarted, get_req("/").header(COOKIE, cookie)).await;
    assert_eq!(set_cookie(&res), None);
    assert_eq!(body_text(res).await, id.to_string());
}

#[tokio::test]
async fn non_utf8_bytes_in_another_cookie_do_not_cost_the_id() {
    let (presence, _) = tracker();
    let app = app(&presence, PresenceLayer::new(presence.clone()));
    let (cookie, id) = join(&app).await;
    let mut header = b"junk=\xff\xfe; ".to_vec();
    header.extend_from_slice(cookie.as_bytes());
    let res = send(
        &app,
        get_req("/").header(COOKIE, HeaderValue::from_bytes(&header).unwrap()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(set_cookie(&res), None);
    assert_eq!(body_text(res).await, id.to_string());
}

#[tokio::test]
async fn secure_off_and_custom_name_and_max_age() {
    let (presence, _) = tracker();
    let layer = PresenceLayer::new(presence.clone())
        .cookie_name("sid")
        .secure(false)
        .max_age(Duration::from_secs(90));
    let app = app(&presence, layer);
    let res = send(&app, get_req("/")).await;
    let set = set_cookie(&res).unwrap();
    assert!(set.starts_with("sid="), "{set}");
    let attrs = attributes(&set);
    assert!(!attrs.iter().any(|a| a == "Secure"), "{set}");
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=90"] {
        assert!(attrs.iter().any(|a| a == flag), "{flag} missing in {set}");
    }
    // The default name is not ours any more.
    let id = id_of(&set);
    let res = send(&app, get_req("/").header(COOKIE, format!("{NAME}={id}"))).await;
    assert!(set_cookie(&res).is_some());
    let res = send(&app, get_req("/").header(COOKIE, format!("sid={id}"))).await;
    assert_eq!(set_cookie(&res), None);
}

#[tokio::test]
async fn signed_ids_round_trip_and_forgeries_are_replaced() {
    let (presence, _) = tracker();
    let key = Key::generate();
    let app = app(
        &presence,
        PresenceLayer::new(presence.clone()).signing_key(key.clone()),
    );
    let (cookie, id) = join(&app).await;
    let value = &cookie[NAME.len() + 1..];
    assert_eq!(value.len(), 44 + 36, "base64 HMAC then the id: {value}");
    assert!(value.ends_with(&id.to_string()));

    let res = send(&app, get_req("/").header(COOKIE, cookie.clone())).await;
    assert_eq!(set_cookie(&res), None, "a cookie we signed is accepted");
    assert_eq!(body_text(res).await, id.to_string());

    // A bare id, a changed id under the old MAC, a cookie signed with another key.
    let forged_id = SessionId::new_v4();
    let tampered = format!("{NAME}={}{forged_id}", &value[..44]);
    let other_app = app_with_key(&presence, Key::generate());
    let (foreign, foreign_id) = join(&other_app).await;
    // Accepted where it was issued, which also puts it in this thread's cache of verified
    // values: that must not make it valid under our key.
    let res = send(&other_app, get_req("/").header(COOKIE, foreign.clone())).await;
    assert_eq!(set_cookie(&res), None, "valid under its own key");
    for (what, header, bad) in [
        ("bare id", format!("{NAME}={forged_id}"), forged_id),
        ("tampered", tampered, forged_id),
        ("other key", foreign, foreign_id),
    ] {
        let res = send(&app, get_req("/").header(COOKIE, header)).await;
        assert_eq!(res.status(), StatusCode::OK, "{what}");
        let set = set_cookie(&res).unwrap_or_else(|| panic!("{what}: accepted"));
        assert_ne!(id_of(&set), bad, "{what}");
    }
    assert!(
        presence.session(forged_id).is_none(),
        "forged ids never join"
    );
}

/// An application whose layer signs with `current` and accepts `previous` too.
fn app_with_keys(presence: &Presence, current: &[u8; 64], previous: &[&[u8; 64]]) -> Router {
    let key = |secret: &[u8; 64]| Key::try_from(&secret[..]).unwrap();
    app(
        presence,
        PresenceLayer::new(presence.clone())
            .signing_keys(key(current), previous.iter().map(|s| key(s))),
    )
}

/// `value` signed as the layer signs a cookie under the key made from `secret`, as a
/// `Cookie` header pair: how a cookie forged by someone holding that key looks.
fn signed_with(secret: &[u8; 64], value: &str) -> String {
    let mut jar = cookie::CookieJar::new();
    jar.signed_mut(&cookie::Key::from(&secret[..]))
        .add(cookie::Cookie::new(NAME, value.to_owned()));
    format!("{NAME}={}", jar.get(NAME).unwrap().value())
}

const OLD: [u8; 64] = [1; 64];
const NEW: [u8; 64] = [2; 64];
const RETIRED: [u8; 64] = [3; 64];

#[tokio::test]
async fn a_rotation_keeps_every_visitor_and_re_signs_their_cookie() {
    let (presence, _) = tracker();
    let before = app_with_keys(&presence, &OLD, &[]);
    let (old_cookie, id) = join(&before).await;
    let first_seen = presence.session(id).unwrap().first_seen;
    let mut events = presence.subscribe();

    // The rotation: a new current key, the old one still accepted.
    let rotated = app_with_keys(&presence, &NEW, &[&OLD]);
    let res = send(
        &rotated,
        get_req("/topic/1").header(COOKIE, old_cookie.clone()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let set = set_cookie(&res).expect("the old cookie is re-signed");
    assert_eq!(id_of(&set), id, "the same id");
    assert_ne!(pair(&set), old_cookie, "under another key");
    assert_eq!(body_text(res).await, id.to_string());
    // Recorded as the returning visitor it is: the same session, moved to the page.
    let session = presence.session(id).unwrap();
    assert_eq!(session.page.as_deref(), Some("/topic/1"));
    assert_eq!(session.first_seen, first_seen);
    assert!(
        events.try_recv().is_err(),
        "no Left, no Joined: the session went on"
    );
    assert_eq!(presence.counts().sessions, 1);

    // The new cookie is current: kept as it is, here and once the old key is retired.
    let res = send(&rotated, get_req("/").header(COOKIE, pair(&set))).await;
    assert_eq!(set_cookie(&res), None);
    assert_eq!(body_text(res).await, id.to_string());
    let after = app_with_keys(&presence, &NEW, &[]);
    let res = send(&after, get_req("/").header(COOKIE, pair(&set))).await;
    assert_eq!(set_cookie(&res), None);
    assert_eq!(body_text(res).await, id.to_string());
    assert_eq!(presence.counts().sessions, 1);
}

#[tokio::test]
async fn a_cookie_under_a_previous_key_counts_at_once_unlike_a_first_visit() {
    // A visitor whose session is not live (they come back after a while, or the server
    // restarted) with a cookie signed by the previous key: counted by this request, as a
    // returning visitor; the routes take the re-signed id too.
    let (presence, _) = tracker();
    let id = SessionId::new_v4();
    let old_cookie = signed_with(&OLD, &id.to_string());
    let rotated = app_with_keys(&presence, &NEW, &[&OLD]);
    let res = send(&rotated, get_req("/").header(COOKIE, old_cookie.clone())).await;
    assert_eq!(id_of(&set_cookie(&res).unwrap()), id);
    assert!(presence.session(id).is_some(), "counted at once");

    let res = send(
        &rotated,
        post_req("/presence/heartbeat").header(COOKIE, old_cookie.clone()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(id_of(&set_cookie(&res).unwrap()), id, "re-signed on a beat");
    presence.leave(id);
    let res = send(
        &rotated,
        post_req("/presence/active").header(COOKIE, old_cookie),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT, "not a first visit");
    assert!(presence.session(id).is_some());
}

#[tokio::test]
async fn a_retired_key_gets_a_fresh_id_counted_only_once_it_comes_back() {
    let (presence, _) = tracker();
    let id = SessionId::new_v4();
    let retired_cookie = signed_with(&RETIRED, &id.to_string());
    let app = app_with_keys(&presence, &NEW, &[&OLD]);
    for (what, req) in [
        ("page", get_req("/").header(COOKIE, retired_cookie.clone())),
        (
            "active",
            post_req("/presence/active").header(COOKIE, retired_cookie.clone()),
        ),
    ] {
        let res = send(&app, req).await;
        assert!(res.status() == StatusCode::OK || res.status() == StatusCode::GONE);
        let fresh = id_of(&set_cookie(&res).unwrap_or_else(|| panic!("{what}: kept")));
        assert_ne!(fresh, id, "{what}");
        assert!(presence.session(fresh).is_none(), "{what}: a first visit");
    }
    assert!(presence.session(id).is_none());
    assert_eq!(presence.counts().sessions, 0);
}

#[tokio::test]
async fn forged_cookies_under_each_key_are_replaced() {
    let (presence, _) = tracker();
    let app = app_with_keys(&presence, &NEW, &[&OLD]);
    let issued = SessionId::new_v4();
    let forged = SessionId::new_v4();
    for (name, secret) in [("current", &NEW), ("previous", &OLD)] {
        let genuine = signed_with(secret, &issued.to_string());
        let mac = &genuine[NAME.len() + 1..NAME.len() + 1 + 44];
        // Another id under a genuine MAC; a MAC cut by one character; a MAC over a value
        // that is not an id (only a holder of the key could make one: still refused).
        let cases = [
            ("swapped id", format!("{NAME}={mac}{forged}")),
            ("bad MAC", format!("{NAME}=A{}{issued}", &mac[1..])),
            ("not an id", signed_with(secret, &"x".repeat(36))),
        ];
        for (what, header) in cases {
            let res = send(&app, get_req("/").header(COOKIE, header)).await;
            assert_eq!(res.status(), StatusCode::OK, "{name}: {what}");
            let set = set_cookie(&res).unwrap_or_else(|| panic!("{name}: {what}: accepted"));
            let fresh = id_of(&set);
            assert!(fresh != forged && fresh != issued, "{name}: {what}");
        }
    }
    assert!(presence.session(forged).is_none() && presence.session(issued).is_none());
    assert_eq!(presence.counts().sessions, 0, "nothing forged joined");
}

#[tokio::test]
async fn during_a_rotation_garbage_cookies_get_a_fresh_id_and_never_fail_a_request() {
    let (presence, _) = tracker();
    let app = app_with_keys(&presence, &NEW, &[&OLD, &RETIRED]);
    let id = SessionId::new_v4();
    let long = format!("{NAME}={}", "A".repeat(80));
    let mut cases: Vec<(&str, HeaderValue)> = vec![
        (
            "80 base64 characters",
            HeaderValue::from_str(&long).unwrap(),
        ),
        (
            "80 characters, not base64",
            HeaderValue::from_str(&format!("{NAME}={}{id}", "!".repeat(44))).unwrap(),
        ),
        (
            "80 bytes, not UTF-8",
            HeaderValue::from_bytes(&[b"presence_id=".as_slice(), &[0xff; 80]].concat()).unwrap(),
        ),
        (
            "an unsigned id",
            HeaderValue::from_str(&format!("{NAME}={id}")).unwrap(),
        ),
        (
            "oversized",
            HeaderValue::from_str(&format!("{NAME}={}", "A".repeat(16_000))).unwrap(),
        ),
        ("empty", HeaderValue::from_static("presence_id=")),
    ];
    // Fifty cookies of our name, each costing an HMAC per key if they were all checked.
    let many = (0..50)
        .map(|_| long.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    cases.push(("fifty of them", HeaderValue::from_str(&many).unwrap()));
    for (what, header) in cases {
        let res = send(&app, get_req("/").header(COOKIE, header)).await;
        assert_eq!(res.status(), StatusCode::OK, "{what}");
        let set = set_cookie(&res).unwrap_or_else(|| panic!("{what}: no fresh cookie"));
        assert_ne!(id_of(&set), id, "{what}");
    }
    assert_eq!(presence.counts().sessions, 0);
}

#[tokio::test]
async fn a_current_cookie_wins_over_a_previous_one_in_either_order() {
    let (presence, _) = tracker();
    let app = app_with_keys(&presence, &NEW, &[&OLD]);
    let (a, b) = (SessionId::new_v4(), SessionId::new_v4());
    let current = signed_with(&NEW, &a.to_string());
    let previous = signed_with(&OLD, &b.to_string());
    for header in [
        format!("{previous}; {current}"),
        format!("{current}; {previous}"),
    ] {
        let res = send(&app, get_req("/").header(COOKIE, header.clone())).await;
        assert_eq!(set_cookie(&res), None, "{header}: nothing to re-sign");
        assert_eq!(body_text(res).await, a.to_string(), "{header}");
    }
    // Two under the previous key: the first wins, and is re-signed.
    let other = signed_with(&OLD, &a.to_string());
    let res = send(
        &app,
        get_req("/").header(COOKIE, format!("{previous}; {other}")),
    )
    .await;
    assert_eq!(id_of(&set_cookie(&res).unwrap()), b);
}

#[test]
fn the_layer_shows_how_many_previous_keys_it_holds() {
    let presence = Presence::builder().reaper(Reaper::Manual).build();
    let layer = PresenceLayer::new(presence)
        .signing_keys(Key::generate(), [Key::generate(), Key::generate()]);
    let debug = format!("{layer:?}");
    assert!(debug.contains("signed: true"), "{debug}");
    assert!(debug.contains("previous_keys: 2"), "{debug}");
}

fn app_with_key(presence: &Presence, key: Key) -> Router {
    app(
        presence,
        PresenceLayer::new(presence.clone()).signing_key(key),
    )
}

#[tokio::test]
async fn skipped_requests_pass_through_untouched() {
    let (presence, _) = tracker();
    let layer =
        PresenceLayer::new(presence.clone()).skip(|req| req.uri.path().starts_with("/static/"));
    let app = app(&presence, layer);
    let res = send(&app, get_req("/static/app.css")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(set_cookie(&res), None);
    assert_eq!(
        body_text(res).await,
        "-",
        "no session id for skipped requests"
    );
    assert_eq!(presence.counts().sessions, 0);
}

#[tokio::test]
async fn classify_decides_the_kind() {
    let (presence, _) = tracker();
    let layer = PresenceLayer::new(presence.clone()).classify(|req| {
        match req.headers.get("x-user").and_then(|v| v.to_str().ok()) {
            Some(user) => Kind::member(user),
            None if req
                .headers
                .get("user-agent")
                .is_some_and(|ua| ua.as_bytes().ends_with(b"bot")) =>
            {
                Kind::Bot
            }
            None => Kind::Guest,
        }
    });
    let app = app(&presence, layer.count_first_request(true));
    let res = send(&app, get_req("/").header("x-user", "alice")).await;
    let alice = id_of(&set_cookie(&res).unwrap());
    let res = send(&app, get_req("/").header("user-agent", "Googlebot")).await;
    let bot = id_of(&set_cookie(&res).unwrap());
    send(&app, get_req("/")).await;
    assert_eq!(presence.session(alice).unwrap().kind, Kind::member("alice"));
    assert_eq!(presence.session(bot).unwrap().kind, Kind::Bot);
    let c = presence.counts();
    assert_eq!((c.online, c.members, c.guests, c.bots), (2, 1, 1, 1));
}

#[tokio::test]
async fn track_pages_off_records_no_page() {
    let (presence, _) = tracker();
    let app = app(
        &presence,
        PresenceLayer::new(presence.clone()).track_pages(false),
    );
    let (_, id) = join(&app).await;
    assert_eq!(presence.session(id).unwrap().page, None);
    assert_eq!(presence.page_count("/"), 0);
}

#[tokio::test]
async fn full_tracker_still_serves_the_request() {
    let presence = Presence::builder()
        .max_sessions(1)
        .reaper(Reaper::Manual)
        .build();
    let app = app(&presence, PresenceLayer::new(presence.clone()));
    let (cookie, first) = join(&app).await;
    for _ in 0..3 {
        let res = send(&app, get_req("/")).await;
        let set = set_cookie(&res).expect("a new visitor still gets an id");
        let res = send(&app, get_req("/").header(COOKIE, pair(&set))).await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "a refused session is still served"
        );
        assert_eq!(set_cookie(&res), None, "and keeps its id");
        assert_eq!(body_text(res).await, id_of(&set).to_string());
    }
    // The existing session keeps working.
    let res = send(&app, get_req("/topic/1").header(COOKIE, cookie)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(presence.counts().sessions, 1);
    assert_eq!(
        presence.session(first).unwrap().page.as_deref(),
        Some("/topic/1")
    );
}

#[tokio::test]
async fn heartbeat_answers_204_or_json_and_is_not_page_activity() {
    let (presence, clock) = tracker();
    let app = app(&presence, PresenceLayer::new(presence.clone()));
    let (cookie, id) = join(&app).await;
    let before = presence.session(id).unwrap();
    clock.advance(Duration::from_secs(10));

    let res = send(
        &app,
        post_req("/presence/heartbeat?page=/elsewhere").header(COOKIE, cookie.clone()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(res.headers()[CACHE_CONTROL], "no-store");
    let after = presence.session(id).unwrap();
    assert_eq!(
        after.page.as_deref(),
        Some("/"),
        "a heartbeat is not a page view"
    );
    assert_eq!(
        after.last_active, before.last_active,
        "a heartbeat is not activity"
    );
    assert!(
        after.last_seen > before.last_seen,
        "a heartbeat keeps the session alive"
    );

    let res = send(
        &app,
        post_req("/presence/heartbeat?page=/")
            .header(COOKIE, cookie)
            .header(ACCEPT, "application/json"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
    let json: serde_json::Value = serde_json::from_str(&body_text(res).await).unwrap();
    assert_eq!(json["online"], 1);
    assert_eq!(json["guests"], 1);
    assert_eq!(json["members"], 0);
    assert_eq!(json["page"], 1);
    assert!(json["peak"]["online"].is_u64());
}

#[tokio::test]
async fn beats_tell_the_script_the_idle_timeout_that_bounds_its_backoff() {
    let (presence, _) = tracker();
    let app = app(&presence, PresenceLayer::new(presence.clone()));
    let (cookie, _) = join(&app).await;
    for req in [
        post_req("/presence/heartbeat"),
        post_req("/presence/heartbeat").header(ACCEPT, "application/json"),
        post_req("/presence/active"),
    ] {
        let res = send(&app, req.header(COOKIE, cookie.clone())).await;
        assert!(res.status().is_success());
        assert_eq!(res.headers()["presence-idle-timeout"], "60");
    }

    let presence = Presence::builder()
        .reaper(Reaper::Manual)
        .idle_timeout(Duration::from_millis(1500))
        .build();
    let fast = self::app(&presence, PresenceLayer::new(presence.clone()));
    let (cookie, _) = join(&fast).await;
    let res = send(
        &fast,
        post_req("/presence/heartbeat").header(COOKIE, cookie),
    )
    .await;
    assert_eq!(res.headers()["presence-idle-timeout"], "1.5");
    let tag = presence_http::ScriptTag::new(&presence).to_string();
    assert!(tag.contains(r#"data-idle-timeout="1.5""#), "{tag}");
    assert!(!tag.contains("data-backoff"), "on by default: {tag}");
}

#[tokio::test]
async fn heartbeat_for_a_session_that_is_not_live_is_gone() {
    let (presence, clock) = tracker();
    let app = app(&presence, PresenceLayer::new(presence.clone()));

    // No cookie (e.g. the server restarted with a new key): 410, and nothing joins.
    let res = send(&app, post_req("/presence/heartbeat")).await;
    assert_eq!(res.status(), StatusCode::GONE);
    assert!(
        set_cookie(&res).is_some(),
        "an id is issued for the re-join"
    );
    assert_eq!(
        presence.counts().sessions,
        0,
        "a heartbeat never creates a session"
    );

    // Expired.
    let (cookie, _) = join(&app).await;
    clock.advance(Duration::from_secs(61));
    let res = send(
        &app,
        post_req("/presence/heartbeat").header(COOKIE, cookie.clone()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::GONE);

    // Re-join through the activity route, with the layer's classification and the page.
    let res = send(
        &app,
        post_req("/presence/active?page=/topic/2").header(COOKIE, cookie.clone()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = send(&app, post_req("/presence/heartbeat").header(COOKIE, cookie)).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(presence.page_count("/topic/2"), 1);
}

#[tokio::test]
async fn active_uses_the_layers_classification() {
    let (presence, _) = tracker();
    let layer = PresenceLayer::new(presence.clone()).classify(|_| Kind::hidden_member("carol"));
    let app = app(&presence, layer);
    // The page came without a cookie: its script's first report gets 410 and the cookie.
    let res = send(
        &app,
        post_req("/presence/active?page=/topic/3").header(ACCEPT, "application/json"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::GONE);
    let set = set_cookie(&res).unwrap();
    let id = id_of(&set);
    assert_eq!(presence.counts().sessions, 0, "not counted yet");
    // Its second report returns the cookie and counts.
    let res = send(
        &app,
        post_req("/presence/active?page=/topic/3")
            .header(ACCEPT, "application/json")
            .header(COOKIE, pair(&set)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(set_cookie(&res), None);
    let json: serde_json::Value = serde_json::from_str(&body_text(res).await).unwrap();
    assert_eq!(
        (json["hidden"].as_u64(), json["page"].as_u64()),
        (Some(1), Some(1))
    );
    let session = presence.session(id).unwrap();
    assert_eq!(session.kind, Kind::hidden_member("carol"));
    assert_eq!(session.page.as_deref(), Some("/topic/3"));
}

/// The application of [`app`] with the routes built by `routes`.
fn app_with_routes(presence: &Presence, routes: Routes) -> Router {
    let echo = |session: Option<PresenceSession>| async move {
        session.map_or_else(|| "-".to_owned(), |PresenceSession(id)| id.to_string())
    };
    Router::new()
        .route("/", get(echo))
        .route("/topic/{n}", get(echo))
        .merge(routes)
        .layer(PresenceLayer::new(presence.clone()))
}

// The grace is waited out on tokio's clock, paused here: `sleep` jumps ahead at once
// when nothing else can run. The tracker's own times move with the `ManualClock`.
#[tokio::test(start_paused = true)]
async fn leave_answers_204_and_takes_effect_after_the_grace_period() {
    let (presence, clock) = tracker();
    let app = app(&presence, PresenceLayer::new(presence.clone()));
    let (gone, gone_id) = join(&app).await;
    let (reloading, reloading_id) = join(&app).await;
    let (moved, moved_id) = join(&app).await;

    // Closes the tab.
    let res = send(
        &app,
        post_req("/presence/leave?page=/").header(COOKIE, gone),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // Reloads: the old page says goodbye, the new page reports within the grace period.
    let res = send(
        &app,
        post_req("/presence/leave?page=/").header(COOKIE, reloading.clone()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    // Moved on: the new page was requested before the old page's goodbye.
    send(&app, get_req("/topic/1").header(COOKIE, moved.clone())).await;
    let res = send(
        &app,
        post_req("/presence/leave?page=/").header(COOKIE, moved),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    clock.advance(Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let res = send(
        &app,
        post_req("/presence/active?page=/").header(COOKIE, reloading),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    tokio::time::sleep(Duration::from_millis(1400)).await;
    assert!(
        presence.session(gone_id).is_some(),
        "not before the grace period ends"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(presence.session(gone_id).is_none(), "left");
    assert!(
        presence.session(reloading_id).is_some(),
        "reload keeps the session"
    );
    assert!(
        presence.session(moved_id).is_some(),
        "navigation keeps the session"
    );
    assert_eq!(presence.counts().online, 2);

    // Leaving without a session is fine too.
    let res = send(&app, post_req("/presence/leave")).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(start_paused = true)]
async fn a_session_has_at_most_one_pending_leave() {
    let (presence, clock) = tracker();
    let app = app(&presence, PresenceLayer::new(presence.clone()));
    let (cookie, id) = join(&app).await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    for _ in 0..1000 {
        let res = send(
            &app,
            post_req("/presence/leave").header(COOKIE, cookie.clone()),
        )
        .await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(tasks(), before + 1, "one pending leave for 1000 goodbyes");

    // A later goodbye restarts the grace: the last one, 1.5 s in, ends at 3.5 s.
    clock.advance(Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send(
        &app,
        post_req("/presence/leave").header(COOKIE, cookie.clone()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert!(presence.session(id).is_some(), "the grace was restarted");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(presence.session(id).is_none());
    assert_eq!(tasks(), before, "the pending leave is done");
}

#[tokio::test(start_paused = true)]
async fn leave_grace_is_a_routes_setting() {
    let (presence, clock) = tracker();
    let app = app_with_routes(
        &presence,
        Routes::new(presence.clone()).leave_grace(Duration::from_secs(10)),
    );
    let (cookie, id) = join(&app).await;
    send(
        &app,
        post_req("/presence/leave").header(COOKIE, cookie.clone()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(9900)).await;
    assert!(presence.session(id).is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(presence.session(id).is_none());

    // Zero: at once.
    let app = app_with_routes(
        &presence,
        Routes::new(presence.clone()).leave_grace(Duration::ZERO),
    );
    clock.advance(Duration::from_secs(1));
    let (cookie, id) = join(&app).await;
    send(&app, post_req("/presence/leave").header(COOKIE, cookie)).await;
    assert!(presence.session(id).is_none());
}

#[test]
#[should_panic(expected = "leave_grace must be at most")]
fn leave_grace_longer_than_a_minute_is_refused() {
    let _ = Routes::new(Presence::new()).leave_grace(Duration::from_secs(61));
}

#[tokio::test]
async fn routes_merge_into_an_application_with_its_own_state() {
    #[derive(Clone)]
    struct Greeting(&'static str);
    let (presence, _) = tracker();
    let home =
        |axum::extract::State(Greeting(text)): axum::extract::State<Greeting>| async move { text };
    let app: Router = Router::new()
        .route("/", get(home))
        .merge(Routes::new(presence.clone()))
        .with_state(Greeting("home"))
        .layer(PresenceLayer::new(presence.clone()));
    assert_eq!(body_text(send(&app, get_req("/")).await).await, "home");
    let res = send(&app, get_req("/presence/counts")).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn counts_route_serves_json_with_an_optional_page_count() {
    let (presence, _) = tracker();
    let layer = PresenceLayer::new(presence.clone())
        .count_first_request(true)
        .classify(|req| match req.headers.get("x-user") {
            Some(u) => Kind::member(u.to_str().unwrap()),
            None => Kind::Guest,
        });
    let app = app(&presence, layer);
    send(&app, get_req("/topic/1").header("x-user", "alice")).await;
    send(&app, get_req("/topic/1")).await;
    send(&app, get_req("/")).await;

    let res = send(&app, get_req("/presence/counts")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
    let json: serde_json::Value = serde_json::from_str(&body_text(res).await).unwrap();
    assert_eq!(json["online"], 3);
    assert_eq!(json["members"], 1);
    assert_eq!(json["guests"], 2);
    assert_eq!(json["sessions"], 3);
    assert!(json.get("page").is_none());
    assert_eq!(
        presence.counts().sessions,
        3,
        "reading counts is not a visit"
    );

    let res = send(&app, get_req("/presence/counts?page=%2Ftopic%2F1")).await;
    let json: serde_json::Value = serde_json::from_str(&body_text(res).await).unwrap();
    assert_eq!(json["page"], 2);
    assert!(json.get("pages").is_none());

    // The viewers of a list of links, in one request; odd entries are ignored.
    let res = send(
        &app,
        get_req("/presence/counts?page=/&pages=/topic/1&pages=/topic/2&pages=nope&pages=/topic/1"),
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&body_text(res).await).unwrap();
    assert_eq!(json["page"], 1);
    assert_eq!(
        json["pages"],
        serde_json::json!({"/topic/1": 2, "/topic/2": 0})
    );

    // At most 32 pages are answered, however many are asked.
    let many: String = (0..1000).map(|n| format!("&pages=/p/{n}")).collect();
    let res = send(&app, get_req(&format!("/presence/counts?x=1{many}"))).await;
    let json: serde_json::Value = serde_json::from_str(&body_text(res).await).unwrap();
    assert_eq!(json["pages"].as_object().unwrap().len(), 32);

    // A malformed query is read as none.
    let res = send(&app, get_req("/presence/counts?page=%zz&&=")).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn script_route_serves_the_cacheable_script() {
    let (presence, _) = tracker();
    let app = app(&presence, PresenceLayer::new(presence.clone()));
    let res = send(&app, get_req("/presence/presence.js")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/javascript")
    );
    assert!(
        res.headers()[CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    let etag = res.headers()[ETAG].clone();
    assert_eq!(body_text(res).await, SCRIPT);
    let res = send(
        &app,
        get_req("/presence/presence.js").header(IF_NONE_MATCH, etag),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        presence.counts().sessions,
        0,
        "fetching the script is not a visit"
    );
}

#[test]
fn script_has_no_unload_listener_and_no_websocket() {
    assert!(SCRIPT.contains("sendBeacon"));
    assert!(SCRIPT.contains("keepalive: true"));
    assert!(SCRIPT.contains("'pagehide'"));
    assert!(!SCRIPT.contains("'unload'") && !SCRIPT.contains("beforeunload"));
    assert!(!SCRIPT.contains("new WebSocket"));
}

#[tokio::test]
async fn extractor_without_the_layer_is_a_clear_500() {
    let app: Router = Router::new().route(
        "/",
        get(|PresenceSession(id): PresenceSession| async move { id.to_string() }),
    );
    let res = app.oneshot(Request::new(Body::empty())).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body_text(res).await.contains("PresenceLayer"));
}

#[tokio::test]
async fn layer_works_with_any_tower_service() {
    let (presence, _) = tracker();
    let service = PresenceLayer::new(presence.clone()).layer(tower::service_fn(
        |req: Request<String>| async move {
            let id = req.extensions().get::<SessionId>().copied();
            Ok::<_, Infallible>(Response::new(
                id.map(|id| id.to_string()).unwrap_or_default(),
            ))
        },
    ));
    let res = service
        .clone()
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    let set = res.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert_eq!(res.body(), &id_of(&set).to_string());
    assert_eq!(presence.counts().sessions, 0);
    let mut req = Request::new(String::new());
    req.headers_mut()
        .insert(COOKIE, HeaderValue::from_str(&pair(&set)).unwrap());
    let res = service.oneshot(req).await.unwrap();
    assert!(res.headers().get(SET_COOKIE).is_none());
    assert_eq!(presence.counts().sessions, 1);
}

/// The demo forum, with a fresh tracker.
fn demo_app() -> (Router, Presence) {
    let presence = Presence::builder().reaper(Reaper::Manual).build();
    (demo::app(presence.clone(), None), presence)
}

fn form(path: &str, body: &str) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri(path)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn location(res: &Response<Body>) -> &str {
    std::str::from_utf8(res.headers()[axum::http::header::LOCATION].as_bytes()).unwrap()
}

#[tokio::test]
async fn demo_redirects_only_to_a_same_site_path() {
    let (app, _) = demo_app();
    for (back, to) in [
        ("/topic/2", "/topic/2"),
        ("/%0a", "/"),
        ("/%0d%0aSet-Cookie:%20x=1", "/"),
        ("/%01", "/"),
        ("/%7f", "/"),
        ("/a%09b", "/"),
        ("//evil.example/", "/"),
        ("/%5Cevil.example/", "/"),
        ("https://evil.example/", "/"),
        ("", "/"),
        ("/caf%C3%A9", "/café"),
    ] {
        for route in ["/login", "/logout", "/hide"] {
            let res = app
                .clone()
                .oneshot(form(route, &format!("name=alice&back={back}")))
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::SEE_OTHER, "{route} back={back}");
            assert_eq!(location(&res), to, "{route} back={back}");
        }
    }
}

#[tokio::test]
async fn demo_sign_out_clears_both_cookies() {
    let (app, _) = demo_app();
    let res = app
        .clone()
        .oneshot(form("/logout", "back=/%01"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let cookies: Vec<&str> = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    for name in ["forum_user=", "forum_hidden="] {
        let cookie = cookies
            .iter()
            .find(|c| c.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not cleared: {cookies:?}"));
        assert!(cookie.contains("Max-Age=0"), "{cookie}");
    }
}

#[tokio::test]
async fn demo_counts_a_browser_from_its_second_request() {
    let (app, presence) = demo_app();
    let res = send(&app, get_req("/")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let set = set_cookie(&res).unwrap();
    assert_eq!(presence.counts().online, 0);
    let html = body_text(res).await;
    assert!(
        html.contains(r#"data-refresh="2""#),
        "the page reads counts live"
    );
    assert!(html.contains(r#"data-presence-page="/topic/1""#));
    assert!(html.contains(r#"data-presence="peak-at""#));
    let res = send(
        &app,
        post_req("/presence/active?page=/")
            .header(COOKIE, format!("{}; forum_user=alice", pair(&set))),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let c = presence.counts();
    assert_eq!((c.online, c.members), (1, 1));
    // Words agree with their numbers: "there is 1 user", "0 guests", never "1 users".
    let html = body_text(send(&app, get_req("/")).await).await;
    let totals = text_of(&html, r#"<p id="totals">"#, "</p>");
    assert_eq!(
        totals,
        "In total there is 1 user online :: 1 registered, 0 hidden and 0 guests (and 0 bots)"
    );
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    let html = body_text(send(&app, get_req("/")).await).await;
    let totals = text_of(&html, r#"<p id="totals">"#, "</p>");
    assert_eq!(
        totals,
        "In total there are 2 users online :: 1 registered, 0 hidden and 1 guest (and 0 bots)"
    );
}

/// The text between `start` and `end` in `html`, tags dropped and white space collapsed.
fn text_of(html: &str, start: &str, end: &str) -> String {
    let from = html
        .find(start)
        .unwrap_or_else(|| panic!("{start} in {html}"))
        + start.len();
    let inner = &html[from..from + html[from..].find(end).unwrap()];
    let mut text = String::new();
    let mut in_tag = false;
    for c in inner.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn demo_chart_labels_the_count_now_not_the_first_sample_of_the_minute() {
    // A manual clock: every read below falls in one minute.
    let (presence, _clock) = tracker();
    let app = demo::app(presence.clone(), None);
    // The minute's sample is taken by the first read: nobody online yet.
    assert_eq!(presence.history().last().map(|&(_, n)| n), Some(0));
    for _ in 0..3 {
        presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    }
    let html = body_text(send(&app, get_req("/admin")).await).await;
    assert_eq!(
        text_of(&html, "now: ", "</text>"),
        "3 online · 1 sample",
        "{html}"
    );
    assert!(html.contains(r#"<p id="showing">3 sessions online; 3 on this page."#));
}

/// An application whose visitors say who they are in `x-user` (`hidden:` for a hidden
/// member), counted from their first request.
fn members_app(presence: &Presence, routes: Routes) -> Router {
    let layer = PresenceLayer::new(presence.clone())
        .count_first_request(true)
        .classify(
            |req| match req.headers.get("x-user").and_then(|v| v.to_str().ok()) {
                Some(user) => match user.strip_prefix("hidden:") {
                    Some(user) => Kind::hidden_member(user),
                    None => Kind::member(user),
                },
                None => Kind::Guest,
            },
        );
    let echo = |session: Option<PresenceSession>| async move {
        session.map_or_else(|| "-".to_owned(), |PresenceSession(id)| id.to_string())
    };
    Router::new()
        .route("/", get(echo))
        .route("/topic/{n}", get(echo))
        .merge(routes)
        .layer(layer)
}

async fn json(app: &Router, req: axum::http::request::Builder) -> serde_json::Value {
    let res = send(app, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    serde_json::from_str(&body_text(res).await).unwrap()
}

/// A visitor as `user` on `path`; returns its cookie.
async fn visit_as(app: &Router, user: Option<&str>, path: &str) -> String {
    let mut req = get_req(path);
    if let Some(user) = user {
        req = req.header("x-user", user);
    }
    pair(&set_cookie(&send(app, req).await).unwrap())
}

#[tokio::test]
async fn counts_carry_member_names_sorted_once_and_never_hidden() {
    let (presence, _) = tracker();
    let app = members_app(&presence, Routes::new(presence.clone()));
    for (user, path) in [
        (Some("bob"), "/topic/1"),
        (Some("bob"), "/topic/1"), // a second tab
        (Some("Alice"), "/"),
        (Some("hidden:carol"), "/topic/1"),
        (Some("<script>alert(1)</script>"), "/topic/1"),
        (None, "/topic/1"),
    ] {
        visit_as(&app, user, path).await;
    }
    let res = send(&app, get_req("/presence/counts?page=/topic/1")).await;
    let text = body_text(res).await;
    assert!(!text.contains("carol"), "a hidden name leaked: {text}");
    let counts: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        counts["names"],
        serde_json::json!(["<script>alert(1)</script>", "Alice", "bob"])
    );
    assert_eq!(
        counts["page_names"],
        serde_json::json!(["<script>alert(1)</script>", "bob"])
    );
    assert_eq!(
        (counts["members"].as_u64(), counts["page"].as_u64()),
        (Some(3), Some(5))
    );

    // Without ?page=, no page list.
    let json = json(&app, get_req("/presence/counts")).await;
    assert!(json.get("page_names").is_none());
    assert_eq!(json["names"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn heartbeat_and_active_json_carry_the_names_too() {
    let (presence, _) = tracker();
    let app = members_app(&presence, Routes::new(presence.clone()));
    let cookie = visit_as(&app, Some("dave"), "/topic/2").await;
    for route in ["heartbeat", "active"] {
        let json = json(
            &app,
            post_req(&format!("/presence/{route}?page=/topic/2"))
                .header(COOKIE, cookie.clone())
                .header("x-user", "dave")
                .header(ACCEPT, "application/json"),
        )
        .await;
        assert_eq!(json["names"], serde_json::json!(["dave"]), "{route}");
        assert_eq!(json["page_names"], serde_json::json!(["dave"]), "{route}");
    }
}

#[tokio::test]
async fn a_member_moving_page_leaves_one_list_and_joins_the_other() {
    let (presence, _) = tracker();
    let app = members_app(&presence, Routes::new(presence.clone()));
    let cookie = visit_as(&app, Some("erin"), "/topic/1").await;
    let on = |page: &'static str| {
        let app = app.clone();
        async move {
            json(&app, get_req(&format!("/presence/counts?page={page}"))).await["page_names"]
                .clone()
        }
    };
    assert_eq!(on("/topic/1").await, serde_json::json!(["erin"]));
    send(
        &app,
        get_req("/topic/2")
            .header(COOKIE, cookie)
            .header("x-user", "erin"),
    )
    .await;
    assert_eq!(on("/topic/1").await, serde_json::json!([]));
    assert_eq!(on("/topic/2").await, serde_json::json!(["erin"]));
}

#[tokio::test]
async fn names_is_a_routes_setting_with_a_limit() {
    let (presence, _) = tracker();
    for n in 0..120 {
        presence
            .visit(
                SessionId::new_v4(),
                Kind::member(format!("user{n:03}")),
                "/t",
            )
            .unwrap();
    }
    let default = members_app(&presence, Routes::new(presence.clone()));
    let json_default = json(&default, get_req("/presence/counts?page=/t")).await;
    assert_eq!(json_default["names"].as_array().unwrap().len(), 50);
    assert_eq!(json_default["names"][0], "user000");
    assert_eq!(json_default["page_names"].as_array().unwrap().len(), 50);

    let two = members_app(&presence, Routes::new(presence.clone()).names(2));
    let json_two = json(&two, get_req("/presence/counts?page=/t")).await;
    assert_eq!(json_two["names"], serde_json::json!(["user000", "user001"]));
    assert_eq!(
        json_two["page_names"],
        serde_json::json!(["user000", "user001"])
    );
    assert_eq!(json_two["members"], 120, "the count is all of them");

    let none = members_app(&presence, Routes::new(presence.clone()).names(0));
    let json_none = json(&none, get_req("/presence/counts?page=/t")).await;
    assert!(json_none.get("names").is_none() && json_none.get("page_names").is_none());
}

#[test]
#[should_panic(expected = "Routes::names must be at most 1000")]
fn names_over_a_thousand_are_refused() {
    let _ = Routes::new(Presence::new()).names(1001);
}

#[tokio::test]
async fn long_paths_are_recorded_cut_to_the_page_limit() {
    let (presence, _) = tracker();
    let app = app(
        &presence,
        PresenceLayer::new(presence.clone()).count_first_request(true),
    );
    // As sent: percent-encoded, which is also what the script sends back as its page.
    let long = format!("/topic/{}", "%C3%A9".repeat(1000));
    let res = send(&app, get_req(&long)).await;
    let id = id_of(&set_cookie(&res).unwrap());
    let page = presence.session(id).unwrap().page.unwrap();
    assert!(
        page.len() <= presence_tracker::MAX_PAGE_LEN,
        "{}",
        page.len()
    );
    assert!(page.len() > presence_tracker::MAX_PAGE_LEN - 4);
    // The script asks with the same long path (encoded once more) and finds it.
    let query = long.replace('%', "%25");
    let json = json(&app, get_req(&format!("/presence/counts?page={query}"))).await;
    assert_eq!(json["page"], 1);
}

#[tokio::test]
async fn a_user_name_over_the_limit_is_served_untracked() {
    let (presence, _) = tracker();
    let long = "x".repeat(presence_tracker::MAX_USER_LEN + 1);
    let layer = PresenceLayer::new(presence.clone())
        .count_first_request(true)
        .classify(move |_| Kind::member(long.clone()));
    let app = app(&presence, layer);
    let res = send(&app, get_req("/")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(presence.counts().sessions, 0);
}

#[tokio::test]
async fn demo_admin_pages_its_session_list() {
    let (app, presence) = demo_app();
    for _ in 0..250 {
        presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    }
    let rows = |html: &str| html.matches("<tr><td><code>").count();
    let next = |html: &str| {
        html.split(r#"<a id="next" href=""#)
            .nth(1)
            .map(|rest| rest[..rest.find('"').unwrap()].to_owned())
    };
    // Every session once across the pages, 100 a page, following the links.
    let mut seen = std::collections::HashSet::new();
    let mut url = Some("/admin".to_owned());
    let mut pages = 0;
    while let Some(page) = url {
        let html = body_text(send(&app, get_req(&page)).await).await;
        assert!(rows(&html) <= 100);
        assert_eq!(html.contains(r#"id="first""#), pages > 0, "{page}");
        for row in html.split("<tr><td><code>").skip(1) {
            assert!(seen.insert(row[..36].to_owned()), "shown twice");
        }
        url = next(&html);
        pages += 1;
        assert!(pages <= 3, "more pages than needed");
    }
    assert_eq!(seen.len(), 250);
    assert_eq!(pages, 3);

    // A cursor edited by hand starts over rather than failing.
    for bad in [
        "/admin?from=x",
        "/admin?from=-1",
        "/admin?from=99999999999999999999999",
    ] {
        let res = send(&app, get_req(bad)).await;
        assert_eq!(res.status(), StatusCode::OK, "{bad}");
        assert_eq!(rows(&body_text(res).await), 100, "{bad}");
    }
}

#[tokio::test]
async fn demo_lists_names_as_text_and_hides_hidden_members() {
    let (app, presence) = demo_app();
    presence
        .visit(SessionId::new_v4(), Kind::member("<b>bold</b>"), "/topic/1")
        .unwrap();
    presence
        .visit(
            SessionId::new_v4(),
            Kind::hidden_member("carol"),
            "/topic/1",
        )
        .unwrap();
    presence
        .visit(SessionId::new_v4(), Kind::Guest, "/topic/1")
        .unwrap();
    let html = body_text(send(&app, get_req("/topic/1")).await).await;
    assert!(
        html.contains(r#"data-presence-list="members">&lt;b&gt;bold&lt;/b&gt;</span>"#),
        "{html}"
    );
    assert!(
        html.contains("&lt;b&gt;bold&lt;/b&gt; and 2 guests</span>"),
        "{html}"
    );
    assert!(!html.contains("carol"));
}

#[cfg(feature = "redis")]
#[path = "../../tests/common/redis.rs"]
mod redis_server;

/// What a demo page shows: every `data-presence` number, page count and name list, and the
/// chart's count now, in page order.
#[cfg(feature = "redis")]
fn shown(html: &str) -> Vec<(String, String)> {
    // The markup only, not the scripts that look for the same attributes.
    let html = &html[..html.find("<script").unwrap_or(html.len())];
    let mut out = Vec::new();
    for marker in [
        "data-presence=\"",
        "data-presence-page=\"",
        "data-presence-list=\"",
        "id=\"now-online\"",
    ] {
        for (at, _) in html.match_indices(marker) {
            let rest = &html[at..];
            let tag_end = rest.find('>').unwrap();
            let value = &rest[tag_end + 1..tag_end + rest[tag_end..].find('<').unwrap()];
            out.push((rest[..tag_end].to_owned(), value.to_owned()));
        }
    }
    out
}

/// A visitor of a demo node: its first page brings the cookie, the page script's report
/// (`/presence/active`) counts it. `extra` is sent with both (the demo's own cookies, a
/// `User-Agent`). Returns the `Cookie` header that carries its session.
#[cfg(feature = "redis")]
async fn demo_visitor(node: &Router, page: &str, extra: &[(&str, &str)]) -> String {
    let mut req = get_req(page)
        .header(ACCEPT, "text/html")
        .header("sec-fetch-dest", "document");
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let res = send(node, req).await;
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = pair(&set_cookie(&res).unwrap());
    demo_report(node, page, &cookie, extra).await;
    cookie
}

/// The page script's activity report on `page` with `cookie`.
#[cfg(feature = "redis")]
async fn demo_report(node: &Router, page: &str, cookie: &str, extra: &[(&str, &str)]) {
    let mut req = post_req(&format!("/presence/active?page={page}"));
    let mut cookies = cookie.to_owned();
    for (name, value) in extra {
        if *name == "cookie" {
            cookies = format!("{cookies}; {value}");
        } else {
            req = req.header(*name, *value);
        }
    }
    let res = send(node, req.header(COOKIE, cookies)).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_nodes_of_one_cluster_render_the_same_numbers_on_every_page() {
    use presence_tracker::cluster::Cluster;
    let Some(server) = redis_server::RedisServer::start() else {
        return;
    };
    let key = Key::generate();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let presence = Presence::new();
        let cluster = Cluster::builder(server.url())
            .namespace("demo-pages")
            .flush_interval(Duration::from_millis(100))
            .start(&presence)
            .await
            .unwrap();
        let view = demo::View::Cluster(cluster.clone());
        let app = demo::node_app(presence.clone(), None, key.clone(), view);
        nodes.push((app, presence, cluster));
    }
    let [(a, on_a, cluster_a), (b, on_b, cluster_b)] = &nodes[..] else {
        unreachable!()
    };
    demo_visitor(a, "/topic/1", &[("cookie", "forum_user=alice")]).await;
    demo_visitor(b, "/topic/1", &[("cookie", "forum_user=bob")]).await;
    let hidden = [("cookie", "forum_user=carol; forum_hidden=1")];
    demo_visitor(b, "/topic/2", &hidden).await;
    demo_visitor(a, "/", &[]).await;
    demo_visitor(b, "/", &[("user-agent", "Googlebot/2.1")]).await;
    // One browser whose requests reach both nodes: one session.
    let dave = [("cookie", "forum_user=dave")];
    let cookie = demo_visitor(a, "/topic/2", &dave).await;
    demo_report(b, "/topic/2", &cookie, &dave).await;
    assert_eq!((on_a.counts().sessions, on_b.counts().sessions), (3, 4));
    for cluster in [cluster_a, cluster_b, cluster_a] {
        cluster.sync().await.unwrap();
    }
    let c = cluster_b.sync().await.unwrap();
    assert_eq!(
        (
            c.online, c.members, c.hidden, c.guests, c.bots, c.sessions, c.nodes
        ),
        (5, 3, 1, 1, 1, 6, 2),
        "{c:?}"
    );

    let value = |shown: &[(String, String)], attr: &str| -> String {
        shown
            .iter()
            .find(|(tag, _)| tag.contains(attr))
            .unwrap_or_else(|| panic!("{attr} not shown: {shown:?}"))
            .1
            .clone()
    };
    for path in ["/", "/topic/1", "/topic/2", "/admin"] {
        // A flush between the two reads could move a view: the same within a few tries.
        let mut tries = 0;
        let (on_a, on_b) = loop {
            let page_a = body_text(send(a, get_req(path)).await).await;
            let page_b = body_text(send(b, get_req(path)).await).await;
            let (on_a, on_b) = (shown(&page_a), shown(&page_b));
            tries += 1;
            if on_a == on_b || tries == 20 {
                break (on_a, on_b);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(on_a, on_b, "{path}: the two nodes differ");
        for (attr, expected) in [
            (r#"data-presence="online""#, "5"),
            (r#"data-presence="members""#, "3"),
            (r#"data-presence="hidden""#, "1"),
            (r#"data-presence="guests""#, "1"),
            (r#"data-presence="bots""#, "1"),
            (r#"data-presence="nodes""#, "2"),
            (r#"data-presence="peak""#, "5"),
            (r#"data-presence-list="members""#, "alice, bob and dave"),
        ] {
            assert_eq!(value(&on_a, attr), expected, "{path}: {attr}");
        }
        let (here, browsing) = match path {
            "/" => ("2", "2 guests"),
            "/topic/1" => ("2", "alice and bob"),
            "/topic/2" => ("2", "dave and 1 guest"),
            _ => ("0", "None"),
        };
        assert_eq!(value(&on_a, r#"data-presence="page""#), here, "{path}");
        assert_eq!(
            value(&on_a, r#"data-presence-list="page""#),
            browsing,
            "{path}"
        );
        if path == "/" {
            for (topic, n) in [("/topic/1", "2"), ("/topic/2", "2"), ("/topic/3", "0")] {
                let attr = format!(r#"data-presence-page="{topic}""#);
                assert_eq!(value(&on_a, &attr), n, "{topic}");
            }
        }
        if path == "/admin" {
            assert_eq!(value(&on_a, "now-online"), "5");
        }
    }
    // Carol chose not to be listed, on any node.
    for node in [a, b] {
        let html = body_text(send(node, get_req("/topic/2")).await).await;
        assert!(!html.contains("carol"));
    }
}

#[tokio::test]
async fn only_document_navigations_set_the_page_other_requests_are_a_touch() {
    let (presence, clock) = tracker();
    let app = app(&presence, PresenceLayer::new(presence.clone()));
    let (cookie, id) = join(&app).await;
    let with = |req: axum::http::request::Builder| req.header(COOKIE, cookie.clone());
    send(&app, with(get_req("/topic/1"))).await;
    let page = |presence: &Presence| presence.session(id).unwrap().page;
    assert_eq!(page(&presence).as_deref(), Some("/topic/1"));
    let navigation = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let subresources = [
        ("/static/app.css", Some("style"), Some("text/css,*/*;q=0.1")),
        (
            "/static/app.css",
            Some("image"),
            Some("image/avif,image/webp,*/*;q=0.8"),
        ),
        ("/topic/2", Some("empty"), Some("*/*")),
        // The fetch header decides, whatever `Accept` says.
        ("/topic/2", Some("iframe"), Some(navigation)),
        // Without it (an old browser, a client), `Accept` decides.
        ("/topic/2", None, Some("*/*")),
        ("/topic/2", None, Some("application/json")),
        ("/topic/2", None, None),
    ];
    for (path, dest, accept) in subresources {
        let before = presence.session(id).unwrap().last_active;
        clock.advance(Duration::from_secs(1));
        let res = send(&app, with(sub_req(path, dest, accept))).await;
        assert!(res.status().is_success());
        let after = presence.session(id).unwrap();
        let what = format!("{path} {dest:?} {accept:?}");
        assert_eq!(after.page.as_deref(), Some("/topic/1"), "{what}");
        assert!(after.last_active > before, "{what}: a touch");
    }
    assert_eq!(presence.page_count("/topic/2"), 0);
    // A navigation without the fetch header, known by its `Accept`.
    send(&app, with(sub_req("/topic/2", None, Some(navigation)))).await;
    assert_eq!(page(&presence).as_deref(), Some("/topic/2"));
    assert_eq!(presence.page_count("/topic/1"), 0);
}
