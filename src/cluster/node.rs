//! The node's flush task: drains what changed in the tracker, hands each session to the
//! flush of the tag that keeps it (one [`Flusher`] per hash tag, see [`tags`]), runs the
//! tags' flushes together (their calls reach each Redis server in one round trip), and
//! merges what they read back into one view.
//!
//! A session whose tag changes (a guest signs in, so it is now kept by its user's tag) is
//! marked moved in its former tag, where it counts no more for any node, and starts in the
//! new one. A node that sends a signed-in session for the first time marks it moved in its
//! id's tag too, in case another node saw it there as a guest: that node's renewals keep
//! its claim on the mark and count nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::join_all;
use tokio::sync::{Semaphore, mpsc};

use super::conn::{self, Conn, Lua};
use super::log::Diagnostics;
use super::pages::PageBook;
use super::task::{Command, Flusher, GATE, Pending, read_spread};
use super::{ClusterCounts, ClusterError, Shared, tags};
use crate::{Peak, Presence, SessionId, UserId};

/// Checks that every live node of the namespace spreads it over as many tags, and notes
/// this node's count: refused (`{name, k}` of a node that disagrees) when another live node
/// uses another one, so that two views never split a namespace silently.
/// KEYS[1] = "{ns}:shards"; ARGV: node name, tags, entry lifetime ms, "set" or "del".
const SHAPE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[4] == 'del' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return {}
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local k, exp = string.match(all[i + 1], '^(%d+):(%d+)$')
  if not exp or tonumber(exp) < now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] ~= ARGV[1] and k ~= ARGV[2] then
    return { all[i], k }
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. (now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return {}
"#;

pub(super) struct Node {
    shared: Arc<Shared>,
    presence: Presence,
    client: redis::Client,
    /// One flush per hash tag.
    pub(super) tags: Vec<Flusher>,
    /// Sessions last handed to another tag than their id's (signed-in ones, kept by their
    /// user's tag), and that tag: with the id's own tag, where a change may have to undo
    /// something. Empty with one tag.
    placed: HashMap<SessionId, u16>,
    shape_script: Lua,
    /// When the namespace's shape is checked next (`None`: now), and whether a check ever
    /// passed.
    shape_due: Option<Instant>,
    shape_ok: bool,
    /// The newest erasure tombstone taken in (ms, Redis time), and the namespace's key.
    erase_cursor: u64,
    erase_key: Option<Vec<u8>>,
    /// The last cluster peak seen, sent back so that it survives a lost Redis.
    peak: (usize, i64),
    /// Which tags' last flush succeeded (a bye goes only to those).
    ok: Vec<bool>,
    /// A Redis Cluster's masters, as URLs, from the last connection: a reconnect tries them
    /// all, so it works with the URL's own node down.
    seeds: Vec<String>,
    log: Diagnostics,
}

impl Node {
    pub(super) fn new(shared: Arc<Shared>, presence: Presence, client: redis::Client) -> Self {
        let k = shared.prefixes.len();
        let book = Arc::new(parking_lot::Mutex::new(PageBook::new(k)));
        let mut tags: Vec<Flusher> = (0..k)
            .map(|t| Flusher::new(shared.clone(), presence.clone(), t, book.clone()))
            .collect();
        // One server until a Redis Cluster's slot map says otherwise.
        let gate = Arc::new(Semaphore::new(GATE));
        for t in &mut tags {
            t.gate = gate.clone();
        }
        // Enable the log before reading the sessions: a change in between is seen twice,
        // which the pending maps absorb; none is missed.
        presence.changes().enable();
        let mut placed = HashMap::new();
        for s in presence.sessions() {
            let t = tags::of_session(s.id, &s.kind, k);
            tags[t].add_pending(s.id, Pending::Check);
            if t != tags::of_id(s.id, k) {
                placed.insert(s.id, t as u16);
            }
        }
        Node {
            shared,
            presence,
            client,
            tags,
            placed,
            shape_script: Lua::new(SHAPE_LUA),
            shape_due: None,
            shape_ok: false,
            erase_cursor: 0,
            erase_key: None,
            peak: (0, 0),
            ok: vec![false; k],
            seeds: Vec::new(),
            log: Diagnostics::default(),
        }
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(self.shared.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _ = self.flush(false).await;
                }
                command = commands.recv() => match command {
                    Some(Command::Sync(reply)) => {
                        let _ = reply.send(self.flush(true).await);
                    }
                    Some(Command::Shutdown(reply)) => {
                        self.bye().await;
                        let _ = reply.send(());
                        break;
                    }
                    // Every handle dropped without shutdown: leave as shutdown would.
                    None => {
                        self.bye().await;
                        break;
                    }
                },
            }
        }
    }

    /// Hands what changed to the tags: a session to the tag that keeps it now, and to any
    /// tag that has something of it (it moved, or ended).
    pub(super) fn collect(&mut self) {
        let k = self.tags.len();
        for (id, user) in self.presence.changes().drain_left() {
            let t = match &user {
                Some(u) => tags::of_user(u.as_str(), k),
                None => tags::of_id(id, k),
            };
            self.route(id, Some(t), Pending::Leave);
        }
        for id in self.presence.changes().drain() {
            let t = self
                .presence
                .session_lease(id)
                .map(|(info, _)| tags::of_session(id, &info.kind, k));
            self.route(id, t, Pending::Check);
            // A signed-in session this node sends for the first time may be a guest's that
            // signed in: another node that saw the guest (no sticky sessions) still counts
            // it in its id's tag. Marked moved there, it counts there no more.
            if let Some(t) = t {
                let guest_tag = tags::of_id(id, k);
                if t != guest_tag && !self.tags[t].has_sent(&id) && !self.tags[guest_tag].holds(&id)
                {
                    self.tags[guest_tag].add_pending(id, Pending::Moved);
                }
            }
        }
    }

    /// `p` for session `id` in tag `t` (where it is now, or where it left from), and a check
    /// in the other tags that may have something of it: its id's, and the one it was last
    /// handed to.
    fn route(&mut self, id: SessionId, t: Option<usize>, p: Pending) {
        let k = self.tags.len();
        let own = tags::of_id(id, k);
        let before = self.placed.get(&id).map(|&b| usize::from(b));
        if let Some(t) = t {
            self.tags[t].add_pending(id, p);
        }
        for other in [Some(own), before].into_iter().flatten() {
            if Some(other) != t && self.tags[other].holds(&id) {
                self.tags[other].add_pending(id, Pending::Check);
            }
        }
        match t {
            Some(t) if t != own && p != Pending::Leave => {
                self.placed.insert(id, t as u16);
            }
            _ => {
                self.placed.remove(&id);
            }
        }
    }

    async fn connection(&mut self) -> Result<Conn, ClusterError> {
        if let Some(c) = self.shared.conn.lock().clone() {
            return Ok(c);
        }
        let timeout = self.shared.call_timeout;
        let url = self.shared.url.clone();
        let mut c = tokio::time::timeout(
            timeout,
            conn::connect(&url, &self.client, timeout, &self.seeds),
        )
        .await
        .map_err(|_| ClusterError::Timeout(timeout))??;
        let map = conn::slot_map(&mut c).await;
        if let Some(map) = &map {
            let mut seeds: Vec<String> = map
                .iter()
                .map(|(_, _, addr)| conn::with_address(&url, addr))
                .collect();
            seeds.sort();
            seeds.dedup();
            seeds.push(url.clone());
            self.seeds = seeds;
        }
        if self.tags.len() > 1 {
            // The tags of one server share its gate (see `task::GATE`).
            let servers = conn::servers(map.as_deref(), &self.shared.tag_slots());
            let gates: Vec<Arc<Semaphore>> = (0..=servers.iter().copied().max().unwrap_or(0))
                .map(|_| Arc::new(Semaphore::new(GATE)))
                .collect();
            for (t, server) in self.tags.iter_mut().zip(servers) {
                t.gate = gates[server].clone();
            }
        }
        *self.shared.conn.lock() = Some(c.clone());
        Ok(c)
    }

    fn fail(&mut self, e: ClusterError) -> Result<ClusterCounts, ClusterError> {
        {
            let mut view = self.shared.view.lock();
            view.stale = true;
            // Nothing of this flush reached Redis: no part of the view is current.
            view.partial = false;
        }
        if matches!(e, ClusterError::Timeout(_)) {
            // A stalled server: drop the connection, and with it the calls queued on it,
            // rather than pile one more on it every flush. The next flush connects anew
            // (bounded by the same timeout), so nothing waits in memory but `pending`.
            *self.shared.conn.lock() = None;
        }
        self.log.failed(&self.shared.node_id, &e);
        Err(e)
    }

    /// Whether this node may share the namespace: every live node must spread it over as
    /// many tags. Checked before the first flush, then every half node timeout.
    async fn check_shape(&mut self, conn: &mut Conn) -> Result<(), ClusterError> {
        if self.shape_due.is_some_and(|at| Instant::now() < at) {
            return Ok(());
        }
        let s = &*self.shared;
        let key = format!("{}shards", s.base_prefix);
        let life = s.node_timeout * 2;
        let args = vec![
            s.node_id.as_bytes().to_vec(),
            self.tags.len().to_string().into_bytes(),
            u64::try_from(life.as_millis())
                .unwrap_or(u64::MAX)
                .to_string()
                .into_bytes(),
            b"set".to_vec(),
        ];
        let answer = tokio::time::timeout(
            s.call_timeout,
            conn::eval_many(conn, &self.shape_script, &key, &[args]),
        )
        .await
        .map_err(|_| ClusterError::Timeout(s.call_timeout))??
        .pop()
        .ok_or_else(|| ClusterError::Protocol("shape check: no answer".into()))??;
        let other: Vec<String> = redis::from_redis_value(answer)
            .map_err(|e| ClusterError::Protocol(format!("shape check: {e}")))?;
        if let [_, theirs] = other.as_slice() {
            return Err(ClusterError::ShardsMismatch {
                ours: self.tags.len(),
                theirs: theirs.parse().unwrap_or(0),
            });
        }
        self.shape_due = Some(Instant::now() + (s.node_timeout / 2).max(s.flush_interval));
        Ok(())
    }

    pub(super) async fn flush(&mut self, asked: bool) -> Result<ClusterCounts, ClusterError> {
        self.collect();
        let mut conn = match self.connection().await {
            Ok(c) => c,
            Err(e) => return self.fail(e),
        };
        match self.check_shape(&mut conn).await {
            Ok(()) => self.shape_ok = true,
            Err(e @ ClusterError::ShardsMismatch { .. }) => return self.fail(e),
            // On a Redis Cluster, the shape's key out of reach (its master down) but checked
            // before: the tags go on, and the check is tried again at the next flush. On one
            // server, Redis is down: the flush fails now, not a timeout later.
            Err(e) if self.shape_ok && matches!(conn, Conn::Cluster(_)) => {
                tracing::debug!(error = %e, "presence cluster: shape check failed");
            }
            Err(e) => return self.fail(e),
        }
        // Users another node erased: ended here first, so that their leaves go out now.
        match self.erasures(&mut conn).await {
            Ok(true) => self.collect(),
            Ok(false) => {}
            // One server that does not answer: the flush would not either.
            Err(e) if matches!(conn, Conn::Single(_)) && unreachable(&e) => return self.fail(e),
            Err(e) => tracing::debug!(error = %e, "presence cluster: erasure check failed"),
        }
        let peak = self.peak;
        for t in &mut self.tags {
            t.peak = peak;
        }
        for t in &mut self.tags {
            t.prepare();
        }
        let mut results = join_all(self.tags.iter_mut().map(|t| t.flush(conn.clone()))).await;
        // Pages another tag's inbox moved meanwhile: their tags send them now (a round
        // or two, with no session operation left).
        for _ in 0..2 {
            let again: Vec<usize> = (0..self.tags.len())
                .filter(|&i| results[i].is_ok() && self.tags[i].pages_dirty())
                .collect();
            if again.is_empty() {
                break;
            }
            let more = join_all(
                self.tags
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| again.contains(i))
                    .map(|(_, t)| t.flush(conn.clone())),
            )
            .await;
            for (i, r) in again.into_iter().zip(more) {
                results[i] = r;
            }
        }
        self.ok = results.iter().map(Result::is_ok).collect();
        let view = self.merge();
        *self.shared.view.lock() = view;
        // The first failure says what went wrong; a node id in use says it best.
        let error = results
            .into_iter()
            .filter_map(Result::err)
            .reduce(|a, b| match b {
                ClusterError::NodeIdInUse(_) => b,
                _ => a,
            });
        if let Some(e) = error {
            if view.partial {
                // Some tags answered: the connection works (a Redis Cluster reconnects to
                // each master itself), and the view says which it is.
                self.log.failed(&self.shared.node_id, &e);
                return Err(e);
            }
            return self.fail(e);
        }
        self.log.succeeded(&self.shared.node_id, view.stale);
        if !view.stale {
            // Asked for (`sync`): every cached key now; on the tick, those due.
            let min_age = if asked {
                Duration::ZERO
            } else {
                self.shared.flush_interval.mul_f32(0.9)
            };
            if let Err(e) = self.refresh(&conn, min_age).await {
                tracing::debug!(error = %e, "presence cluster: cache refresh failed");
            }
        }
        Ok(view)
    }

    /// The view of all tags: sums of their last complete parts. It is `stale` while any
    /// part is not current, and `partial` when some are and others are not (a Redis Cluster
    /// master down with `cluster-require-full-coverage no`).
    fn merge(&mut self) -> ClusterCounts {
        let fresh = self.tags.iter().filter(|t| t.fresh).count();
        let mut v = ClusterCounts::empty(SystemTime::now());
        v.as_of = self
            .tags
            .iter()
            .map(|t| t.last.as_of)
            .min()
            .unwrap_or(v.as_of);
        for t in &self.tags {
            let l = &t.last;
            v.online += l.online;
            v.members += l.members;
            v.hidden += l.hidden;
            v.guests += l.guests;
            v.bots += l.bots;
            v.sessions += l.sessions;
            v.nodes = v.nodes.max(l.nodes);
        }
        v.stale = fresh < self.tags.len();
        v.partial = v.stale && fresh > 0;
        // The peak is kept by the first tag (each node sends back the last one it saw): a
        // sum of the tags' own peaks would not be one.
        let mut peak = self.tags[0].last.peak;
        if self.tags.len() > 1 && !v.stale && v.online > peak.online {
            peak = Peak {
                online: v.online,
                at: v.as_of,
            };
        }
        if self.tags[0].fresh || self.tags.len() > 1 {
            self.peak = (
                peak.online,
                i64::try_from(
                    peak.at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis()),
                )
                .unwrap_or(0),
            );
        }
        v.peak = peak;
        v
    }

    /// Erases here the users another node erased: the tombstones stored since the last
    /// check, matched against the names this node knows (one hash per name, only when a
    /// tombstone is new). The sessions ended go out as leaves at the next flush.
    async fn erasures(&mut self, conn: &mut Conn) -> Result<bool, ClusterError> {
        let (key, tombs) = super::erase::newer(
            conn,
            &self.shared.prefixes[0],
            self.erase_cursor,
            self.shared.call_timeout,
        )
        .await?;
        if tombs.is_empty() {
            return Ok(false);
        }
        let Some(key) = key.or_else(|| self.erase_key.clone()) else {
            return Ok(false);
        };
        self.erase_key = Some(key.clone());
        self.erase_cursor = tombs.iter().map(|t| t.1).max().unwrap_or(self.erase_cursor);
        let tombs: std::collections::HashSet<String> = tombs.into_iter().map(|t| t.0).collect();
        let users: Vec<UserId> = self
            .presence
            .find_users(|name| tombs.contains(&super::erase::tombstone(&key, name)));
        for user in &users {
            let ended = self.presence.erase_user(user.as_str()).unwrap_or(0);
            tracing::info!(
                node = %self.shared.node_id,
                sessions = ended,
                "presence cluster: erased a user another node erased"
            );
        }
        Ok(!users.is_empty())
    }

    /// Reads again the cached keys that are due, in one round trip per tag.
    async fn refresh(&mut self, conn: &Conn, min_age: Duration) -> Result<(), ClusterError> {
        let s = &*self.shared;
        let due = s.cache.due(min_age);
        if due.is_empty() {
            return Ok(());
        }
        let answers = read_spread(conn, &s.read_script, s, &due, s.call_timeout).await?;
        for (read, answer) in due.into_iter().zip(answers) {
            s.cache.store(read, answer);
        }
        Ok(())
    }

    /// The final flush: what changed, then each tag's bye, and this node's entry in the
    /// namespace's shape. Best effort: Redis down means the node timeout does it instead.
    async fn bye(&mut self) {
        // A tracker with a snapshot file saves its sessions at shutdown and restores them at
        // the next start: a restart is coming, so its sessions stay in the view ("parked")
        // and expire on their own time if the node does not come back.
        let mode = if self.presence.has_snapshot_file() {
            "k"
        } else {
            "b"
        };
        if mode == "k" && self.tags.len() > 1 {
            // A parked session's page is kept by another tag than the session, which its
            // expiry cannot reach: spread over several tags, a parked node's sessions stay
            // counted but leave their pages now (the restarted node counts them again).
            for t in &mut self.tags {
                t.drop_pages();
            }
        }
        let flushed = self.flush(false).await;
        self.presence.changes().disable();
        let conn = match &flushed {
            Err(ClusterError::ShardsMismatch { .. } | ClusterError::NodeIdInUse(_)) => None,
            _ => self.connection().await.ok(),
        };
        let ok = std::mem::take(&mut self.ok);
        join_all(
            self.tags
                .iter_mut()
                .zip(ok)
                .map(|(t, ok)| t.bye(conn.clone().filter(|_| ok), mode)),
        )
        .await;
        if let Some(mut conn) = conn {
            if flushed.is_ok() {
                *self.shared.view.lock() = self.merge();
            }
            let s = &*self.shared;
            let key = format!("{}shards", s.base_prefix);
            let args = vec![
                s.node_id.as_bytes().to_vec(),
                Vec::new(),
                b"0".to_vec(),
                b"del".to_vec(),
            ];
            let _ = tokio::time::timeout(
                s.call_timeout,
                conn::eval_many(&mut conn, &self.shape_script, &key, &[args]),
            )
            .await;
        }
        if let Some(t) = self.tags.first() {
            t.book.lock().clear();
        }
        self.shared.view.lock().stale = true;
    }
}

/// Whether `e` says that Redis did not answer (rather than answered with an error).
fn unreachable(e: &ClusterError) -> bool {
    match e {
        ClusterError::Timeout(_) => true,
        ClusterError::Redis(e) => {
            e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
        }
        _ => false,
    }
}
