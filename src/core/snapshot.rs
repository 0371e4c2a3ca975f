//! The tracker's save to and restore from its snapshot file: a save walks the session map
//! once (each shard under its read lock), a restore counts the saved sessions in through the
//! write path's bulk start. The file's format and its I/O are `persist`'s.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::time::Instant;

use crate::clock::Tick;
use crate::core::lifecycle::Saved;
use crate::core::session::{Config, HoldState, Session};
use crate::core::tracker::Tracker;
use crate::kind::KindTag;
use crate::observe::history::{SAMPLES as HISTORY_SAMPLES, from_unix_ms, unix_ms};
use crate::persist::format::{
    Corrupt, Decoded, Hasher, Strings, Unreadable, decode, move_aside, put_varint, put_zigzag,
    read_bounded, with_header, write_atomic,
};
use crate::{Kind, UserId};

/// The last activity a snapshot records for session `s`. A held session (or one in the
/// grace after its last hold) is exempt from `heartbeat_limit` while held, but is restored
/// as an ordinary session: its last activity is saved no older than `heartbeat_limit -
/// idle_timeout`, so that it comes back live for `idle_timeout` from when it was last seen
/// (long enough for its connection to come back and hold it again), not past its heartbeat
/// limit and silently gone.
fn saved_active(s: &Session, cfg: &Config, now: Tick) -> Tick {
    let active = s.last_active(now);
    if s.hold == HoldState::Free {
        return active;
    }
    active.max(now.saturating_sub(cfg.heartbeat_limit.saturating_sub(cfg.idle_timeout)))
}

/// Here, beside the save it makes, so that the tracker's module calls nothing above it.
impl Drop for Tracker {
    /// The last handle is gone: a best-effort save (a failure is logged).
    fn drop(&mut self) {
        self.save_on_exit();
    }
}

