//! The snapshot file: who is online across a restart. Its format, the atomic write, and the
//! restore at build.
//!
//! # Format
//! A hand-rolled binary format, versioned and checksummed:
//!
//! ```text
//! header   "PRESENCE" (8 bytes) | version: u32 LE | payload length: u64 LE | CRC-32 of the payload: u32 LE
//! payload  saved at (ms since the Unix epoch, zigzag varint)
//!          peak: online (varint), at (ms, zigzag varint)
//!          strings: count, then each: length (varint), UTF-8 bytes     -- user names and pages, once each
//!          sessions: count, then each: id (16 bytes), kind (1 byte), user (varint: 0 or string + 1),
//!                    page (varint: 0 or string + 1), ages of last seen, last active, first seen
//!                    (ms before "saved at", varints)
//!          offline users: count, then each: user (string), ages of last seen and of going offline
//!          history: count, then each: at (ms, zigzag varint), online (varint)
//! ```
//!
//! Why not serde with `postcard` or `bincode`: `serde` is an optional feature of this crate
//! and a snapshot must not need it; the content is a handful of flat records; and the
//! layout above is what keeps a million sessions small and fast. Times as varint *ages*
//! take 2 to 4 bytes instead of 8, user names and pages are written once and referred to
//! by index, and a session costs about 30 bytes on disk (a generic encoding of the same
//! records repeats every string). The writer fills one buffer in a single pass over the
//! session map (each shard under its read lock once, so touches go on), the reader parses
//! it with bounds checks on every read. The CRC-32 (`crc32fast`, a small and well-kept
//! crate) catches a torn or corrupted file, the version a file from another format.
//!
//! Times are stored as wall-clock times, so a snapshot restores into a tracker whose clock
//! started anywhere: a session is restored if it is still live by the wall clock now.
//!
//! # Failure
//! Nothing here panics on bad input, and nothing deletes a snapshot: a file that cannot be
//! read is moved aside (`<path>.corrupt-<unix seconds>`), or, if even that fails, left in
//! place and never overwritten until someone removes it. Saves write a temporary file in
//! the same directory, fsync it, rename it over the snapshot and fsync the directory, so a
//! crash at any point leaves the previous snapshot or the new one, whole.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

use crate::clock::Tick;
use crate::history::{from_unix_ms, unix_ms};
use crate::lifecycle::{MAX_PAGE_LEN, MAX_USER_LEN, Saved};
use crate::session::KindTag;
use crate::tracker::Tracker;
use crate::{Kind, SessionId, UserId};

const MAGIC: &[u8; 8] = b"PRESENCE";
/// The format version this build writes and reads.
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// The fewest bytes a session takes: id, kind, user, page, three ages.
const MIN_SESSION_LEN: usize = 16 + 1 + 1 + 1 + 3;

type Hasher = foldhash::fast::RandomState;

/// A tracker's snapshot file and what it knows about it.
#[derive(Debug)]
pub(crate) struct SnapshotFile {
    path: PathBuf,
    /// Why saves are refused: the file found at build could not be read nor moved aside.
    blocked: Mutex<Option<String>>,
    /// One save at a time.
    saving: Mutex<()>,
}

impl SnapshotFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        SnapshotFile {
            path,
            blocked: Mutex::new(None),
            saving: Mutex::new(()),
        }
    }
}

/// What a snapshot holds, decoded.
#[derive(Debug, Default)]
struct Decoded {
    saved_at: i64,
    peak: (u64, i64),
    sessions: Vec<Record>,
    /// (user, age of last seen, age of going offline).
    offline: Vec<(u32, u64, u64)>,
    strings: Vec<String>,
    history: Vec<(i64, u64)>,
}

/// One session as saved.
#[derive(Debug)]
struct Record {
    id: SessionId,
    tag: KindTag,
    user: Option<u32>,
    page: Option<u32>,
    /// Ages (ms before "saved at") of last seen, last active, first seen.
    ages: [u64; 3],
}

