//! End to end in headless Chromium over WebDriver: the `whos_online` demo served
//! in-process, two independent browsers, the page script doing the work.
//!
//! Needs `chromium` (or `chromium-browser`, `google-chrome`) and `chromedriver` on `PATH`,
//! or their paths in `CHROME` and `CHROMEDRIVER`. Without them the tests are skipped with
//! a message, unless `CI=true`, where they fail. The tests run one at a time (two
//! browsers each), so that timings are not measured against each other's load.

#[allow(dead_code)]
#[path = "../../examples/whos_online.rs"]
mod demo;

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use presence_tracker::http as presence_http;
use presence_tracker::http::ScriptTag;
use presence_tracker::{Presence, SessionId};
use serde_json::json;

const HEARTBEAT: Duration = Duration::from_millis(500);

/// One test at a time: each starts its own chromedriver and two browsers.
static BROWSERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// chromium and chromedriver, or `None` (a skip) when missing outside CI.
fn binaries() -> Option<(PathBuf, PathBuf)> {
    let chrome = find_binary("CHROME", &["chromium", "chromium-browser", "google-chrome"]);
    let chromedriver = find_binary("CHROMEDRIVER", &["chromedriver"]);
    match (chrome, chromedriver) {
        (Some(chrome), Some(chromedriver)) => Some((chrome, chromedriver)),
        _ => {
            let msg = "chromium and chromedriver are needed (on PATH, or CHROME / CHROMEDRIVER)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("browser test: {msg}");
            }
            eprintln!("browser test skipped: {msg}");
            None
        }
    }
}

