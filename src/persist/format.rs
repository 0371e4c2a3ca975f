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

use parking_lot::Mutex;

use crate::SessionId;
use crate::kind::KindTag;
use crate::limits::{MAX_PAGE_LEN, MAX_USER_LEN};

const MAGIC: &[u8; 8] = b"PRESENCE";
/// The format version this build writes and reads.
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// The fewest bytes a session takes: id, kind, user, page, three ages.
const MIN_SESSION_LEN: usize = 16 + 1 + 1 + 1 + 3;

pub(crate) type Hasher = foldhash::fast::RandomState;

/// A tracker's snapshot file and what it knows about it.
#[derive(Debug)]
pub(crate) struct SnapshotFile {
    pub(crate) path: PathBuf,
    /// The largest file the reader reads.
    pub(crate) max_size: u64,
    /// Why saves are refused: the file found at build could not be read nor moved aside.
    pub(crate) blocked: Mutex<Option<String>>,
    /// One save at a time.
    pub(crate) saving: Mutex<()>,
    /// The advisory lock on `<path>.lock`, taken at the first save (so `build()` cannot
    /// fail) and held open while the tracker lives, so that a second process (or a second
    /// tracker) saving to the same file gets a clear error instead of overwriting the first
    /// one's sessions with its own.
    pub(crate) lock: Mutex<Option<File>>,
}

impl SnapshotFile {
    pub(crate) fn new(path: PathBuf, max_size: u64) -> Self {
        SnapshotFile {
            path,
            max_size,
            blocked: Mutex::new(None),
            saving: Mutex::new(()),
            lock: Mutex::new(None),
        }
    }

    /// `<path>.lock`: a file beside the snapshot, never the snapshot itself (a save replaces
    /// the snapshot by a rename, which a lock on it would not survive). Never deleted: a
    /// lock file removed while someone waits on it is how two holders happen.
    fn lock_path(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Takes the advisory lock if this tracker does not hold it yet.
    ///
    /// # Errors
    /// [`io::ErrorKind::ResourceBusy`] when another process (or another tracker in this one)
    /// holds it; the I/O error when the lock file cannot be opened.
    pub(crate) fn lock(&self) -> io::Result<()> {
        let mut held = self.lock.lock();
        if held.is_some() {
            return Ok(());
        }
        let path = self.lock_path();
        let file =
            create_private(OpenOptions::new().read(true).write(true).create(true)).open(&path)?;
        // A lock just released can still be held for a moment by a child process this one is
        // starting (between its fork and its exec it shares the descriptor): a few short
        // tries before calling it in use.
        let mut result = try_lock(&file);
        for _ in 0..LOCK_TRIES {
            if !matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                break;
            }
            std::thread::sleep(LOCK_RETRY);
            result = try_lock(&file);
        }
        match result {
            Ok(()) => {
                *held = Some(file);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "the snapshot file {} is in use by another process (or another tracker \
                     in this one): its lock {} is held; give each process its own \
                     snapshot_file",
                    self.path.display(),
                    path.display()
                ),
            )),
            Err(e) => Err(e),
        }
    }
}

/// Tries at taking a held lock again, and the wait between two: 100 ms in all.
const LOCK_TRIES: usize = 20;
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(5);

/// An exclusive advisory lock (`flock`), without waiting: `WouldBlock` when held. Tied to
/// the open file, so it goes with the tracker, or with the process however it ends.
#[cfg(unix)]
fn try_lock(file: &File) -> io::Result<()> {
    rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(io::Error::from)
}

/// Elsewhere no lock is taken: one process a file is the user's to ensure.
#[cfg(not(unix))]
fn try_lock(_file: &File) -> io::Result<()> {
    Ok(())
}

/// Files this module creates (the snapshot, its lock) are the owner's only (`0600`): they
/// hold session ids, user names and pages.
fn create_private(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// A snapshot checked whole, its records still in the file's bytes: decoding allocates
/// only the string table's index (4 bytes a string, each at least 1 byte on disk), so a
/// crafted file cannot make the reader reserve more than a small multiple of its size. The
/// records are parsed again, already checked, as the restore walks them.
#[derive(Debug)]
pub(crate) struct Decoded<'a> {
    pub(crate) saved_at: i64,
    pub(crate) peak: (u64, i64),
    /// The strings section, and where each string starts in it (at its length).
    pub(crate) string_bytes: &'a [u8],
    pub(crate) strings: Vec<u32>,
    pub(crate) sessions: Section<'a>,
    pub(crate) offline: Section<'a>,
    pub(crate) history: Section<'a>,
}