/// Why a file is not a snapshot this build can read.
#[derive(Debug)]
struct Corrupt(&'static str);

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
        let started = Instant::now();
        // Sessions due now end first, so that their users are saved as offline with their
        // last-seen time.
        let now = self.clock.now();
        self.reap_all(now);
        self.events.deliver();
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
        let problem = match fs::read(&file.path) {
            Ok(bytes) => match decode(&bytes) {
                Ok(decoded) => {
                    let (restored, ended) = self.restore_decoded(decoded);
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
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => format!("cannot be read: {e}"),
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
        let mut sessions = Vec::with_capacity(self.sessions.len() * 32);
        let mut count = 0usize;
        self.sessions.for_each(|id, s, d| {
            if s.deadline(&self.cfg, now) <= now {
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
            for t in [s.last_seen(now), s.last_active(now), d.first_seen] {
                put_varint(&mut sessions, now.saturating_sub(t));
            }
        });
        let offline = self.users.export_offline();
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
        let (peak, peak_at) = self.counters.peak();
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

        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        (out, count)
    }

    /// Restores a decoded snapshot; returns the sessions restored and those that ended while
    /// the process was down.
    fn restore_decoded(&self, snap: Decoded) -> (usize, usize) {
        let now = self.clock.now();
        // The tick of "saved at"; every saved time is an age before it. A time after now
        // (the wall clock went back across the restart) is taken as now.
        let saved_at = self.wall.tick_of(from_unix_ms(snap.saved_at));
        let tick = |age: u64| saved_at.saturating_sub(age).min(now);
        let users: Vec<UserId> = snap
            .strings
            .iter()
            .map(|s| UserId::from(s.as_str()))
            .collect();
        let mut offline: HashMap<UserId, (Tick, Tick), Hasher> = HashMap::default();
        let mut ended = 0;
        let mut live = Vec::with_capacity(snap.sessions.len());
        for r in &snap.sessions {
            let [seen, active, first] = r.ages.map(tick);
            let deadline = (seen + self.cfg.idle_timeout).min(active + self.cfg.heartbeat_limit);
            let user = r.user.map(|u| users[u as usize].clone());
            if deadline <= now {
                // It ended while the process was down: not restored, but its user was seen.
                ended += 1;
                if let Some(user) = user {
                    let (last, since) = offline.entry(user).or_insert((seen, deadline));
                    *last = (*last).max(seen);
                    *since = (*since).max(deadline);
                }
                continue;
            }
            let kind = match (r.tag, user) {
                (KindTag::Member, Some(u)) => Kind::Member(u),
                (KindTag::Hidden, Some(u)) => Kind::HiddenMember(u),
                (KindTag::Bot, _) => Kind::Bot,
                _ => Kind::Guest,
            };
            live.push(Saved {
                id: r.id,
                kind,
                page: r.page,
                times: (seen, active, first),
            });
        }
        let total = live.len();
        let restored = self.restore_all(live, &snap.strings, now);
        if restored < total {
            tracing::warn!(
                not_restored = total - restored,
                "presence: sessions in the snapshot not restored (max_sessions reached, or a \
                 session twice)"
            );
        }
        for &(user, last_age, since_age) in &snap.offline {
            let user = &users[user as usize];
            self.users
                .remember_offline(user, tick(last_age), tick(since_age));
        }
        for (user, (last_seen, since)) in offline {
            self.users.remember_offline(&user, last_seen, since);
        }
        let (peak, peak_at) = snap.peak;
        self.counters.restore_peak(
            usize::try_from(peak).unwrap_or(usize::MAX),
            self.wall.tick_of(from_unix_ms(peak_at)),
        );
        self.history.restore(snap.history);
        (restored, ended)
    }
}

/// User names and pages, each written once.
#[derive(Default)]
struct Strings {
    index: HashMap<Box<str>, u64, Hasher>,
    bytes: Vec<u8>,
    count: u64,
}

impl Strings {
    fn index(&mut self, s: &str) -> u64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.count;
        self.count += 1;
        put_varint(&mut self.bytes, s.len() as u64);
        self.bytes.extend_from_slice(s.as_bytes());
        self.index.insert(s.into(), i);
        i
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Bounds-checked reads over a payload.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        if self.buf.len() < n {
            return Err(Corrupt("cut short"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, Corrupt> {
        Ok(self.bytes(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, Corrupt> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(Corrupt("a number overflows"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Corrupt("a number overflows"))
    }

    fn zigzag(&mut self) -> Result<i64, Corrupt> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A count of items each at least `min_len` bytes long: never more than the bytes left
    /// could hold, so a forged count cannot make the reader allocate.
    fn count(&mut self, min_len: usize) -> Result<usize, Corrupt> {
        let n = self.varint()?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_len) <= self.buf.len() => Ok(n),
            _ => Err(Corrupt("a count exceeds the file")),
        }
    }

    /// An optional string index (0 = none), checked against the table.
    fn string_ref(&mut self, strings: usize) -> Result<Option<u32>, Corrupt> {
        match self.varint()? {
            0 => Ok(None),
            i if i <= strings as u64 => Ok(Some((i - 1) as u32)),
            _ => Err(Corrupt("a string index is out of range")),
        }
    }
}

/// Parses and checks a whole snapshot; nothing is restored from a file with any fault.
fn decode(file: &[u8]) -> Result<Decoded, Corrupt> {
    if file.len() < HEADER_LEN {
        return Err(Corrupt("shorter than a header"));
    }
    let (header, payload) = file.split_at(HEADER_LEN);
    if &header[..8] != MAGIC {
        return Err(Corrupt("not a presence snapshot (no magic)"));
    }
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let version = word(8);
    if version != VERSION {
        return Err(Corrupt("written by another format version"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[12..20]);
    if u64::from_le_bytes(len) != payload.len() as u64 {
        return Err(Corrupt("cut short or extended (length mismatch)"));
    }
    if crc32fast::hash(payload) != word(20) {
        return Err(Corrupt("checksum mismatch"));
    }
    let mut r = Reader { buf: payload };
    let mut snap = Decoded {
        saved_at: r.zigzag()?,
        peak: (r.varint()?, r.zigzag()?),
        ..Decoded::default()
    };
    let n = r.count(1)?;
    snap.strings.reserve(n);
    for _ in 0..n {
        let len = r.count(1)?;
        let bytes = r.bytes(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| Corrupt("a string is not UTF-8"))?;
        snap.strings.push(s.to_owned());
    }
    let strings = snap.strings.len();
    let n = r.count(MIN_SESSION_LEN)?;
    snap.sessions.reserve(n);
    for _ in 0..n {
        let mut id = [0u8; 16];
        id.copy_from_slice(r.bytes(16)?);
        // A session twice (never written so) is restored once: the map finds the second.
        let id = SessionId::from(uuid::Uuid::from_bytes(id));
        let tag = match r.byte()? {
            0 => KindTag::Guest,
            1 => KindTag::Bot,
            2 => KindTag::Member,
            3 => KindTag::Hidden,
            _ => return Err(Corrupt("unknown session kind")),
        };
        let user = r.string_ref(strings)?;
        let page = r.string_ref(strings)?;
        let signed_in = matches!(tag, KindTag::Member | KindTag::Hidden);
        if signed_in != user.is_some() {
            return Err(Corrupt("a session's kind and user disagree"));
        }
        if user.is_some_and(|u| snap.strings[u as usize].len() > MAX_USER_LEN)
            || page.is_some_and(|p| snap.strings[p as usize].len() > MAX_PAGE_LEN)
        {
            return Err(Corrupt(
                "a user name or page is longer than the tracker accepts",
            ));
        }
        let ages = [r.varint()?, r.varint()?, r.varint()?];
        snap.sessions.push(Record {
            id,
            tag,
            user,
            page,
            ages,
        });
    }
    let n = r.count(3)?;
    snap.offline.reserve(n);
    for _ in 0..n {
        let user = r
            .string_ref(strings)?
            .ok_or(Corrupt("an offline user without a name"))?;
        snap.offline.push((user, r.varint()?, r.varint()?));
    }
    let n = r.count(2)?;
    snap.history.reserve(n);
    for _ in 0..n {
        snap.history.push((r.zigzag()?, r.varint()?));
    }
    if !r.buf.is_empty() {
        return Err(Corrupt("trailing bytes"));
    }
    Ok(snap)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename over `path`, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(err) = written {
        // Our own temporary file, never the snapshot.
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    // The rename is durable once the directory is.
    File::open(dir)?.sync_all()
}

/// Renames an unusable snapshot to `<path>.corrupt-<secs>` (with `-1`, `-2`… if that
/// exists: a rename must never replace an earlier one).
fn move_aside(path: &Path, secs: i64) -> io::Result<PathBuf> {
    let base = format!("{}.corrupt-{secs}", path.display());
    for n in 0..1000 {
        let aside = PathBuf::from(if n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        match fs::symlink_metadata(&aside) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::rename(path, &aside)?;
                return Ok(aside);
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "too many files moved aside already",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_their_edges() {
        let mut buf = Vec::new();
        let values = [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ];
        for v in values {
            put_varint(&mut buf, v);
        }
        for v in [0, -1, 1, i64::MIN, i64::MAX] {
            put_zigzag(&mut buf, v);
        }
        let mut r = Reader { buf: &buf };
        for v in values {
            assert_eq!(r.varint().unwrap(), v);
        }
        for v in [0, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(r.zigzag().unwrap(), v);
        }
        assert!(r.buf.is_empty());
        // Eleven continuation bytes: refused, not an overflow panic.
        let mut r = Reader { buf: &[0xff; 11] };
        assert!(r.varint().is_err());
    }

    #[test]
    fn a_forged_count_is_refused_before_any_allocation() {
        let mut buf = Vec::new();
        put_varint(&mut buf, u64::MAX / 2);
        let mut r = Reader { buf: &buf };
        assert!(r.count(MIN_SESSION_LEN).is_err());
    }
}
