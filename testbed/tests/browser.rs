//! End to end in headless Chromium over WebDriver: the `whos_online` demo served
//! in-process, two independent browsers, the page script doing the work.
//!
//! Needs `chromium` (or `chromium-browser`, `google-chrome`) and `chromedriver` on `PATH`,
//! or their paths in `CHROME` and `CHROMEDRIVER`. Without them the test is skipped with a
//! message, unless `CI=true`, where it fails.

#[allow(dead_code)]
#[path = "../../examples/whos_online.rs"]
mod demo;

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use presence_tracker::{Presence, SessionId};
use serde_json::json;

const HEARTBEAT: Duration = Duration::from_millis(500);

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
    let chrome = find_binary("CHROME", &["chromium", "chromium-browser", "google-chrome"]);
    let chromedriver = find_binary("CHROMEDRIVER", &["chromedriver"]);
    let (Some(chrome), Some(chromedriver)) = (chrome, chromedriver) else {
        let msg = "chromium and chromedriver are needed (on PATH, or CHROME / CHROMEDRIVER)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("browser test: {msg}");
        }
        eprintln!("browser test skipped: {msg}");
        return;
    };

    // A long idle timeout: anything that goes offline here does so through the script.
    let presence = Presence::builder()
        .idle_timeout(Duration::from_secs(60))
        .heartbeat_limit(Duration::from_secs(120))
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = demo::app(presence.clone(), Some(HEARTBEAT));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let driver = Driver::start(&chromedriver);
    let (profile_a, profile_b) = (Profile::new(1), Profile::new(2));
    let a = browser(&driver, &chrome, &profile_a).await;
    let b = browser(&driver, &chrome, &profile_b).await;
    let wait = Duration::from_secs(10);

    // Two independent visitors.
    a.goto(&format!("{base}/")).await.unwrap();
    b.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(presence.counts().online, 2);
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
    let name = b.find(Locator::Css("#name")).await.unwrap();
    name.send_keys("alice").await.unwrap();
    b.find(Locator::Css("#login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
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

    // Killed by the admin: A's next heartbeat gets 410, the script stops, and the next
    // input re-joins.
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