/// A checked run of `count` records.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Section<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) count: usize,
}

/// One session as saved.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) id: SessionId,
    pub(crate) tag: KindTag,
    pub(crate) user: Option<u32>,
    pub(crate) page: Option<u32>,
    /// Ages (ms before "saved at") of last seen, last active, first seen.
    pub(crate) ages: [u64; 3],
}

/// Why a file is not a snapshot this build can read.
#[derive(Debug)]
pub(crate) struct Corrupt(pub(crate) &'static str);

/// A whole file: the header (magic, version, length, CRC) and `payload`.
pub(crate) fn with_header(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// User names and pages, each written once.
#[derive(Default)]
pub(crate) struct Strings {
    pub(crate) index: HashMap<Box<str>, u64, Hasher>,
    pub(crate) bytes: Vec<u8>,
    pub(crate) count: u64,
}

impl Strings {
    pub(crate) fn index(&mut self, s: &str) -> u64 {
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

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_zigzag(out: &mut Vec<u8>, v: i64) {
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
/// Every string is checked as the write path checks it: UTF-8, a user name at most
/// [`MAX_USER_LEN`] bytes, a page at most [`MAX_PAGE_LEN`].
pub(crate) fn decode(file: &[u8]) -> Result<Decoded<'_>, Corrupt> {
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
    let saved_at = r.zigzag()?;
    let peak = (r.varint()?, r.zigzag()?);

    let n = r.count(1)?;
    let table = r.buf;
    // `n` is at most the bytes left (a string takes one at least): 4 bytes each, reserved
    // once rather than grown by doubling.
    let mut strings = Vec::with_capacity(n);
    for _ in 0..n {
        let at = u32::try_from(table.len() - r.buf.len())
            .map_err(|_| Corrupt("the string table exceeds 4 GiB"))?;
        let len = r.count(1)?;
        if len > MAX_PAGE_LEN.max(MAX_USER_LEN) {
            return Err(Corrupt("a string is longer than any the tracker accepts"));
        }
        std::str::from_utf8(r.bytes(len)?).map_err(|_| Corrupt("a string is not UTF-8"))?;
        strings.push(at);
    }
    let string_bytes = &table[..table.len() - r.buf.len()];
    let lens = |i: u32| string_at(string_bytes, strings[i as usize]).len();

    let sessions = section(&mut r, MIN_SESSION_LEN, |r| {
        let s = parse_session(r, strings.len())?;
        if s.user.is_some_and(|u| lens(u) > MAX_USER_LEN)
            || s.page.is_some_and(|p| lens(p) > MAX_PAGE_LEN)
        {
            return Err(Corrupt(
                "a user name or page is longer than the tracker accepts",
            ));
        }
        Ok(())
    })?;
    let offline = section(&mut r, 3, |r| {
        let (user, _, _) = parse_offline(r, strings.len())?;
        if lens(user) > MAX_USER_LEN {
            return Err(Corrupt("a user name is longer than the tracker accepts"));
        }
        Ok(())
    })?;
    let history = section(&mut r, 2, |r| parse_history(r).map(drop))?;
    if !r.buf.is_empty() {
        return Err(Corrupt("trailing bytes"));
    }
    Ok(Decoded {
        saved_at,
        peak,
        string_bytes,
        strings,
        sessions,
        offline,
        history,
    })
}

/// Checks a section of records, each at least `min_len` bytes, with `check`; returns it.
fn section<'a>(
    r: &mut Reader<'a>,
    min_len: usize,
    mut check: impl FnMut(&mut Reader<'a>) -> Result<(), Corrupt>,
) -> Result<Section<'a>, Corrupt> {
    let count = r.count(min_len)?;
    let start = r.buf;
    for _ in 0..count {
        check(r)?;
    }
    Ok(Section {
        bytes: &start[..start.len() - r.buf.len()],
        count,
    })
}

fn parse_session(r: &mut Reader<'_>, strings: usize) -> Result<Record, Corrupt> {
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
    let ages = [r.varint()?, r.varint()?, r.varint()?];
    Ok(Record {
        id,
        tag,
        user,
        page,
        ages,
    })
}

fn parse_offline(r: &mut Reader<'_>, strings: usize) -> Result<(u32, u64, u64), Corrupt> {
    let user = r
        .string_ref(strings)?
        .ok_or(Corrupt("an offline user without a name"))?;
    Ok((user, r.varint()?, r.varint()?))
}

fn parse_history(r: &mut Reader<'_>) -> Result<(i64, u64), Corrupt> {
    Ok((r.zigzag()?, r.varint()?))
}

/// The string whose length starts at `at` in a checked string table.
fn string_at(table: &[u8], at: u32) -> &str {
    let mut r = Reader {
        buf: table.get(at as usize..).unwrap_or_default(),
    };
    // Checked by `decode`: a failure here cannot happen, and would read as an empty string.
    r.count(1)
        .and_then(|len| r.bytes(len))
        .ok()
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or_default()
}

impl<'a> Decoded<'a> {
    pub(crate) fn string(&self, i: u32) -> &'a str {
        string_at(self.string_bytes, self.strings[i as usize])
    }

    /// The records of a checked section, parsed again.
    fn records<T>(
        section: Section<'a>,
        mut parse: impl FnMut(&mut Reader<'a>) -> Result<T, Corrupt>,
    ) -> impl Iterator<Item = T> {
        let mut r = Reader { buf: section.bytes };
        (0..section.count).map_while(move |_| parse(&mut r).ok())
    }

    pub(crate) fn sessions(&self) -> impl Iterator<Item = Record> + use<'a> {
        let strings = self.strings.len();
        Self::records(self.sessions, move |r| parse_session(r, strings))
    }

    pub(crate) fn offline(&self) -> impl Iterator<Item = (u32, u64, u64)> + use<'a> {
        let strings = self.strings.len();
        Self::records(self.offline, move |r| parse_offline(r, strings))
    }

    pub(crate) fn history(&self) -> impl Iterator<Item = (i64, u64)> + use<'a> {
        Self::records(self.history, parse_history)
    }

    /// Sessions, offline users and history samples in the file.
    #[cfg(any(feature = "__bench_internals", presence_loom))]
    pub(crate) fn len(&self) -> (usize, usize, usize) {
        (self.sessions.count, self.offline.count, self.history.count)
    }
}