/// The demo on a free loopback port, with `heartbeat` between the script's beats.
async fn serve_demo(presence: &Presence, heartbeat: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = demo::app(presence.clone(), Some(heartbeat));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn sign_in(client: &Client, name: &str) {
    let field = client.find(Locator::Css("#name")).await.unwrap();
    field.send_keys(name).await.unwrap();
    click(client, "#login").await;
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

fn find_binary(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver, killed (by its own pid) when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(binary: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh browser profile directory, removed when dropped.
struct Profile(PathBuf);

impl Profile {
    fn new(n: usize) -> Profile {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "presence-browser-test-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Profile(dir)
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new, independent browser (its own process and cookie jar).
async fn browser(driver: &Driver, chrome: &Path, profile: &Profile) -> Client {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chrome,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1024,768",
                format!("--user-data-dir={}", profile.0.display()),
            ],
        },
    });
    let caps = caps.as_object().unwrap().clone();
    let url = format!("http://127.0.0.1:{}", driver.port);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let connected = ClientBuilder::rustls()
            .expect("rustls connector")
            .capabilities(caps.clone())
            .connect(&url)
            .await;
        match connected {
            Ok(client) => return client,
            // chromedriver may still be starting.
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot open a browser session: {e}"),
        }
    }
}

async fn text(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(el) => el.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Polls `check` every 100 ms until it holds or `timeout` passes; returns the time taken.
macro_rules! eventually {
    ($timeout:expr, $what:expr, $check:expr) => {{
        let start = Instant::now();
        loop {
            if $check {
                break start.elapsed();
            }
            if start.elapsed() > $timeout {
                panic!("timed out after {:?}: {}", $timeout, $what);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }};
}

async fn session_of(client: &Client) -> SessionId {
    let cookie = client.get_named_cookie("presence_id").await.unwrap();
    let value = cookie.value();
    value[value.len() - 36..].parse().unwrap()
}

async fn set_hidden(client: &Client, hidden: bool) {
    client
        .execute(
            "const h = arguments[0];
             Object.defineProperty(document, 'hidden', {configurable: true, get: () => h});
             Object.defineProperty(document, 'visibilityState',
                 {configurable: true, get: () => h ? 'hidden' : 'visible'});
             document.dispatchEvent(new Event('visibilitychange'));",
            vec![json!(hidden)],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_see_each_other_sign_in_hide_and_leave() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;

    // A long idle timeout: anything that goes offline here does so through the script.
    let presence = Presence::builder()
        .idle_timeout(Duration::from_secs(60))
        .heartbeat_limit(Duration::from_secs(120))
        .build();
    let base = serve_demo(&presence, HEARTBEAT).await;

    let driver = Driver::start(&chromedriver);
    let (profile_a, profile_b) = (Profile::new(1), Profile::new(2));
    let a = browser(&driver, &chrome, &profile_a).await;
    let b = browser(&driver, &chrome, &profile_b).await;
    let wait = Duration::from_secs(10);

    // Two independent visitors, each a first visit (no cookie yet): counted from the
    // script's first report, within a second of the page's load.
    a.goto(&format!("{base}/")).await.unwrap();
    let took = eventually!(wait, "A is online", presence.counts().online == 1);
    assert!(took < Duration::from_secs(1), "A counted after {took:?}");
    b.goto(&format!("{base}/")).await.unwrap();
    let took = eventually!(wait, "B is online", presence.counts().online == 2);
    assert!(took < Duration::from_secs(1), "B counted after {took:?}");
    assert_eq!(presence.counts().guests, 2);
    // A rendered "1"; the script brings it up to date.
    eventually!(
        wait,
        "A shows 2 users online",
        text(&a, "[data-presence=online]").await == "2"
    );
    assert_eq!(
        text(&a, "[data-presence=page]").await,
        "2",
        "both view the index"
    );
    assert_eq!(
        a.execute("return document.hidden", vec![]).await.unwrap(),
        json!(false)
    );

    // B signs in: one registered, one guest.
    sign_in(&b, "alice").await;
    eventually!(wait, "B is signed in", text(&b, "#me").await == "alice");
    let c = presence.counts();
    assert_eq!((c.online, c.members, c.guests), (2, 1, 1));
    eventually!(
        wait,
        "A shows 1 registered and 1 guest",
        text(&a, "[data-presence=members]").await == "1"
            && text(&a, "[data-presence=guests]").await == "1"
    );

    // A hidden tab stops beating; showing it again resumes.
    let a_id = session_of(&a).await;
    let b_id = session_of(&b).await;
    set_hidden(&a, true).await;
    tokio::time::sleep(HEARTBEAT).await; // a beat already in flight
    let hidden_since = presence.session(a_id).unwrap().last_seen;
    let b_before = presence.session(b_id).unwrap().last_seen;
    tokio::time::sleep(HEARTBEAT * 5).await;
    assert_eq!(
        presence.session(a_id).unwrap().last_seen,
        hidden_since,
        "a hidden tab sends no heartbeat"
    );
    assert!(
        presence.session(b_id).unwrap().last_seen > b_before,
        "the visible tab kept beating"
    );
    set_hidden(&a, false).await;
    eventually!(
        wait,
        "A beats again once visible",
        presence.session(a_id).unwrap().last_seen > hidden_since
    );

    // Killed by the admin: A's stream ends, its heartbeat gets 410, the script stops, and
    // the next input re-joins. (First let A's stream, asked for as A came back, open: a
    // kill racing its request would be undone by it, as by any request in flight.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    presence.leave(a_id);
    tokio::time::sleep(HEARTBEAT * 3).await;
    assert!(
        presence.session(a_id).is_none(),
        "heartbeats do not revive a killed session"
    );
    a.execute(
        "window.dispatchEvent(new KeyboardEvent('keydown', {key: 'j'}))",
        vec![],
    )
    .await
    .unwrap();
    eventually!(
        wait,
        "A re-joins on input",
        presence.session(a_id).is_some()
    );
    assert_eq!(presence.session(a_id).unwrap().page.as_deref(), Some("/"));

    // Moving inside the site keeps B online (the old page's goodbye is cancelled).
    b.goto(&format!("{base}/topic/1")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        presence.session(b_id).is_some(),
        "navigation does not log B out"
    );
    assert_eq!(presence.page_count("/topic/1"), 1);

    // B leaves the site: gone within seconds through the beacon, long before the timeout.
    b.goto("about:blank").await.unwrap();
    let took = eventually!(
        wait,
        "B's beacon takes B offline",
        presence.counts().online == 1
    );
    assert!(took < Duration::from_secs(8), "left after {took:?}");
    eventually!(
        wait,
        "A shows 1 user online",
        text(&a, "[data-presence=online]").await == "1"
    );

    a.close().await.unwrap();
    b.close().await.unwrap();
    drop(driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_counts_the_visitor_as_a_guest_again() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;
    let presence = Presence::builder()
        .idle_timeout(Duration::from_secs(60))
        .build();
    let base = serve_demo(&presence, HEARTBEAT).await;
    let driver = Driver::start(&chromedriver);
    let profile = Profile::new(3);
    let a = browser(&driver, &chrome, &profile).await;
    let wait = Duration::from_secs(10);

    a.goto(&format!("{base}/topic/2")).await.unwrap();
    eventually!(wait, "A is online", presence.counts().online == 1);
    sign_in(&a, "bob").await;
    eventually!(wait, "A is signed in", text(&a, "#me").await == "bob");
    let id = session_of(&a).await;
    assert_eq!(
        presence.session(id).unwrap().kind,
        presence_tracker::Kind::member("bob")
    );

    click(&a, "#logout").await;
    eventually!(
        wait,
        "A is signed out",
        a.find(Locator::Css("#login")).await.is_ok()
    );
    eventually!(
        wait,
        "A counts as a guest",
        presence
            .session(id)
            .is_some_and(|s| s.kind == presence_tracker::Kind::Guest)
    );
    let c = presence.counts();
    assert_eq!((c.online, c.members, c.guests), (1, 0, 1));
    assert_eq!(
        a.current_url().await.unwrap().path(),
        "/topic/2",
        "back where it was"
    );
    eventually!(
        wait,
        "the page shows no registered user",
        text(&a, "#members").await == "None" && text(&a, "[data-presence=guests]").await == "1"
    );

    a.close().await.unwrap();
    drop(driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_who_is_online_block_follows_changes_within_3_seconds() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;
    // Heartbeats every 30 s: anything that shows up within 3 s comes from the page's
    // reads of the counts, not from a beat.
    let presence = Presence::builder()
        .idle_timeout(Duration::from_secs(120))
        .build();
    let base = serve_demo(&presence, Duration::from_secs(30)).await;
    let driver = Driver::start(&chromedriver);
    let (profile_a, profile_b) = (Profile::new(4), Profile::new(5));
    let a = browser(&driver, &chrome, &profile_a).await;
    let b = browser(&driver, &chrome, &profile_b).await;
    let live = Duration::from_secs(3);
    let wait = Duration::from_secs(10);

    a.goto(&format!("{base}/")).await.unwrap();
    eventually!(wait, "A is online", presence.counts().online == 1);
    eventually!(
        wait,
        "A sees itself",
        text(&a, "[data-presence=online]").await == "1"
    );
    assert!(
        text(&a, "#totals")
            .await
            .starts_with("In total there is 1 user online :: 0 registered, 0 hidden and 1 guest"),
        "{}",
        text(&a, "#totals").await
    );
    let peak_before = text(&a, "[data-presence=peak-at]").await;
    // The peak's date is shown to the second: make the next peak's differ.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // B opens a topic: A's counts, the topic's viewers, the peak and its date follow.
    b.goto(&format!("{base}/topic/1")).await.unwrap();
    eventually!(wait, "B is online", presence.counts().online == 2);
    let peak_at = demo::utc(presence.counts().peak.at);
    assert_ne!(peak_at, peak_before);
    eventually!(
        live,
        "A's block shows B",
        text(&a, "[data-presence=online]").await == "2"
            && text(&a, "[data-presence=guests]").await == "2"
            && text(&a, r#"[data-presence-page="/topic/1"]"#).await == "1"
            && text(&a, "[data-presence=peak]").await == "2"
            && text(&a, "[data-presence=peak-at]").await == peak_at
    );
    // The words follow the numbers the script wrote.
    eventually!(
        live,
        "A's block says users and guests",
        text(&a, "#totals").await
            == "In total there are 2 users online :: 0 registered, 0 hidden and 2 guests (and 0 bots)"
    );

    // A opens the same topic; B signs in with a name that is markup: A's lists show it,
    // as text, within 3 s.
    a.goto(&format!("{base}/topic/1")).await.unwrap();
    eventually!(
        wait,
        "A is on the topic",
        presence.page_count("/topic/1") == 2
    );
    let hostile = "<i>eve</i>";
    sign_in(&b, hostile).await;
    eventually!(wait, "B is signed in", presence.counts().members == 1);
    eventually!(
        live,
        "A's lists show B's name",
        text(&a, "#members").await == hostile
            && text(&a, "#browsing").await == format!("{hostile} and 1 guest")
            && text(&a, "[data-presence=members]").await == "1"
    );
    assert!(
        a.find(Locator::Css("#members i, #browsing i"))
            .await
            .is_err(),
        "a name is never markup"
    );

    // B hides: its name leaves A's lists.
    click(&b, "#hide").await;
    eventually!(wait, "B is hidden", presence.counts().hidden == 1);
    eventually!(
        live,
        "A's lists drop B's name",
        text(&a, "#members").await == "None"
            && text(&a, "#browsing").await == "2 guests"
            && text(&a, "[data-presence=hidden]").await == "1"
    );

    // B leaves: A's numbers follow.
    b.goto("about:blank").await.unwrap();
    eventually!(wait, "B is gone", presence.counts().online == 1);
    eventually!(
        live,
        "A shows one online",
        text(&a, "[data-presence=online]").await == "1"
            && text(&a, "[data-presence=page]").await == "1"
    );

    a.close().await.unwrap();
    b.close().await.unwrap();
    drop(driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_stay_eligible_for_the_back_forward_cache() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;
    let presence = Presence::builder()
        .idle_timeout(Duration::from_secs(60))
        .build();
    let base = serve_demo(&presence, HEARTBEAT).await;
    let driver = Driver::start(&chromedriver);
    let profile = Profile::new(6);
    let a = browser(&driver, &chrome, &profile).await;
    let wait = Duration::from_secs(10);

    a.goto(&format!("{base}/")).await.unwrap();
    eventually!(wait, "A is online", presence.counts().online == 1);
    // Let a few beats and reads run, as on a page someone has been reading.
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.execute("window.stillHere = 42", vec![]).await.unwrap();
    click(&a, "a[href='/topic/1']").await;
    eventually!(
        wait,
        "A is on the topic",
        presence.page_count("/topic/1") == 1
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.back().await.unwrap();
    eventually!(
        wait,
        "A is back on the index",
        a.current_url().await.unwrap().path() == "/"
    );
    let restored = a
        .execute(
            "const nav = performance.getEntriesByType('navigation')[0];
             return [window.stillHere === 42, nav.type,
                     JSON.stringify(nav.notRestoredReasons || null)];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        restored[0],
        json!(true),
        "not restored from the back/forward cache: {restored}"
    );
    // Restored pages re-join at once.
    eventually!(
        wait,
        "A is back on the index",
        presence.page_count("/") == 1
    );

    a.close().await.unwrap();
    drop(driver);
}

/// The demo with signing key `key` on `listener`, until `stop` fires; then it finishes the
/// requests in flight, like the demo's own graceful shutdown.
fn serve_until(
    presence: &Presence,
    key: presence_tracker::http::Key,
    listener: tokio::net::TcpListener,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    let app = demo::app_with_key(presence.clone(), Some(HEARTBEAT), key);
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop.await;
            })
            .await
            .unwrap();
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_two_heartbeats_keeps_the_visitor_and_the_peak() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;
    let files = Profile::new(40); // the snapshot's directory, removed at the end
    let path = files.0.join("whos_online.snapshot");
    let build = || {
        Presence::builder()
            .idle_timeout(Duration::from_secs(60))
            .heartbeat_limit(Duration::from_secs(120))
            .history_interval(Duration::from_millis(250))
            .reap_interval(Duration::from_millis(100)) // the reaper samples the history
            .snapshot_file(&path)
            .build()
    };
    // The key outlives the process in the demo (kept beside the snapshot): the same here.
    let key = presence_http::Key::generate();

    let first = build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let (stop_first, stopped) = tokio::sync::oneshot::channel();
    let server = serve_until(&first, key.clone(), listener, stopped);

    let driver = Driver::start(&chromedriver);
    let profile = Profile::new(41);
    let ada = browser(&driver, &chrome, &profile).await;
    let wait = Duration::from_secs(10);
    ada.goto(&format!("{base}/topic/2")).await.unwrap();
    sign_in(&ada, "ada").await;
    eventually!(wait, "ada is online", first.counts().members == 1);
    let id = session_of(&ada).await;
    // A few heartbeats, so the chart has points from before the restart.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let peak = first.counts().peak;
    assert_eq!(peak.online, 1);

    // The restart: save and shut the tracker down (its streams end), graceful stop, a new
    // tracker from the file, the same address.
    first.shutdown(); // saves
    stop_first.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the first server stops gracefully")
        .unwrap();
    drop(first);
    let restarted_at = std::time::SystemTime::now();
    let second = build();
    assert!(second.session(id).is_some(), "restored from the snapshot");
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => break listener,
            Err(e) if restarted_at.elapsed().unwrap() < Duration::from_secs(5) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot listen on {addr} again: {e}"),
        }
    };
    let (stop_second, stopped) = tokio::sync::oneshot::channel();
    let server = serve_until(&second, key, listener, stopped);

    // The next heartbeat reaches the restarted server and is answered as for a live session:
    // the visitor is still counted, under the same id, and nobody joined twice.
    eventually!(
        wait,
        "a heartbeat reached the restarted server",
        second
            .session(id)
            .is_some_and(|s| s.last_seen > restarted_at)
    );
    assert_eq!(session_of(&ada).await, id, "the same cookie, accepted");
    let c = second.counts();
    assert_eq!((c.online, c.members, c.sessions), (1, 1, 1));
    assert_eq!(c.peak.online, peak.online, "the peak is kept");
    // Times are kept to the millisecond, the tracker's resolution.
    let drift = match c.peak.at.duration_since(peak.at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(
        drift < Duration::from_millis(1),
        "the peak's time is kept: {drift:?}"
    );
    assert_eq!(second.online_members(10), ["ada"]);
    assert_eq!(second.page_members("/topic/2", 10), ["ada"]);
    eventually!(
        wait,
        "the page, refreshed from the restarted server, shows ada",
        text(&ada, "#members").await.contains("ada")
    );

    // The admin chart: samples from before and after the restart, the peak marked.
    ada.goto(&format!("{base}/admin")).await.unwrap();
    let mut points = 0;
    // One line per run of samples: the restart may leave a gap between two.
    for line in ada
        .find_all(Locator::Css("#history polyline"))
        .await
        .unwrap()
    {
        let attr = line.attr("points").await.unwrap().unwrap_or_default();
        points += attr.split_whitespace().count();
    }
    assert!(points >= 5, "several points: {points}");
    assert!(ada.find(Locator::Css("#history #peak")).await.is_ok());
    assert!(
        text(&ada, "#history #peak-line")
            .await
            .contains("most ever: 1 on")
    );
    if let Some(out) = std::env::var_os("PRESENCE_SCREENSHOT") {
        std::fs::write(out, ada.screenshot().await.unwrap()).unwrap();
    }

    ada.close().await.unwrap();
    stop_second.send(()).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    second.shutdown();
}

#[cfg(feature = "redis")]
#[path = "../../tests/common/redis.rs"]
mod redis_server;

/// One demo node of a cluster: its own tracker, the shared cookie key, the cluster view.
#[cfg(feature = "redis")]
async fn serve_node(
    url: &str,
    key: &presence_tracker::http::Key,
) -> (String, presence_tracker::cluster::Cluster) {
    let presence = Presence::builder()
        .idle_timeout(Duration::from_secs(60))
        .heartbeat_limit(Duration::from_secs(120))
        .build();
    let cluster = presence_tracker::cluster::Cluster::builder(url)
        .namespace("browser")
        .flush_interval(Duration::from_millis(200))
        .start(&presence)
        .await
        .unwrap();
    let app = demo::node_app(
        presence,
        Some(HEARTBEAT),
        key.clone(),
        demo::View::Cluster(cluster.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, cluster)
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_one_visitor_each_both_pages_show_the_cluster() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let Some(server) = redis_server::RedisServer::start() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;
    let key = presence_tracker::http::Key::generate();
    let (base_a, cluster_a) = serve_node(&server.url(), &key).await;
    let (base_b, _cluster_b) = serve_node(&server.url(), &key).await;

    let driver = Driver::start(&chromedriver);
    let (profile_a, profile_b) = (Profile::new(1), Profile::new(2));
    let a = browser(&driver, &chrome, &profile_a).await;
    let b = browser(&driver, &chrome, &profile_b).await;
    let wait = Duration::from_secs(10);

    // One visitor on each node: both pages show 2 online once the script refreshes.
    a.goto(&format!("{base_a}/")).await.unwrap();
    b.goto(&format!("{base_b}/")).await.unwrap();
    for (name, client) in [("A", &a), ("B", &b)] {
        eventually!(
            wait,
            format!("{name}'s node shows 2 online"),
            text(client, "[data-presence=online]").await == "2"
        );
    }
    assert_eq!(cluster_a.counts().nodes, 2);

    // B leaves: both pages show 1.
    b.goto("about:blank").await.unwrap();
    eventually!(
        wait,
        "A's node shows 1 online",
        text(&a, "[data-presence=online]").await == "1"
    );
    eventually!(
        wait,
        "the view has one session",
        cluster_a.counts().sessions == 1
    );
    b.goto(&format!("{base_b}/")).await.unwrap();
    eventually!(
        wait,
        "B, back, shows 2 online",
        text(&b, "[data-presence=online]").await == "2"
    );

    a.close().await.unwrap();
    b.close().await.unwrap();
    drop(driver);
}

/// What the server saw of one request: its path, whether it brought the presence cookie,
/// and its `Sec-Fetch-Dest`.
type Seen = std::sync::Arc<parking_lot::Mutex<Vec<(String, bool, String)>>>;

/// A page with a stylesheet, an image and a `fetch`, and a home page, behind the layer.
async fn serve_article(presence: &Presence, seen: Seen) -> String {
    use axum::http::{HeaderMap, Uri, header};
    use axum::response::IntoResponse;
    use axum::routing::get;

    async fn record(seen: &Seen, uri: &Uri, headers: &HeaderMap) {
        let cookie = headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.contains("presence_id="));
        let dest = headers
            .get("sec-fetch-dest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        seen.lock().push((uri.path().to_owned(), cookie, dest));
    }
    let handler = |body: &'static str, kind: &'static str| {
        move |axum::extract::State(seen): axum::extract::State<Seen>,
              uri: Uri,
              headers: HeaderMap| async move {
            record(&seen, &uri, &headers).await;
            (
                [
                    (header::CONTENT_TYPE, kind),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                body,
            )
                .into_response()
        }
    };
    const ARTICLE: &str = r#"<!doctype html><html><head><title>Article</title>
<link rel="stylesheet" href="/static/site.css"></head><body>
<h1>An article</h1><img id="logo" src="/static/logo.svg" alt="logo">
<p id="done"></p>
<script>
fetch('/api/comments').then(r => r.text()).then(t => {
  document.getElementById('done').textContent = t;
});
</script></body></html>"#;
    const SVG: &str = r#"<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>"#;
    let app = axum::Router::new()
        .route("/", get(handler("<!doctype html><p>home</p>", "text/html")))
        .route("/articles/42", get(handler(ARTICLE, "text/html")))
        .route(
            "/static/site.css",
            get(handler("h1 { color: teal }", "text/css")),
        )
        .route("/static/logo.svg", get(handler(SVG, "image/svg+xml")))
        .route(
            "/api/comments",
            get(handler("comments loaded", "text/plain")),
        )
        .with_state(seen)
        .layer(presence_http::PresenceLayer::new(presence.clone()).secure(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_with_a_stylesheet_an_image_and_a_fetch_stays_the_documents_page() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;
    let presence = Presence::builder().build();
    let seen = Seen::default();
    let base = serve_article(&presence, seen.clone()).await;
    let driver = Driver::start(&chromedriver);
    let profile = Profile::new(1);
    let client = browser(&driver, &chrome, &profile).await;

    // The first request is given the cookie; from the next one the visitor counts.
    client.goto(&format!("{base}/")).await.unwrap();
    client.goto(&format!("{base}/articles/42")).await.unwrap();
    eventually!(Duration::from_secs(10), "the fetch answered", {
        text(&client, "#done").await == "comments loaded"
    });
    let id = session_of(&client).await;
    // Every subresource reached the server with the cookie, each with its own destination:
    // they were counted (touches), not skipped.
    eventually!(
        Duration::from_secs(5),
        "the image and the stylesheet were loaded",
        {
            let seen = seen.lock();
            ["/static/site.css", "/static/logo.svg", "/api/comments"]
                .iter()
                .all(|p| seen.iter().any(|(path, cookie, _)| path == p && *cookie))
        }
    );
    {
        let seen = seen.lock();
        let dest = |p: &str| {
            seen.iter()
                .rev()
                .find(|(path, _, _)| path == p)
                .map(|(_, _, d)| d.clone())
                .unwrap()
        };
        assert_eq!(dest("/articles/42"), "document");
        assert_eq!(dest("/static/site.css"), "style");
        assert_eq!(dest("/static/logo.svg"), "image");
        assert_eq!(dest("/api/comments"), "empty");
        // The document came first, so a subresource setting the page would have won.
        let first = |p: &str| seen.iter().position(|(path, _, _)| path == p).unwrap();
        assert!(first("/articles/42") < first("/api/comments"));
    }
    let session = presence.session(id).expect("the visitor is online");
    assert_eq!(session.page.as_deref(), Some("/articles/42"));
    assert_eq!(presence.page_count("/articles/42"), 1);
    for p in ["/static/site.css", "/static/logo.svg", "/api/comments"] {
        assert_eq!(presence.page_count(p), 0, "{p}");
    }
    assert_eq!(presence.top_pages(10), [("/articles/42".to_owned(), 1)]);
    client.close().await.unwrap();
}

/// The POSTs the page script made to the presence routes: when each reached the server,
/// and which (`active` or `heartbeat`).
type Beats = std::sync::Arc<parking_lot::Mutex<Vec<(Instant, &'static str)>>>;

async fn record_beats(
    axum::extract::State(beats): axum::extract::State<Beats>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let what = match req.uri().path() {
        "/presence/heartbeat" => Some("heartbeat"),
        "/presence/active" => Some("active"),
        _ => None,
    };
    if let Some(what) = what.filter(|_| req.method() == axum::http::Method::POST) {
        beats.lock().push((Instant::now(), what));
    }
    next.run(req).await
}

/// A page with nothing but the script (its interval `interval`, everything else from the
/// tracker), the routes and the layer, every beat recorded in `beats`. The script polls
/// (`stream(false)`): the backoff is for polling pages; a streaming page beats once per
/// half `idle_timeout` anyway.
async fn serve_reading_page(presence: &Presence, interval: Duration, beats: Beats) -> String {
    let tag = presence_http::ScriptTag::new(presence)
        .interval(interval)
        .stream(false)
        .to_string();
    let page = format!(
        "<!doctype html><html><head><title>An article</title></head>\
         <body><p>A long article, read without touching anything.</p>{tag}</body></html>"
    );
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || {
                let page = page.clone();
                async move { axum::response::Html(page) }
            }),
        )
        .merge(presence_http::routes(presence.clone()))
        .layer(presence_http::PresenceLayer::new(presence.clone()).secure(false))
        .layer(axum::middleware::from_fn_with_state(beats, record_beats));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// The beats recorded after `since`.
fn beats_since(beats: &Beats, since: Instant) -> Vec<(Instant, &'static str)> {
    beats
        .lock()
        .iter()
        .filter(|(at, _)| *at > since)
        .copied()
        .collect()
}

/// The beats from the last activity report on: the page's own report after load may
/// come with the one of an input, and the backoff counts from the latest.
fn from_last_report(beats: Vec<(Instant, &'static str)>) -> Vec<(Instant, &'static str)> {
    let last = beats.iter().rposition(|(_, what)| *what == "active");
    let from = last.expect("an activity report after the input");
    assert!(
        beats[from + 1..]
            .iter()
            .all(|(_, what)| *what == "heartbeat"),
        "{beats:?}"
    );
    beats[from..].to_vec()
}

/// The time between consecutive beats.
fn gaps(beats: &[(Instant, &'static str)]) -> Vec<Duration> {
    beats.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

/// Checks that `gaps` start near `interval`, never shrink, reach `cap` and never pass it:
/// a backoff, read from what reached the server.
fn assert_backs_off(what: &str, gaps: &[Duration], interval: Duration, cap: Duration) {
    // Timers, the network and a busy machine each add a little.
    let slack = Duration::from_millis(400);
    assert!(gaps.len() >= 4, "{what}: too few beats: {gaps:?}");
    assert!(
        gaps[0] <= interval * 2 + slack,
        "{what}: starts at the interval: {gaps:?}"
    );
    for w in gaps.windows(2) {
        assert!(w[1] + slack >= w[0], "{what}: never shrinks: {gaps:?}");
    }
    let longest = gaps.iter().max().unwrap();
    assert!(
        *longest + slack >= cap,
        "{what}: grows to half the idle timeout: {gaps:?}"
    );
    assert!(
        *longest <= cap + slack,
        "{what}: never past half the idle timeout: {gaps:?}"
    );
}

async fn press_a_key(client: &Client) {
    client
        .execute(
            "window.dispatchEvent(new KeyboardEvent('keydown', {key: 'j'}))",
            vec![],
        )
        .await
        .unwrap();
}

/// A visible tab nobody touches: its heartbeats come further and further apart, up to half
/// the idle timeout, and the visitor stays online all along; a key press brings the next
/// beat at once and starts over; the heartbeat limit still ends it. Run with `--nocapture`
/// to see the intervals observed (BENCHMARKS.md computes requests per hour from them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_heartbeats_back_off_input_starts_over_and_the_visitor_stays_online() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;
    // A fast configuration: beats every 0.5 s in use, a 3 s cap (half the idle timeout).
    let idle_timeout = Duration::from_secs(6);
    let limit = Duration::from_secs(14);
    let cap = idle_timeout / 2;
    let presence = Presence::builder()
        .idle_timeout(idle_timeout)
        .heartbeat_limit(limit)
        .reap_interval(Duration::from_millis(100))
        .build();
    let beats = Beats::default();
    let base = serve_reading_page(&presence, HEARTBEAT, beats.clone()).await;
    let driver = Driver::start(&chromedriver);
    let profile = Profile::new(50);
    let client = browser(&driver, &chrome, &profile).await;
    let wait = Duration::from_secs(10);

    client.goto(&format!("{base}/")).await.unwrap();
    eventually!(wait, "the reader is online", presence.counts().online == 1);
    let id = session_of(&client).await;
    // Online at every look, from now until the heartbeat limit is near.
    let offline_at = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<Instant>::new()));
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (presence, offline_at, watching) =
            (presence.clone(), offline_at.clone(), watching.clone());
        tokio::spawn(async move {
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                if presence.session(id).is_none() {
                    offline_at.lock().push(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // The reader touches the page once, then reads without touching it.
    press_a_key(&client).await;
    let first_input = Instant::now();
    let reached_cap = eventually!(Duration::from_secs(20), "the beats reach the cap", {
        gaps(&beats_since(&beats, first_input))
            .last()
            .is_some_and(|g| *g + Duration::from_millis(400) >= cap)
    });
    let idle = from_last_report(beats_since(&beats, first_input));
    let idle_gaps = gaps(&idle);
    eprintln!("idle, after one input: {idle_gaps:?} (interval {HEARTBEAT:?}, cap {cap:?})");
    assert_backs_off("idle", &idle_gaps, HEARTBEAT, cap);
    assert!(reached_cap < Duration::from_secs(15));

    // Just after a beat at the cap, the next is ~3 s away: a key press brings it within
    // the interval, as an activity report, and the backoff starts over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    press_a_key(&client).await;
    let second_input = Instant::now();
    eventually!(
        Duration::from_secs(20),
        "the beats reach the cap again",
        gaps(&beats_since(&beats, second_input))
            .last()
            .is_some_and(|g| *g + Duration::from_millis(400) >= cap)
    );
    let again = beats_since(&beats, second_input);
    assert_eq!(again[0].1, "active", "{again:?}");
    let reported = again[0].0 - second_input;
    let again = from_last_report(again);
    let again_gaps = gaps(&again);
    eprintln!("after a key press: {again_gaps:?}");
    assert!(
        reported <= HEARTBEAT + Duration::from_millis(400),
        "the key press is reported within the interval, not at the next backed-off beat: \
         {reported:?}"
    );
    assert_backs_off("after input", &again_gaps, HEARTBEAT, cap);

    // No more input: online until the heartbeat limit, then the beats stop and the
    // session ends (the limit counts from the last activity, reported just after the key).
    let near_limit = second_input + limit - Duration::from_secs(1);
    tokio::time::sleep_until(near_limit.into()).await;
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    watcher.await.unwrap();
    assert_eq!(
        offline_at.lock().as_slice(),
        &[] as &[Instant],
        "online at every look"
    );
    eventually!(
        Duration::from_secs(5),
        "the session ends at the heartbeat limit",
        presence.session(id).is_none()
    );
    let after_limit = second_input + limit + Duration::from_millis(500);
    tokio::time::sleep_until((after_limit + cap + Duration::from_secs(1)).into()).await;
    assert_eq!(
        beats_since(&beats, after_limit),
        [],
        "no beat after the heartbeat limit"
    );
    let all = beats_since(&beats, first_input).len();
    let span = after_limit - first_input;
    eprintln!(
        "{all} beats in {span:?}; at a fixed {HEARTBEAT:?} it would have been about {}",
        span.as_millis() / HEARTBEAT.as_millis()
    );

    client.close().await.unwrap();
    drop(driver);
}

/// Every request the server saw: when, its path and query, and the session its cookie
/// named (`None` without one).
type RequestLog = std::sync::Arc<parking_lot::Mutex<Vec<(Instant, String, Option<SessionId>)>>>;

/// The demo, as [`serve_demo`], with every request recorded.
async fn serve_logged(presence: &Presence, heartbeat: Duration) -> (String, RequestLog) {
    use axum::extract::{Request, State};
    use axum::middleware::{self, Next};
    async fn record(
        State(log): State<RequestLog>,
        req: Request,
        next: Next,
    ) -> axum::response::Response {
        let session = req
            .headers()
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix("presence_id="))
            .find_map(|v| v.get(v.len().saturating_sub(36)..)?.parse().ok());
        let uri = req.uri().to_string();
        log.lock().push((Instant::now(), uri, session));
        next.run(req).await
    }
    let log = RequestLog::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = demo::app(presence.clone(), Some(heartbeat))
        .layer(middleware::from_fn_with_state(log.clone(), record));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, log)
}

/// The requests of session `id` since `since` whose path starts with `prefix`.
fn requests(log: &RequestLog, id: SessionId, since: Instant, prefix: &str) -> Vec<String> {
    log.lock()
        .iter()
        .filter(|(at, uri, s)| *at >= since && *s == Some(id) && uri.starts_with(prefix))
        .map(|(_, uri, _)| uri.clone())
        .collect()
}

/// Whether session `id` is held by a presence stream: it asked for one, and the server
/// shows it as seen now, twice, further apart than a polling page's requests could explain
/// (a held session reads as seen now without a request).
async fn streaming(log: &RequestLog, presence: &Presence, id: SessionId) -> bool {
    let asked = log
        .lock()
        .iter()
        .any(|(_, uri, s)| *s == Some(id) && uri.starts_with("/presence/stream"));
    let seen_now = || {
        presence
            .session(id)
            .is_some_and(|s| s.last_seen.elapsed().unwrap_or_default() < Duration::from_millis(30))
    };
    if !asked || !seen_now() {
        return false;
    }
    tokio::time::sleep(Duration::from_millis(170)).await;
    seen_now()
}

/// The process ids of the browser started with `profile` (its own processes: the profile
/// directory is in each one's command line).
fn browser_pids(profile: &Profile) -> Vec<u32> {
    let needle = format!("--user-data-dir={}", profile.0.display());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == needle.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_stream_a_second_browser_shows_within_a_second_and_nothing_is_polled() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;
    let presence = Presence::builder()
        .idle_timeout(Duration::from_secs(120))
        .build();
    // Heartbeats and reads every half second if the page polled: anything polled shows.
    let (base, log) = serve_logged(&presence, HEARTBEAT).await;
    let driver = Driver::start(&chromedriver);
    let (profile_a, profile_b) = (Profile::new(60), Profile::new(61));
    let a = browser(&driver, &chrome, &profile_a).await;
    let b = browser(&driver, &chrome, &profile_b).await;
    let wait = Duration::from_secs(10);

    a.goto(&format!("{base}/")).await.unwrap();
    eventually!(wait, "A is online", presence.counts().online == 1);
    let a_id = session_of(&a).await;
    eventually!(wait, "A streams", streaming(&log, &presence, a_id).await);
    tokio::time::sleep(Duration::from_secs(1)).await; // the first report, 0.5 s after load
    let since = Instant::now();

    b.goto(&format!("{base}/")).await.unwrap();
    eventually!(wait, "B is online", presence.counts().online == 2);
    let joined = Instant::now();
    eventually!(
        wait,
        "A shows B",
        text(&a, "[data-presence=online]").await == "2"
    );
    let took = joined.elapsed();
    assert!(took < Duration::from_secs(1), "A showed B after {took:?}");
    // A few seconds more, as a page open for a while: no read, no heartbeat.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let polled: Vec<String> = [
        "/presence/counts",
        "/presence/heartbeat",
        "/presence/active",
    ]
    .iter()
    .flat_map(|p| requests(&log, a_id, since, p))
    .collect();
    assert!(polled.is_empty(), "A polled: {polled:?}");
    assert!(streaming(&log, &presence, a_id).await);

    a.close().await.unwrap();
    b.close().await.unwrap();
    drop(driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_tab_lets_its_stream_go_and_stays_online() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;
    // A short grace: a hidden tab kept online by its grace alone would be gone.
    let presence = Presence::builder()
        .idle_timeout(Duration::from_secs(60))
        .hold_grace(Duration::from_millis(500))
        .build();
    let (base, log) = serve_logged(&presence, HEARTBEAT).await;
    let driver = Driver::start(&chromedriver);
    let profile = Profile::new(62);
    let a = browser(&driver, &chrome, &profile).await;
    let wait = Duration::from_secs(10);

    a.goto(&format!("{base}/")).await.unwrap();
    eventually!(wait, "A is online", presence.counts().online == 1);
    let id = session_of(&a).await;
    eventually!(wait, "A streams", streaming(&log, &presence, id).await);
    set_hidden(&a, true).await;
    eventually!(
        wait,
        "A released its stream",
        !requests(&log, id, Instant::now() - wait, "/presence/release").is_empty()
    );
    let hidden = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(presence.session(id).is_some(), "a hidden tab stays online");
    assert!(!streaming(&log, &presence, id).await, "and holds nothing");
    assert!(
        log.lock()
            .iter()
            .all(|(at, _, s)| *at < hidden || *s != Some(id)),
        "a hidden tab sends nothing"
    );
    set_hidden(&a, false).await;
    eventually!(
        wait,
        "A streams again",
        streaming(&log, &presence, id).await
    );

    a.close().await.unwrap();
    drop(driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_tab_shows_gone_within_the_leave_grace_and_a_second() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;
    let presence = Presence::builder()
        .idle_timeout(Duration::from_secs(120))
        .hold_grace(Duration::from_secs(30)) // gone through the leave, not the grace
        .build();
    let (base, log) = serve_logged(&presence, HEARTBEAT).await;
    let driver = Driver::start(&chromedriver);
    let (profile_a, profile_b) = (Profile::new(63), Profile::new(64));
    let a = browser(&driver, &chrome, &profile_a).await;
    let b = browser(&driver, &chrome, &profile_b).await;
    let wait = Duration::from_secs(10);

    a.goto(&format!("{base}/")).await.unwrap();
    b.goto(&format!("{base}/topic/1")).await.unwrap();
    eventually!(wait, "both online", presence.counts().online == 2);
    let b_id = session_of(&b).await;
    eventually!(wait, "B streams", streaming(&log, &presence, b_id).await);
    eventually!(
        wait,
        "A shows B",
        text(&a, "[data-presence=online]").await == "2"
    );

    // B opens a blank tab (so the browser stays), then closes the page's tab.
    let page_tab = b.window().await.unwrap();
    let blank = b.new_window(true).await.unwrap();
    b.switch_to_window(page_tab).await.unwrap();
    let closed = Instant::now();
    b.close_window().await.unwrap();
    b.switch_to_window(blank.handle).await.unwrap();
    eventually!(
        wait,
        "A shows B gone",
        text(&a, "[data-presence=online]").await == "1"
    );
    let took = closed.elapsed();
    // The routes' default leave grace is 2 s.
    assert!(
        took < Duration::from_secs(3),
        "A showed B gone after {took:?}"
    );
    assert!(presence.session(b_id).is_none());

    a.close().await.unwrap();
    b.close().await.unwrap();
    drop(driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_browser_leaves_within_the_hold_grace_and_a_second() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;
    let grace = Duration::from_secs(2);
    let presence = Presence::builder()
        .idle_timeout(Duration::from_secs(120))
        .hold_grace(grace)
        .build();
    let (base, log) = serve_logged(&presence, HEARTBEAT).await;
    let driver = Driver::start(&chromedriver);
    let (profile_a, profile_b) = (Profile::new(65), Profile::new(66));
    let a = browser(&driver, &chrome, &profile_a).await;
    let b = browser(&driver, &chrome, &profile_b).await;
    let wait = Duration::from_secs(10);

    a.goto(&format!("{base}/")).await.unwrap();
    b.goto(&format!("{base}/")).await.unwrap();
    eventually!(wait, "both online", presence.counts().online == 2);
    let b_id = session_of(&b).await;
    eventually!(wait, "B streams", streaming(&log, &presence, b_id).await);
    eventually!(
        wait,
        "A shows B",
        text(&a, "[data-presence=online]").await == "2"
    );

    // B's browser dies: no pagehide, no beacon; the server sees its connection drop.
    let pids = browser_pids(&profile_b);
    assert!(!pids.is_empty(), "B's processes");
    let killed = Instant::now();
    for pid in pids {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
    tokio::time::sleep(grace / 2).await;
    assert!(presence.session(b_id).is_some(), "within the grace");
    eventually!(
        wait,
        "A shows B gone",
        text(&a, "[data-presence=online]").await == "1"
    );
    let took = killed.elapsed();
    assert!(
        took < grace + Duration::from_secs(1),
        "A showed B gone after {took:?}"
    );
    assert!(
        requests(&log, b_id, killed, "/presence/leave").is_empty(),
        "gone through the grace, not a goodbye"
    );

    a.close().await.unwrap();
    drop(b);
    drop(driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_restored_from_the_back_forward_cache_streams_again() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;
    let presence = Presence::builder()
        .idle_timeout(Duration::from_secs(60))
        .build();
    let (base, log) = serve_logged(&presence, HEARTBEAT).await;
    let driver = Driver::start(&chromedriver);
    let profile = Profile::new(67);
    let a = browser(&driver, &chrome, &profile).await;
    let wait = Duration::from_secs(10);

    a.goto(&format!("{base}/")).await.unwrap();
    eventually!(wait, "A is online", presence.counts().online == 1);
    let id = session_of(&a).await;
    eventually!(wait, "A streams", streaming(&log, &presence, id).await);
    a.execute("window.stillHere = 42", vec![]).await.unwrap();
    click(&a, "a[href='/topic/1']").await;
    eventually!(
        wait,
        "A is on the topic",
        presence.page_count("/topic/1") == 1
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let back = Instant::now();
    a.back().await.unwrap();
    eventually!(
        wait,
        "A is back on the index",
        a.current_url().await.unwrap().path() == "/"
    );
    let restored = a
        .execute("return window.stillHere === 42", vec![])
        .await
        .unwrap();
    assert_eq!(
        restored,
        json!(true),
        "restored from the back/forward cache"
    );
    eventually!(wait, "A re-joined the index", presence.page_count("/") == 1);
    eventually!(
        wait,
        "the restored page streams again",
        !requests(&log, id, back, "/presence/stream?page=%2F").is_empty()
            && streaming(&log, &presence, id).await
    );

    a.close().await.unwrap();
    drop(driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_tabs_of_one_browser_over_http1_all_load_and_update() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;
    let presence = Presence::builder()
        .idle_timeout(Duration::from_secs(120))
        .build();
    let (base, log) = serve_logged(&presence, HEARTBEAT).await;
    let driver = Driver::start(&chromedriver);
    let (profile_a, profile_b) = (Profile::new(68), Profile::new(69));
    let a = browser(&driver, &chrome, &profile_a).await;
    let wait = Duration::from_secs(20);

    // Seven tabs, each loading a page of the site (HTTP/1.1: six connections per host for
    // them all). The first page sets the cookie, so that every tab is one session.
    let page = |n: usize| match n % 4 {
        0 => format!("{base}/"),
        t => format!("{base}/topic/{t}"),
    };
    let load = async |n: usize| {
        let started = Instant::now();
        tokio::time::timeout(wait, a.goto(&page(n)))
            .await
            .unwrap_or_else(|_| panic!("tab {n} never loaded: connections starved"))
            .unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "tab {n} loaded in {took:?}");
        assert!(
            a.find(Locator::Css("[data-presence=online]")).await.is_ok(),
            "tab {n} shows the counts"
        );
    };
    a.goto(&page(0)).await.unwrap();
    let mut tabs = vec![a.window().await.unwrap()];
    for n in 1..7 {
        let tab = a.new_window(true).await.unwrap().handle;
        a.switch_to_window(tab.clone()).await.unwrap();
        load(n).await;
        tabs.push(tab);
    }
    let id = session_of(&a).await;
    assert_eq!(presence.counts().sessions, 1, "one browser, one session");

    // Headless, only the active tab is visible. Make them all visible, as seven windows
    // side by side would be: each wants a stream; four get one, the others poll.
    let shown = Instant::now();
    for tab in &tabs {
        a.switch_to_window(tab.clone()).await.unwrap();
        set_hidden(&a, false).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = requests(&log, id, shown, "/presence/stream").len();
    assert!(asked >= 7, "every visible tab asked for a stream: {asked}");
    // Four streams held, two connections left: a page still loads.
    load(6).await;
    set_hidden(&a, false).await;

    // Another visitor arrives: every tab shows it.
    let b = browser(&driver, &chrome, &profile_b).await;
    b.goto(&format!("{base}/")).await.unwrap();
    eventually!(wait, "B is online", presence.counts().online == 2);
    for (n, tab) in tabs.iter().enumerate() {
        a.switch_to_window(tab.clone()).await.unwrap();
        eventually!(
            wait,
            format!("tab {n} shows 2 online"),
            text(&a, "[data-presence=online]").await == "2"
        );
    }

    a.close().await.unwrap();
    b.close().await.unwrap();
    drop(driver);
}

#[cfg(feature = "demo-chat")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_room_shows_joins_messages_and_leaves_live() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;
    let presence = Presence::builder()
        .idle_timeout(Duration::from_secs(120))
        .build();
    let (base, _log) = serve_logged(&presence, HEARTBEAT).await;
    let driver = Driver::start(&chromedriver);
    let (profile_a, profile_b) = (Profile::new(70), Profile::new(71));
    let a = browser(&driver, &chrome, &profile_a).await;
    let b = browser(&driver, &chrome, &profile_b).await;
    let wait = Duration::from_secs(10);

    a.goto(&format!("{base}/chat")).await.unwrap();
    sign_in(&a, "ann").await;
    eventually!(wait, "ann is in the room", text(&a, "#room").await == "ann");
    b.goto(&format!("{base}/chat")).await.unwrap();
    sign_in(&b, "bob").await;
    eventually!(
        wait,
        "ann sees bob join",
        text(&a, "#room").await == "ann and bob"
            && text(&a, "#chat-log").await.contains("bob joined")
    );
    assert_eq!(presence.page_members("/chat", 10), ["ann", "bob"]);

    let field = b.find(Locator::Css("#message")).await.unwrap();
    field.send_keys("<b>hi</b> ann").await.unwrap();
    click(&b, "#send").await;
    eventually!(
        wait,
        "ann reads bob's message, as text",
        text(&a, "#chat-log").await.contains("bob: <b>hi</b> ann")
    );
    assert!(
        a.find(Locator::Css("#chat-log b")).await.is_err(),
        "never markup"
    );

    // bob closes the room's tab: ann sees him leave (the socket's hold and the page's
    // stream go with it; the page's goodbye takes him offline after its grace).
    let page_tab = b.window().await.unwrap();
    let blank = b.new_window(true).await.unwrap();
    b.switch_to_window(page_tab).await.unwrap();
    b.close_window().await.unwrap();
    b.switch_to_window(blank.handle).await.unwrap();
    eventually!(
        wait,
        "ann sees bob leave",
        text(&a, "#room").await == "ann" && text(&a, "#chat-log").await.contains("bob left")
    );

    a.close().await.unwrap();
    b.close().await.unwrap();
    drop(driver);
}

/// A page with the counts and the script (`tag`), the presence routes and the layer, every
/// request logged.
async fn serve_page(presence: &Presence, tag: ScriptTag) -> (String, RequestLog) {
    use axum::extract::{Request, State};
    use axum::middleware::{self, Next};
    async fn record(
        State(log): State<RequestLog>,
        req: Request,
        next: Next,
    ) -> axum::response::Response {
        log.lock()
            .push((Instant::now(), req.uri().to_string(), None));
        next.run(req).await
    }
    let log = RequestLog::default();
    let page = axum::response::Html(format!(
        "<!doctype html><p><span data-presence=\"online\">0</span> online, \
         <span data-presence=\"page\">0</span> here</p>{tag}"
    ));
    let app = axum::Router::new()
        .route("/", axum::routing::get(move || async move { page }))
        .merge(presence_http::routes(presence.clone()))
        .layer(presence_http::PresenceLayer::new(presence.clone()).secure(false))
        .layer(middleware::from_fn_with_state(log.clone(), record));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, log)
}

/// A measurement (BENCHMARKS.md): the requests one visible tab makes in a minute, with the
/// stream and with today's polling (reads every 2 s, heartbeats every 30 s), each tab in its
/// own browser against its own server, at the tracker's defaults. A minute long:
/// `CI=true cargo test -p presence-tracker-testbed --test browser -- --ignored requests_per`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute long: a measurement for BENCHMARKS.md"]
async fn requests_per_visible_tab_per_minute_stream_against_polling() {
    let Some((chrome, chromedriver)) = binaries() else {
        return;
    };
    let _one_at_a_time = BROWSERS.lock().await;
    let driver = Driver::start(&chromedriver);
    let (profile_s, profile_p) = (Profile::new(80), Profile::new(81));
    let every = Duration::from_secs(2);
    let streamed = Presence::new();
    let polled = Presence::new();
    let (base_s, log_s) = serve_page(&streamed, ScriptTag::new(&streamed).refresh(every)).await;
    let (base_p, log_p) = serve_page(
        &polled,
        ScriptTag::new(&polled).refresh(every).stream(false),
    )
    .await;
    let s = browser(&driver, &chrome, &profile_s).await;
    let p = browser(&driver, &chrome, &profile_p).await;
    // The first visit gets the cookie; the measured one starts from the second.
    s.goto(&format!("{base_s}/")).await.unwrap();
    p.goto(&format!("{base_p}/")).await.unwrap();
    s.goto(&format!("{base_s}/")).await.unwrap();
    p.goto(&format!("{base_p}/")).await.unwrap();
    // After the first second (the page, the script, the stream or first read, the first
    // report), a minute of a visible tab nobody touches.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let count = |log: &RequestLog| {
        log.lock()
            .iter()
            .filter(|(at, uri, _)| *at >= from && uri.starts_with("/presence/"))
            .map(|(_, uri, _)| uri.split('?').next().unwrap_or("").to_owned())
            .collect::<Vec<_>>()
    };
    let (stream_requests, poll_requests) = (count(&log_s), count(&log_p));
    println!(
        "requests per visible tab per minute: stream {} {:?}, polling {}",
        stream_requests.len(),
        stream_requests,
        poll_requests.len()
    );
    assert!(stream_requests.is_empty(), "{stream_requests:?}");
    assert!(
        (28..=34).contains(&poll_requests.len()),
        "{}",
        poll_requests.len()
    );
    s.close().await.unwrap();
    p.close().await.unwrap();
    drop(driver);
}
