//! The demo server saves its snapshot as soon as SIGTERM arrives, even while a client holds a
//! request open forever (a slowloris, a POST whose body never comes): axum's graceful
//! shutdown would wait for that connection, and a service manager's SIGKILL would then lose
//! every session. Runs the demo's real binary, which `cargo test` builds with the examples.
#![cfg(unix)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The demo binary beside this test's own (`target/<profile>/examples/whos_online`).
fn demo_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("examples").join("whos_online");
    if bin.exists() {
        return Some(bin);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the demo binary is missing at {}: `cargo test --workspace --all-features` builds it",
        bin.display()
    );
    eprintln!(
        "skipped: the demo binary is not built (cargo build --example whos_online --features axum)"
    );
    None
}

fn get(port: u16, cookie: Option<&str>) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: x\r\nAccept: text/html\r\nSec-Fetch-Dest: document\r\n{cookie}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn sigterm_saves_at_once_though_a_request_never_ends() {
    let Some(bin) = demo_binary() else {
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("presence-shutdown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot = dir.join("demo.snapshot");
    let mut child = Command::new(&bin)
        .env("PORT", port.to_string())
        .env("PRESENCE_SNAPSHOT", &snapshot)
        .env("PRESENCE_DRAIN_SECS", "60")
        .env("RUST_LOG", "warn")
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let pid = child.id().to_string();
    let stop = |child: &mut std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    };

    let start = Instant::now();
    let first = loop {
        if let Some(page) = get(port, None) {
            break page;
        }
        if start.elapsed() > Duration::from_secs(20) {
            stop(&mut child);
            panic!("the demo did not answer");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // A visitor counts from the request that brings its cookie back.
    let cookie = first
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|c| c.split(';').next())
        .map(str::to_owned);
    let Some(cookie) = cookie else {
        stop(&mut child);
        panic!("no cookie in {first}");
    };
    assert!(get(port, Some(&cookie)).is_some());

    // A request that never ends: headers promise a body that never comes.
    let mut stuck = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stuck,
        "POST /presence/leave HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!snapshot.exists());

    let term = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -TERM {pid}");
    while !snapshot.exists() && term.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = term.elapsed();
    let saved = snapshot.exists();
    let still_running = child.try_wait().ok().flatten().is_none();
    drop(stuck);
    stop(&mut child);
    assert!(saved, "no snapshot {took:?} after SIGTERM");
    println!(
        "snapshot written {took:?} after SIGTERM; a request still open, the server draining: {still_running}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
}