impl Tracker {
    /// [`Presence::save_snapshot`](crate::Presence::save_snapshot).
    pub(crate) fn save_snapshot(&self) -> io::Result<()> {
        let Some(file) = &self.snapshot else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no snapshot file is set (PresenceBuilder::snapshot_file)",
            ));
        };
        let _saving = file.saving.lock();
        {
            let mut blocked = file.blocked.lock();
            if let Some(why) = &*blocked {
                match fs::symlink_metadata(&file.path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => *blocked = None,
                    _ => {
                        return Err(io::Error::other(format!(
                            "refusing to overwrite {}: {why}; move or remove it to save again",
                            file.path.display()
                        )));
                    }
                }
            }
        }
        file.lock()?;
        let started = Instant::now();
        // Sessions due now end first, so that their users are saved as offline with their
        // last-seen time.
        let now = self.clock.now();
        self.life.reap_all(now);
        self.life.deliver();
        let (bytes, sessions) = self.encode(now);
        write_atomic(&file.path, &bytes)?;
        tracing::info!(
            path = %file.path.display(),
            bytes = bytes.len(),
            sessions,
            took_ms = started.elapsed().as_millis() as u64,
            "presence: snapshot saved"
        );
        Ok(())
    }

    /// A save at shutdown or drop: best effort, a failure is logged.
    pub(crate) fn save_on_exit(&self) {
        if let Some(file) = &self.snapshot {
            if let Err(err) = self.save_snapshot() {
                tracing::error!(
                    path = %file.path.display(),
                    error = %err,
                    "presence: snapshot not saved"
                );
            }
        }
    }

    /// Restores what the snapshot file holds, if one is set; see
    /// [`PresenceBuilder::snapshot_file`](crate::PresenceBuilder::snapshot_file).
    pub(crate) fn restore_snapshot(&self) {
        let Some(file) = &self.snapshot else {
            return;
        };
        let started = Instant::now();
        let max_size = file.max_size;
        let problem = match read_bounded(&file.path, max_size) {
            Ok(bytes) => match decode(&bytes) {
                Ok(decoded) => {
                    let (restored, ended) = self.restore_decoded(&decoded);
                    tracing::info!(
                        path = %file.path.display(),
                        bytes = bytes.len(),
                        sessions = restored,
                        ended_while_down = ended,
                        took_ms = started.elapsed().as_millis() as u64,
                        "presence: snapshot restored"
                    );
                    return;
                }
                Err(Corrupt(why)) => why.to_owned(),
            },
            Err(Unreadable::Missing) => return,
            Err(Unreadable::NotAFile(what)) => {
                // Never renamed nor replaced: a FIFO or a device node is somebody's, and
                // renaming `/dev/null` as root would break the machine.
                tracing::error!(
                    path = %file.path.display(),
                    found = what,
                    "presence: the snapshot path is not a regular file; starting empty, and \
                     saves are refused until it is replaced by a file or removed"
                );
                *file.blocked.lock() = Some(format!("it is {what}, not a regular file"));
                return;
            }
            Err(Unreadable::TooLarge { size }) => format!(
                "{size} bytes, larger than the limit of {max_size} \
                 (PresenceBuilder::max_snapshot_size)"
            ),
            Err(Unreadable::Io(e)) => format!("cannot be read: {e}"),
        };
        let secs = unix_ms(self.wall.at(self.clock.now())).div_euclid(1000);
        match move_aside(&file.path, secs) {
            Ok(aside) => tracing::warn!(
                path = %file.path.display(),
                moved_to = %aside.display(),
                problem = %problem,
                "presence: snapshot unusable, moved aside; starting empty"
            ),
            Err(err) => {
                tracing::warn!(
                    path = %file.path.display(),
                    problem = %problem,
                    error = %err,
                    "presence: snapshot unusable and cannot be moved aside; starting empty, \
                     and saves are refused until it is removed"
                );
                *file.blocked.lock() = Some(format!("it is not a usable snapshot ({problem})"));
            }
        }
    }

    /// The snapshot of the tracker at `now`, and how many sessions it holds.
    fn encode(&self, now: Tick) -> (Vec<u8>, usize) {
        let mut strings = Strings::default();
        let mut sessions = Vec::with_capacity(self.life.len() * 32);
        let mut count = 0usize;
        self.life.for_each(|id, s, d| {
            if s.deadline(self.cfg(), now) <= now {
                return;
            }
            count += 1;
            sessions.extend_from_slice(id.as_uuid().as_bytes());
            sessions.push(match s.tag {
                KindTag::Guest => 0,
                KindTag::Bot => 1,
                KindTag::Member => 2,
                KindTag::Hidden => 3,
            });
            let user = d.user.as_ref().map_or(0, |u| strings.index(u.as_str()) + 1);
            put_varint(&mut sessions, user);
            let page = d.page.as_ref().map_or(0, |p| strings.index(p.as_str()) + 1);
            put_varint(&mut sessions, page);
            for t in [
                s.last_seen(now),
                saved_active(s, self.cfg(), now),
                d.first_seen,
            ] {
                put_varint(&mut sessions, now.saturating_sub(t));
            }
        });
        let offline = self.life.export_offline();
        let mut users = Vec::with_capacity(offline.len() * 8);
        for (user, last_seen, since) in &offline {
            put_varint(&mut users, strings.index(user.as_str()) + 1);
            put_varint(&mut users, now.saturating_sub(*last_seen));
            put_varint(&mut users, now.saturating_sub(*since));
        }
        let history = self.history.export();

        let mut payload = Vec::with_capacity(
            32 + strings.bytes.len() + sessions.len() + users.len() + history.len() * 8,
        );
        put_zigzag(&mut payload, unix_ms(self.wall.at(now)));
        let (peak, peak_at) = self.life.peak();
        put_varint(&mut payload, peak as u64);
        put_zigzag(&mut payload, unix_ms(self.wall.at(peak_at)));
        put_varint(&mut payload, strings.count);
        payload.extend_from_slice(&strings.bytes);
        put_varint(&mut payload, count as u64);
        payload.extend_from_slice(&sessions);
        put_varint(&mut payload, offline.len() as u64);
        payload.extend_from_slice(&users);
        put_varint(&mut payload, history.len() as u64);
        for (at, online) in history {
            put_zigzag(&mut payload, at);
            put_varint(&mut payload, online);
        }

        (with_header(&payload), count)
    }

    /// Restores a decoded snapshot; returns the sessions restored and those that ended while
    /// the process was down. What it allocates follows what it restores: sessions up to
    /// `max_sessions`, the distinct users and pages they name, offline users up to
    /// `max_remembered_users`, the history's fixed ring; never one entry per string of the
    /// file.
    pub(crate) fn restore_decoded(&self, snap: &Decoded<'_>) -> (usize, usize) {
        let now = self.clock.now();
        // The tick of "saved at"; every saved time is an age before it. A time after now
        // (the wall clock went back across the restart) is taken as now.
        let saved_at = self.wall.tick_of(from_unix_ms(snap.saved_at));
        let tick = |age: u64| saved_at.saturating_sub(age).min(now);
        // Users named by the records restored, each made once.
        let mut names: HashMap<u32, UserId, Hasher> = HashMap::default();
        let mut name = |i: u32| {
            names
                .entry(i)
                .or_insert_with(|| UserId::from(snap.string(i)))
                .clone()
        };
        // Pages named by the sessions restored, as dense indices into `pages`.
        let mut page_index: HashMap<u32, u32, Hasher> = HashMap::default();
        let mut pages: Vec<&str> = Vec::new();
        let room = self.life.room();
        let mut offline: HashMap<UserId, (Tick, Tick), Hasher> = HashMap::default();
        let (mut ended, mut over) = (0, 0);
        let mut live = Vec::with_capacity(snap.sessions.count.min(room));
        for r in snap.sessions() {
            let [seen, active, first] = r.ages.map(tick);
            let deadline =
                (seen + self.cfg().idle_timeout).min(active + self.cfg().heartbeat_limit);
            if deadline <= now {
                // It ended while the process was down: not restored, but its user was seen.
                ended += 1;
                if let Some(user) = r.user.map(&mut name) {
                    let (last, since) = offline.entry(user).or_insert((seen, deadline));
                    *last = (*last).max(seen);
                    *since = (*since).max(deadline);
                }
                continue;
            }
            if live.len() == room {
                over += 1;
                continue;
            }
            let kind = match (r.tag, r.user.map(&mut name)) {
                (KindTag::Member, Some(u)) => Kind::Member(u),
                (KindTag::Hidden, Some(u)) => Kind::HiddenMember(u),
                (KindTag::Bot, _) => Kind::Bot,
                _ => Kind::Guest,
            };
            let page = r.page.map(|p| {
                *page_index.entry(p).or_insert_with(|| {
                    pages.push(snap.string(p));
                    (pages.len() - 1) as u32
                })
            });
            live.push(Saved {
                id: r.id,
                kind,
                page,
                times: (seen, active, first),
            });
        }
        let total = live.len() + over;
        let restored = self.life.restore_all(live, &pages, now);
        if restored < total {
            tracing::warn!(
                not_restored = total - restored,
                "presence: sessions in the snapshot not restored (max_sessions reached, or a \
                 session twice)"
            );
        }
        // Oldest first, as saved: only the newest `max_remembered_users` are kept anyway.
        let skip = snap.offline.count.saturating_sub(self.life.max_offline());
        for (user, last_age, since_age) in snap.offline().skip(skip) {
            self.life
                .remember_offline(&name(user), tick(last_age), tick(since_age));
        }
        for (user, (last_seen, since)) in offline {
            self.life.remember_offline(&user, last_seen, since);
        }
        let (peak, peak_at) = snap.peak;
        self.life.restore_peak(
            usize::try_from(peak).unwrap_or(usize::MAX),
            self.wall.tick_of(from_unix_ms(peak_at)),
        );
        let skip = snap.history.count.saturating_sub(HISTORY_SAMPLES);
        self.history.restore(snap.history().skip(skip).collect());
        (restored, ended)
    }
}
