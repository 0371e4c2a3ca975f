//! Real `redis-server` processes for the cluster tests: each on a free loopback port, in its
//! own temporary directory, without persistence, stopped by its PID when dropped.
//!
//! Without `redis-server` on the PATH the tests are skipped with a message, except under
//! `CI=true`, where that is a failure.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `redis-server` can run here; panics under `CI=true` when it cannot.
pub fn available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "redis-server is not installed, and CI=true: the cluster tests need it (apt-get install redis-server)"
        );
        eprintln!("skipped: redis-server is not installed");
    }
    found
}

pub fn free_port() -> u16 {
    // Redis Cluster also listens on port + 10000: keep both free.
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One `redis-server`.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    extra: Vec<String>,
}

fn ping(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    // A server that wants a password answers, too: it is up.
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
}

impl RedisServer {
    /// A server on a free port; `None` (test skipped) when redis-server is missing outside CI.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// A server on `port` (a test that first had nothing there).
    pub fn start_on(port: u16) -> Self {
        Self::spawn_on(port, &[])
    }

    pub fn start_with(extra: &[&str]) -> Option<Self> {
        if !available() {
            return None;
        }
        Some(Self::spawn_on(free_port(), extra))
    }

    fn spawn_on(port: u16, extra: &[&str]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("presence-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let mut server = RedisServer {
            port,
            child: None,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(self.port) {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {}", self.pid());
    }

    /// Kills the server (SIGKILL): its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        self.spawn();
    }

    /// Kills it and starts it again from the dump its last `SAVE` wrote: whatever was
    /// written since is lost, as after a failover to a lagging replica or a restore.
    pub fn restart_from_dump(&mut self) {
        self.kill();
        assert!(self.dir.join("dump.rdb").exists(), "no SAVE before");
        self.spawn();
    }

    /// Stalls it (SIGSTOP): connections stay open, nothing answers.
    pub fn stall(&self) {
        self.signal("-STOP");
    }

    /// Resumes a stalled server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    pub fn answers(&self) -> bool {
        ping(self.port)
    }

    /// `(calls of cmd, all calls)` from `INFO commandstats`, leaving out INFO and CONFIG
    /// (script-internal commands included).
    pub fn commandstats(&self, cmd: &str) -> (u64, u64) {
        let (mut calls, mut total) = (0, 0);
        for l in self.cli(&["INFO", "commandstats"]).lines() {
            let Some(rest) = l.strip_prefix("cmdstat_") else {
                continue;
            };
            if rest.starts_with("info:") || rest.starts_with("config") {
                continue;
            }
            let n: u64 = rest
                .split("calls=")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if rest.starts_with(&format!("{cmd}:")) {
                calls += n;
            }
            total += n;
        }
        (calls, total)
    }

    /// Every key and every value in the server, as text (binary values lossily): to show
    /// that a name is stored nowhere.
    #[allow(dead_code)]
    pub fn dump_all(&self) -> String {
        let mut out = String::new();
        for key in self.cli(&["--scan"]).lines() {
            out.push_str(key);
            out.push('\n');
            let read: &[&str] = match self.cli(&["TYPE", key]).as_str() {
                "string" => &["GET"],
                "hash" => &["HGETALL"],
                "zset" => &["ZRANGE", "0", "-1"],
                "set" => &["SMEMBERS"],
                "list" => &["LRANGE", "0", "-1"],
                other => panic!("key {key:?} of type {other:?}"),
            };
            let mut args = vec![read[0], key];
            args.extend_from_slice(&read[1..]);
            out.push_str(&self.cli(&args));
            out.push('\n');
        }
        out
    }

    /// One command through `redis-cli`, its output trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stalled server must be resumed to die cleanly; SIGKILL works either way.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Option<Self> {
        if !available() {
            return None;
        }
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
            ])?);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not become ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(RedisCluster { nodes })
    }
}

/// Polls `f` until it holds or `within` passes (a failed assertion naming `what`); returns
/// how long it took.
pub async fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The hash tags the cluster tests spread their namespace over: 1, or what
/// `PRESENCE_TEST_SHARDS` says (CI runs the cluster tests with 16 too).
pub fn shards() -> usize {
    std::env::var("PRESENCE_TEST_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}
