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

    /// The CPU time the server used so far, seconds (`used_cpu_sys + used_cpu_user`).
    pub fn cpu(&self) -> f64 {
        self.cli(&["INFO", "cpu"])
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                matches!(k, "used_cpu_sys" | "used_cpu_user")
                    .then(|| v.trim().parse::<f64>().ok())?
            })
            .sum()
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

    /// One command per key through one `redis-cli`: `cmd key`, an output line for each.
    pub fn cli_each(&self, cmd: &str, keys: &[&str]) -> Vec<String> {
        let mut child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run redis-cli");
        let mut input = String::new();
        for k in keys {
            // Quoted, so that a key with a space or a brace stays one argument.
            input.push_str(&format!(
                "{cmd} \"{}\"\n",
                k.replace('\\', "\\\\").replace('"', "\\\"")
            ));
        }
        let mut stdin = child.stdin.take().expect("stdin");
        std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().expect("redis-cli output");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .collect()
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
        Self::start_with(&[])
    }

    /// A cluster whose servers get `extra` settings after the harness's own (a setting
    /// given twice takes the later value), e.g. `["--cluster-require-full-coverage", "no"]`
    /// or `["--cluster-node-timeout", "1000"]`.
    pub fn start_with(extra: &[&str]) -> Option<Self> {
        if !available() {
            return None;
        }
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
        ];
        args.extend_from_slice(extra);
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(RedisServer::start_with(&args)?);
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
        let cluster = RedisCluster { nodes };
        cluster.wait_ok(Duration::from_secs(20));
        Some(cluster)
    }

    /// Waits until every running master says `cluster_state:ok`; returns how long it took.
    pub fn wait_ok(&self, within: Duration) -> Duration {
        let start = Instant::now();
        while !self
            .nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                start.elapsed() < within,
                "the Redis Cluster did not become ok within {within:?}: {:?}",
                self.states()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    /// `cluster_state` as each master sees it (`"down"` for a master that does not answer).
    pub fn states(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| {
                if !n.answers() {
                    return "down".to_owned();
                }
                n.cli(&["CLUSTER", "INFO"])
                    .lines()
                    .find_map(|l| l.strip_prefix("cluster_state:"))
                    .unwrap_or("?")
                    .trim()
                    .to_owned()
            })
            .collect()
    }

    /// Waits until every master but `except` says `cluster_state:<state>` (`ok`, `fail`);
    /// returns how long it took.
    pub fn wait_state(&self, except: usize, state: &str, within: Duration) -> Duration {
        let start = Instant::now();
        let want = format!("cluster_state:{state}");
        while !self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != except)
            .all(|(_, n)| n.cli(&["CLUSTER", "INFO"]).contains(&want))
        {
            assert!(
                start.elapsed() < within,
                "the other masters did not say {want} within {within:?}: {:?}",
                self.states()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    /// Waits until every master but `i` flags master `i` as failed (`fail` in its
    /// `CLUSTER NODES` line, past the `fail?` suspicion); returns how long it took.
    pub fn wait_flagged_fail(&self, i: usize, within: Duration) -> Duration {
        let start = Instant::now();
        let addr = format!("127.0.0.1:{}@", self.nodes[i].port);
        let flagged = |n: &RedisServer| {
            n.cli(&["CLUSTER", "NODES"]).lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 2 && f[1].starts_with(&addr) && f[2].split(',').any(|x| x == "fail")
            })
        };
        while !self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .all(|(_, n)| flagged(n))
        {
            assert!(
                start.elapsed() < within,
                "master {i} not flagged failed within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    /// Kills master `i` (SIGKILL, by its PID): its data is gone; its directory and its
    /// `nodes.conf` stay, for [`restart_master`](Self::restart_master).
    pub fn kill_master(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts master `i` again on its port with its `nodes.conf`, empty (no dump): it
    /// rejoins as the same master with the same slots. Waits until every master says
    /// `cluster_state:ok` (within `within`); returns how long that took after the start.
    pub fn restart_master(&mut self, i: usize, within: Duration) -> Duration {
        assert!(
            self.nodes[i].dir.join("nodes.conf").exists(),
            "master {i} has no nodes.conf"
        );
        self.nodes[i].restart_empty();
        assert_eq!(
            self.nodes[i].cli(&["DBSIZE"]),
            "0",
            "the restarted master is empty"
        );
        self.wait_ok(within)
    }

    /// The slot of `key` (its hash tag's), as Redis computes it.
    pub fn keyslot(&self, key: &str) -> u16 {
        let n = self
            .nodes
            .iter()
            .find(|n| n.answers())
            .expect("a master up");
        n.cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// The slot ranges master `i` serves, from its own `CLUSTER NODES` line.
    pub fn slots_of(&self, i: usize) -> Vec<(u16, u16)> {
        let nodes = self.nodes[i].cli(&["CLUSTER", "NODES"]);
        let me = nodes
            .lines()
            .find(|l| l.contains("myself"))
            .expect("a myself line");
        me.split_whitespace()
            .skip(8)
            .filter(|f| !f.starts_with('['))
            .map(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                None => (r.parse().unwrap(), r.parse().unwrap()),
            })
            .collect()
    }

    /// Which master serves `slot`.
    pub fn master_of_slot(&self, slot: u16) -> usize {
        (0..self.nodes.len())
            .find(|&i| {
                self.slots_of(i)
                    .iter()
                    .any(|&(a, b)| (a..=b).contains(&slot))
            })
            .expect("every slot is served")
    }

    /// Which master serves `key`.
    pub fn master_of_key(&self, key: &str) -> usize {
        self.master_of_slot(self.keyslot(key))
    }

    /// Resets every master's `INFO` statistics (`CONFIG RESETSTAT`).
    pub fn reset_stats(&self) {
        for n in &self.nodes {
            n.cli(&["CONFIG", "RESETSTAT"]);
        }
    }

    /// For each master, the calls of `cmd` (e.g. `evalsha`) since the last reset, from
    /// `INFO commandstats`.
    pub fn calls_per_master(&self, cmd: &str) -> Vec<u64> {
        self.nodes.iter().map(|n| n.commandstats(cmd).0).collect()
    }

    /// For each master, the CPU time it used so far (`used_cpu_sys + used_cpu_user` of
    /// `INFO cpu`, seconds; not reset by `CONFIG RESETSTAT`: take differences).
    pub fn cpu_per_master(&self) -> Vec<f64> {
        self.nodes.iter().map(RedisServer::cpu).collect()
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