/// Why the snapshot file was not read.
#[derive(Debug)]
pub(crate) enum Unreadable {
    Missing,
    /// A FIFO, a device, a socket: what it is.
    NotAFile(&'static str),
    TooLarge {
        size: u64,
    },
    Io(io::Error),
}

/// Reads the snapshot at `path` if it is a regular file of at most `max` bytes: the kind and
/// the size come from metadata before a byte is read, and the file is opened without
/// blocking (a FIFO swapped in between never hangs the start), then checked again on the
/// open handle. Reads no more than `max` bytes whatever the file does meanwhile.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, Unreadable> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Unreadable::Missing),
        Err(e) => return Err(Unreadable::Io(e)),
    };
    check_kind(&meta)?;
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
    }
    let file = options.open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Unreadable::Missing,
        _ => Unreadable::Io(e),
    })?;
    let meta = file.metadata().map_err(Unreadable::Io)?;
    check_kind(&meta)?;
    if meta.len() > max {
        return Err(Unreadable::TooLarge { size: meta.len() });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    let read = io::Read::read_to_end(
        &mut io::Read::take(&file, max.saturating_add(1)),
        &mut bytes,
    );
    read.map_err(Unreadable::Io)?;
    if bytes.len() as u64 > max {
        return Err(Unreadable::TooLarge {
            size: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// Refuses what is not a regular file or a directory (a directory is moved aside as any
/// unusable snapshot; it never blocks a read).
fn check_kind(meta: &fs::Metadata) -> Result<(), Unreadable> {
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(());
    }
    if kind.is_dir() {
        return Err(Unreadable::Io(io::Error::other("a directory")));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return Err(Unreadable::NotAFile("a FIFO"));
        }
        if kind.is_char_device() || kind.is_block_device() {
            return Err(Unreadable::NotAFile("a device"));
        }
        if kind.is_socket() {
            return Err(Unreadable::NotAFile("a socket"));
        }
    }
    Err(Unreadable::NotAFile("not a regular file"))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename over `path`, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
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
        let mut f = create_private(OpenOptions::new().write(true).create_new(true)).open(&tmp)?;
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
pub(crate) fn move_aside(path: &Path, secs: i64) -> io::Result<PathBuf> {
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
