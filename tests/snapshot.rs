//! Restarts: `snapshot_file`, `save_snapshot`, and what a restarted tracker restores; bad
//! snapshot files (cut short, corrupt, another version, a directory, unreadable).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use presence_tracker::{
    Kind, ManualClock, Presence, PresenceBuilder, Reaper, SessionId, SessionInfo, Touch, UserStatus,
};

/// A wall-clock time a whole number of seconds after the epoch.
const T0: u64 = 1_800_000_000;

fn wall(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A fresh empty directory for one test.
fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "presence-snapshot-{}-{}-{name}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn builder(clock: &ManualClock, path: &Path) -> PresenceBuilder {
    Presence::builder()
        .clock(clock.clone())
        .reaper(Reaper::Manual)
        .idle_timeout(Duration::from_secs(300))
        .idle_after(Duration::from_secs(120))
        .heartbeat_limit(Duration::from_secs(1200))
        .snapshot_file(path)
}

/// The tracker restarted at wall-clock time `at` from the snapshot at `path`.
fn restart(at: SystemTime, path: &Path) -> (Presence, ManualClock) {
    let clock = ManualClock::starting_at(at);
    (builder(&clock, path).build(), clock)
}

/// Files next to `path` that were moved aside.
fn moved_aside(path: &Path) -> Vec<PathBuf> {
    let prefix = format!("{}.corrupt-", path.file_name().unwrap().to_string_lossy());
    let mut found: Vec<PathBuf> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
        })
        .collect();
    found.sort();
    found
}

fn by_id(mut list: Vec<SessionInfo>) -> Vec<SessionInfo> {
    list.sort_by_key(|s| s.id);
    list
}

/// A tracker with members on two tabs, a hidden member, guests, a bot, an offline member,
/// pages and a peak above the current count. Returns it, its clock and the ids.
fn busy_tracker(path: &Path) -> (Presence, ManualClock, Vec<SessionId>) {
    let clock = ManualClock::starting_at(wall(T0));
    let presence = builder(&clock, path).build();
    let ids: Vec<SessionId> = (0..8).map(|_| SessionId::new_v4()).collect();
    presence
        .visit(ids[0], Kind::member("alice"), "/forum/1")
        .unwrap();
    clock.advance(Duration::from_millis(1500));
    presence
        .visit(ids[1], Kind::member("alice"), "/forum/2")
        .unwrap();
    presence
        .visit(ids[2], Kind::hidden_member("bob"), "/forum/1")
        .unwrap();
    presence.touch(ids[3], Kind::Guest).unwrap();
    presence.visit(ids[4], Kind::Guest, "/").unwrap();
    presence.touch(ids[5], Kind::Bot).unwrap();
    presence.visit(ids[6], Kind::member("carol"), "/").unwrap();
    clock.advance(Duration::from_secs(30));
    // The peak: six people (alice, bob, carol, guests 3, 4, 7) before two leave.
    presence.touch(ids[7], Kind::Guest).unwrap();
    clock.advance(Duration::from_secs(30));
    presence.leave(ids[6]).unwrap(); // carol goes offline
    presence.leave(ids[7]).unwrap();
    presence.heartbeat(ids[0]);
    clock.advance(Duration::from_secs(150)); // alice's second tab and the others go idle
    presence.touch(ids[1], Kind::member("alice")).unwrap();
    (presence, clock, ids)
}

#[test]
fn round_trip_keeps_counts_users_pages_peak_and_last_seen() {
    let dir = dir("round-trip");
    let path = dir.join("presence.snapshot");
    let (before, clock, ids) = busy_tracker(&path);
    before.save_snapshot().unwrap();

    // A deploy that takes 20 seconds.
    let now = clock.wall_time().unwrap();
    let (after, after_clock) = restart(now + Duration::from_secs(20), &path);
    let mut rx = after.subscribe();

    let (c0, c1) = (before.counts(), after.counts());
    assert_eq!(
        (
            c1.online,
            c1.members,
            c1.hidden,
            c1.guests,
            c1.bots,
            c1.sessions
        ),
        (
            c0.online,
            c0.members,
            c0.hidden,
            c0.guests,
            c0.bots,
            c0.sessions
        )
    );
    assert_eq!((c1.online, c1.members, c1.hidden, c1.guests), (4, 1, 1, 2));
    assert_eq!((c1.active, c1.idle), (1, 5), "idle by the restored times");
    assert_eq!(c1.peak, c0.peak, "the peak and when it was reached");
    assert_eq!(c1.peak.online, 6);
    assert_eq!(c1.peak.at, wall(T0) + Duration::from_millis(31_500));

    // Every session with its kind, page and times.
    let (s0, s1) = (by_id(before.sessions()), by_id(after.sessions()));
    assert_eq!(s0.len(), 6);
    for (a, b) in s0.iter().zip(&s1) {
        assert_eq!(
            (
                a.id,
                &a.kind,
                &a.page,
                a.first_seen,
                a.last_seen,
                a.last_active,
                a.state
            ),
            (
                b.id,
                &b.kind,
                &b.page,
                b.first_seen,
                b.last_seen,
                b.last_active,
                b.state
            )
        );
    }
    assert_eq!(after.top_pages(10), before.top_pages(10));
    assert_eq!(after.page_count("/forum/1"), 2);
    assert_eq!(after.online_members(10), before.online_members(10));
    assert_eq!(after.page_members("/forum/1", 10), ["alice"]);

    // Last-seen: of an offline member, and of an online one.
    assert_eq!(
        after.user("carol"),
        UserStatus::offline(wall(T0) + Duration::from_millis(1500))
    );
    assert_eq!(after.user("alice"), before.user("alice"));
    assert_eq!(after.user("bob"), before.user("bob"));

    // No storm: nothing was announced, and the next touch of a tab is a refresh.
    assert_eq!(
        after.touch(ids[0], Kind::member("alice")).unwrap(),
        Touch::Refreshed
    );
    assert_eq!(
        after.visit(ids[4], Kind::Guest, "/").unwrap(),
        Touch::Refreshed
    );
    assert!(after.heartbeat(ids[5]));
    after.reap();
    assert!(
        rx.try_recv().is_err(),
        "a restored tracker announces nothing"
    );

    // Restored sessions were counted once: when they all end, everything is back to zero.
    after_clock.advance(Duration::from_secs(1300));
    assert_eq!(after.reap(), 6);
    let c = after.counts();
    assert_eq!(
        (c.online, c.members, c.hidden, c.guests, c.bots, c.sessions),
        (0, 0, 0, 0, 0, 0)
    );
    assert_eq!((c.active, c.idle), (0, 0));
    assert!(after.top_pages(10).is_empty());
    assert!(after.online_members(10).is_empty());
    assert!(after.page_members("/forum/1", 10).is_empty());
    assert!(matches!(after.user("alice"), UserStatus::Offline { .. }));
    assert!(matches!(after.user("bob"), UserStatus::Offline { .. }));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_peak_still_standing_keeps_the_time_it_was_reached() {
    let dir = dir("peak-standing");
    let path = dir.join("presence.snapshot");
    let (before, clock) = restart(wall(T0), &path);
    before
        .touch(SessionId::new_v4(), Kind::member("ada"))
        .unwrap();
    clock.advance(Duration::from_secs(30));
    before.save_snapshot().unwrap();
    let (after, _) = restart(wall(T0 + 40), &path);
    assert_eq!(after.counts().peak, before.counts().peak);
    assert_eq!(after.counts().peak.at, wall(T0));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_session_that_fell_due_while_down_is_not_restored_but_its_user_last_seen_is() {
    let dir = dir("fell-due");
    let path = dir.join("presence.snapshot");
    let clock = ManualClock::starting_at(wall(T0));
    let before = builder(&clock, &path).build();
    let (alice, dave, guest) = (
        SessionId::new_v4(),
        SessionId::new_v4(),
        SessionId::new_v4(),
    );
    before.visit(alice, Kind::member("alice"), "/a").unwrap();
    clock.advance(Duration::from_secs(200));
    before.touch(dave, Kind::member("dave")).unwrap();
    before.touch(guest, Kind::Guest).unwrap();
    before.save_snapshot().unwrap();

    // Down for 2 minutes: alice's session (last seen 320 s ago) fell due at T0 + 300 s.
    let (after, clock2) = restart(wall(T0 + 320), &path);
    let c = after.counts();
    assert_eq!((c.online, c.members, c.guests, c.sessions), (2, 1, 1, 2));
    assert!(after.session(alice).is_none());
    assert_eq!(after.page_count("/a"), 0);
    assert_eq!(after.user("alice"), UserStatus::offline(wall(T0)));
    assert!(matches!(after.user("dave"), UserStatus::Online { .. }));
    // Touching alice's old session is a new session, as for any session that fell due.
    assert_eq!(
        after.touch(alice, Kind::member("alice")).unwrap(),
        Touch::Joined
    );
    // The rest expire on their own time, by the wall clock.
    clock2.advance(Duration::from_secs(179));
    assert_eq!(after.counts().sessions, 3);
    clock2.advance(Duration::from_secs(1));
    assert_eq!(
        after.counts().sessions,
        1,
        "dave and the guest: due at T0 + 500 s"
    );
    assert_eq!(after.user("dave"), UserStatus::offline(wall(T0 + 200)));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_restart_ten_minutes_later_is_a_clock_ten_minutes_on() {
    let dir = dir("ten-minutes");
    let path = dir.join("presence.snapshot");
    let clock = ManualClock::starting_at(wall(T0));
    let long = |clock: &ManualClock| {
        builder(clock, &path)
            .idle_timeout(Duration::from_secs(900))
            .heartbeat_limit(Duration::from_secs(1800))
    };
    let before = long(&clock).build();
    let (tab, bot) = (SessionId::new_v4(), SessionId::new_v4());
    before.visit(tab, Kind::member("erin"), "/inbox").unwrap();
    before.touch(bot, Kind::Bot).unwrap();
    clock.advance(Duration::from_secs(60));
    before.heartbeat(tab);
    drop(before); // the last handle: saves

    let clock2 = ManualClock::starting_at(wall(T0 + 60 + 600));
    let after = long(&clock2).build();
    let info = after
        .session(tab)
        .expect("still live after 10 minutes down");
    assert_eq!(info.last_seen, wall(T0 + 60));
    assert_eq!(info.last_active, wall(T0));
    assert_eq!(info.page.as_deref(), Some("/inbox"));
    assert_eq!(after.counts().bots, 1);
    assert!(after.heartbeat(tab), "the page's next heartbeat keeps it");
    // The bot was last seen at T0: due at T0 + 900 s, 4 minutes after the restart.
    clock2.advance(Duration::from_secs(239));
    assert_eq!(after.counts().bots, 1);
    clock2.advance(Duration::from_secs(1));
    assert_eq!(after.counts().bots, 0);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missing_file_is_an_empty_start_and_the_first_save_creates_it() {
    let dir = dir("missing");
    let path = dir.join("presence.snapshot");
    let (presence, _) = restart(wall(T0), &path);
    assert_eq!(presence.counts().sessions, 0);
    assert!(!path.exists());
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    presence.save_snapshot().unwrap();
    assert!(path.is_file());
    let mut leftovers: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    leftovers.sort();
    assert_eq!(
        leftovers,
        ["presence.snapshot", "presence.snapshot.lock"],
        "the snapshot and its lock, no temporary file left behind"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn saving_without_a_snapshot_file_is_invalid_input() {
    let presence = Presence::builder().reaper(Reaper::Manual).build();
    let err = presence.save_snapshot().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    presence.shutdown(); // no file, nothing to save, no panic
}

#[test]
fn shutdown_saves_and_the_tracker_keeps_working() {
    let dir = dir("shutdown");
    let path = dir.join("presence.snapshot");
    let (presence, clock) = restart(wall(T0), &path);
    let id = SessionId::new_v4();
    presence.touch(id, Kind::member("fay")).unwrap();
    presence.shutdown();
    assert!(path.is_file());
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    assert_eq!(presence.counts().sessions, 2);
    clock.advance(Duration::from_secs(5));
    let (after, _) = restart(wall(T0 + 5), &path);
    assert_eq!(after.counts().members, 1);
    assert_eq!(after.counts().guests, 0, "joined after the save");
    fs::remove_dir_all(dir).unwrap();
}

/// A valid snapshot's bytes, with a few sessions.
fn valid_snapshot(dir: &Path) -> Vec<u8> {
    let path = dir.join("valid.snapshot");
    let (presence, _) = restart(wall(T0), &path);
    for i in 0..20 {
        let page = format!("/t/{}", i % 3);
        presence
            .visit(SessionId::new_v4(), Kind::member(format!("user{i}")), &page)
            .unwrap();
    }
    presence.save_snapshot().unwrap();
    drop(presence);
    let bytes = fs::read(&path).unwrap();
    fs::remove_file(&path).unwrap();
    bytes
}

/// Writes `bytes` as the snapshot, builds a tracker on it, and checks that it starts empty,
/// that the file was moved aside whole, and that saving works again.
fn starts_empty_and_moves_aside(dir: &Path, bytes: &[u8], what: &str) {
    let path = dir.join("presence.snapshot");
    fs::write(&path, bytes).unwrap();
    let before = moved_aside(&path).len();
    let (presence, _) = restart(wall(T0 + 10), &path);
    assert_eq!(presence.counts().sessions, 0, "{what}: starts empty");
    assert_eq!(presence.counts().peak.online, 0, "{what}");
    assert!(!path.exists(), "{what}: moved away from its place");
    let aside = moved_aside(&path);
    assert_eq!(aside.len(), before + 1, "{what}: moved aside");
    let kept = aside
        .iter()
        .any(|p| fs::read(p).map(|b| b == bytes).unwrap_or(false));
    assert!(kept, "{what}: the file moved aside is the file, whole");
    assert!(
        aside.iter().all(|p| p
            .to_string_lossy()
            .contains(&format!(".corrupt-{}", T0 + 10))),
        "{what}: {aside:?}"
    );
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    presence.save_snapshot().unwrap();
    drop(presence);
    fs::remove_file(&path).unwrap();
}

#[test]
fn a_file_cut_at_each_tenth_of_its_length_starts_empty_and_is_moved_aside() {
    let dir = dir("truncated");
    let bytes = valid_snapshot(&dir);
    assert!(bytes.len() > 100);
    for tenth in 0..10 {
        let cut = &bytes[..bytes.len() * tenth / 10];
        starts_empty_and_moves_aside(&dir, cut, &format!("cut at {tenth}/10"));
    }
    // Two in the same second: neither replaces the other.
    let aside = moved_aside(&dir.join("presence.snapshot"));
    assert_eq!(aside.len(), 10);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn random_bytes_and_flipped_bytes_start_empty_and_are_moved_aside() {
    let dir = dir("random");
    let bytes = valid_snapshot(&dir);
    // A small xorshift: the same bytes on every run.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for len in [1, 24, 100, 4096] {
        let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        starts_empty_and_moves_aside(&dir, &noise, &format!("{len} random bytes"));
    }
    // Random bytes behind a valid header's magic and version.
    let mut forged = bytes[..12].to_vec();
    forged.extend((0..500).map(|_| next() as u8));
    starts_empty_and_moves_aside(&dir, &forged, "a valid magic, then noise");
    for at in [30, bytes.len() / 2, bytes.len() - 1] {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x40;
        starts_empty_and_moves_aside(&dir, &flipped, &format!("a byte flipped at {at}"));
    }
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_version_mismatch_starts_empty_and_is_moved_aside() {
    let dir = dir("version");
    let mut bytes = valid_snapshot(&dir);
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    starts_empty_and_moves_aside(&dir, &bytes, "format version 2");
    bytes[8..12].copy_from_slice(&0u32.to_le_bytes());
    starts_empty_and_moves_aside(&dir, &bytes, "format version 0");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_directory_in_place_of_the_file_is_moved_aside() {
    let dir = dir("directory");
    let path = dir.join("presence.snapshot");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("inside"), b"kept").unwrap();
    let (presence, _) = restart(wall(T0), &path);
    assert_eq!(presence.counts().sessions, 0);
    let aside = moved_aside(&path);
    assert_eq!(aside.len(), 1);
    assert_eq!(fs::read(aside[0].join("inside")).unwrap(), b"kept");
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    presence.save_snapshot().unwrap();
    assert!(path.is_file());
    fs::remove_dir_all(dir).unwrap();
}

/// Whether this process runs as root, by the owner of a file it creates. Root reads and
/// renames whatever the permissions say, so the permission tests cannot fail there.
fn running_as_root(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let probe = dir.join("owner-probe");
    fs::write(&probe, b"").unwrap();
    let root = fs::metadata(&probe).unwrap().uid() == 0;
    fs::remove_file(probe).unwrap();
    root
}

#[test]
fn an_unreadable_file_is_moved_aside() {
    use std::os::unix::fs::PermissionsExt;
    let dir = dir("unreadable");
    if running_as_root(&dir) {
        eprintln!("skipped: as root every file is readable, so this case cannot be made");
        fs::remove_dir_all(dir).unwrap();
        return;
    }
    let bytes = valid_snapshot(&dir);
    let path = dir.join("presence.snapshot");
    fs::write(&path, &bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
    let (presence, _) = restart(wall(T0), &path);
    assert_eq!(presence.counts().sessions, 0);
    assert_eq!(moved_aside(&path).len(), 1);
    assert!(!path.exists());
    presence.save_snapshot().unwrap();
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_bad_file_that_cannot_be_moved_aside_is_never_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = dir("stuck");
    if running_as_root(&dir) {
        eprintln!("skipped: as root a read-only directory still allows the rename");
        fs::remove_dir_all(dir).unwrap();
        return;
    }
    let path = dir.join("presence.snapshot");
    fs::write(&path, b"not a snapshot").unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
    let (presence, _) = restart(wall(T0), &path);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(presence.counts().sessions, 0);
    assert!(moved_aside(&path).is_empty());
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    let err = presence.save_snapshot().unwrap_err();
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    presence.shutdown(); // logs, never overwrites
    assert_eq!(fs::read(&path).unwrap(), b"not a snapshot");
    // Once someone removes it, saves work again.
    fs::remove_file(&path).unwrap();
    presence.save_snapshot().unwrap();
    assert!(path.is_file());
    fs::remove_dir_all(dir).unwrap();
}

/// The session ids in a snapshot file, read by its documented layout (the header, "saved
/// at", the peak, the strings, then the sessions).
fn ids_in(file: &[u8]) -> Vec<SessionId> {
    fn varint(buf: &[u8], at: &mut usize) -> u64 {
        let mut v = 0;
        for shift in (0..64).step_by(7) {
            let b = buf[*at];
            *at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
        }
        v
    }
    let mut at = 24;
    for _ in 0..3 {
        varint(file, &mut at); // saved at, peak online, peak at
    }
    for _ in 0..varint(file, &mut at) {
        let len = varint(file, &mut at) as usize;
        at += len;
    }
    let sessions = varint(file, &mut at);
    (0..sessions)
        .map(|_| {
            let id = uuid::Uuid::from_slice(&file[at..at + 16]).unwrap();
            at += 17; // the id and its kind
            for _ in 0..5 {
                varint(file, &mut at); // user, page, three ages
            }
            SessionId::from(id)
        })
        .collect()
}

#[test]
fn touches_from_other_threads_during_a_save_give_each_session_once() {
    let dir = dir("concurrent");
    let path = dir.join("presence.snapshot");
    let (presence, _) = restart(wall(T0), &path);
    let ids: Vec<SessionId> = (0..20_000).map(|_| SessionId::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        presence
            .visit(*id, Kind::member(format!("u{}", i % 500)), "/")
            .unwrap();
    }
    let ids = Arc::new(ids);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(3));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (presence, ids, stop, start) =
                (presence.clone(), ids.clone(), stop.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut round = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    for (i, id) in ids.iter().enumerate().skip(w).step_by(2) {
                        let user = format!("u{}", i % 500);
                        // Touches, page moves and kind changes: every write path.
                        match (i + round) % 3 {
                            0 => presence.touch(*id, Kind::member(user)),
                            1 => presence.visit(*id, Kind::member(user), &format!("/p/{round}")),
                            _ => presence.touch(*id, Kind::hidden_member(user)),
                        }
                        .unwrap();
                    }
                    round += 1;
                }
            })
        })
        .collect();
    start.wait();
    for save in 0..5 {
        presence.save_snapshot().unwrap();
        let ids_saved = ids_in(&fs::read(&path).unwrap());
        let unique: HashSet<SessionId> = ids_saved.iter().copied().collect();
        assert_eq!(ids_saved.len(), ids.len(), "save {save}: every session");
        assert_eq!(unique.len(), ids.len(), "save {save}: each once");
        let copy = dir.join(format!("copy-{save}.snapshot"));
        fs::copy(&path, &copy).unwrap();
        let (restored, _) = restart(wall(T0), &copy);
        let sessions = restored.sessions();
        let unique: HashSet<SessionId> = sessions.iter().map(|s| s.id).collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "save {save}: every session restored"
        );
        assert_eq!(sessions.len(), ids.len());
        assert!(moved_aside(&copy).is_empty(), "save {save}: a valid file");
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_session_written_twice_is_restored_once() {
    let dir = dir("twice");
    let path = dir.join("presence.snapshot");
    let (presence, _) = restart(wall(T0), &path);
    let (first, second) = (SessionId::new_v4(), SessionId::new_v4());
    presence.visit(first, Kind::member("ada"), "/a").unwrap();
    presence.visit(second, Kind::Guest, "/a").unwrap();
    presence.save_snapshot().unwrap();
    drop(presence);
    // Find the first session's record (as `ids_in` walks the file) and write it twice.
    let file = fs::read(&path).unwrap();
    let ids = ids_in(&file);
    let start = file
        .windows(16)
        .position(|w| w == ids[0].as_uuid().as_bytes())
        .unwrap();
    let end = file
        .windows(16)
        .position(|w| w == ids[1].as_uuid().as_bytes())
        .unwrap();
    assert_eq!(file[start - 1], 2, "the session count, one byte");
    let mut payload = file[24..start - 1].to_vec();
    payload.push(3);
    payload.extend_from_slice(&file[start..end]);
    payload.extend_from_slice(&file[start..]);
    let mut forged = file[..12].to_vec();
    forged.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    forged.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    forged.extend_from_slice(&payload);
    assert_eq!(ids_in(&forged).len(), 3);
    fs::write(&path, &forged).unwrap();

    let (after, clock) = restart(wall(T0 + 1), &path);
    let c = after.counts();
    assert_eq!((c.sessions, c.online, c.members, c.guests), (2, 2, 1, 1));
    assert_eq!(after.page_count("/a"), 2);
    assert!(moved_aside(&path).is_empty());
    // Counted once: both end, and every count is back at zero.
    clock.advance(Duration::from_secs(300));
    assert_eq!(after.reap(), 2);
    let c = after.counts();
    assert_eq!((c.sessions, c.online, c.members, c.guests), (0, 0, 0, 0));
    assert_eq!(after.page_count("/a"), 0);
    assert!(after.online_members(5).is_empty());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_snapshot_larger_than_max_sessions_restores_what_fits() {
    let dir = dir("capacity");
    let path = dir.join("presence.snapshot");
    let (presence, _) = restart(wall(T0), &path);
    for _ in 0..10 {
        presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    }
    presence.save_snapshot().unwrap();
    let clock = ManualClock::starting_at(wall(T0 + 1));
    let small = builder(&clock, &path).max_sessions(4).build();
    let c = small.counts();
    assert_eq!((c.sessions, c.guests), (4, 4));
    assert_eq!(c.peak.online, 10, "the peak is history, not capacity");
    assert!(small.touch(SessionId::new_v4(), Kind::Guest).is_err());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_snapshot_and_its_lock_are_the_owners_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = dir("private");
    let path = dir.join("presence.snapshot");
    let (presence, _) = restart(wall(T0), &path);
    presence
        .visit(SessionId::new_v4(), Kind::member("alice"), "/a")
        .unwrap();
    presence.save_snapshot().unwrap();
    for file in [path.clone(), dir.join("presence.snapshot.lock")] {
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
    }
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_fifo_in_place_of_the_file_never_hangs_build_and_is_left_alone() {
    let dir = dir("fifo");
    let path = dir.join("presence.snapshot");
    let made = std::process::Command::new("mkfifo").arg(&path).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: no mkfifo");
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    std::thread::spawn(move || {
        let built = restart(wall(T0), &p);
        let _ = tx.send(built);
    });
    let (presence, _) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("build() returns with a FIFO at the snapshot path");
    assert_eq!(presence.counts().sessions, 0);
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_fifo());
    assert!(moved_aside(&path).is_empty(), "a FIFO is not renamed");
    let err = presence.save_snapshot().unwrap_err();
    assert!(err.to_string().contains("a FIFO"), "{err}");
    drop(presence); // its save on drop is refused too, and logged
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_fifo());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_file_larger_than_max_snapshot_size_is_moved_aside_unread() {
    let dir = dir("too-large");
    let bytes = valid_snapshot(&dir);
    let path = dir.join("presence.snapshot");
    let big: Vec<u8> = bytes.iter().copied().cycle().take(4096).collect();
    fs::write(&path, &big).unwrap();
    let clock = ManualClock::starting_at(wall(T0));
    let presence = builder(&clock, &path).max_snapshot_size(2048).build();
    assert_eq!(presence.counts().sessions, 0);
    let aside = moved_aside(&path);
    assert_eq!(aside.len(), 1);
    assert_eq!(fs::read(&aside[0]).unwrap(), big);
    // Under the limit, the same reader restores it.
    drop(presence);
    fs::write(&path, &bytes).unwrap();
    let presence = builder(&clock, &path).max_snapshot_size(2048).build();
    assert_eq!(presence.counts().members, 20);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_second_tracker_on_the_same_file_gets_a_clear_error_until_the_first_is_gone() {
    let dir = dir("two-trackers");
    let path = dir.join("presence.snapshot");
    let (first, _) = restart(wall(T0), &path);
    first.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    first.save_snapshot().unwrap();
    // `build()` cannot fail: the second one starts (from the first one's file)...
    let (second, _) = restart(wall(T0), &path);
    assert_eq!(second.counts().guests, 1);
    second.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    // ...and its saves are refused while the first one holds the file.
    let err = second.save_snapshot().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ResourceBusy);
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    first.save_snapshot().unwrap();
    drop(first);
    second.save_snapshot().unwrap();
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_second_process_holding_the_lock_makes_saves_fail_clearly() {
    let dir = dir("other-process");
    let path = dir.join("presence.snapshot");
    let lock = dir.join("presence.snapshot.lock");
    // flock(1) takes the same advisory lock (flock(2)) from another process.
    // `-o`: the lock stays with flock itself, not its `sleep`, so killing it frees the lock.
    let Ok(mut holder) = std::process::Command::new("flock")
        .arg("-o")
        .arg(&lock)
        .args(["sleep", "10"])
        .spawn()
    else {
        eprintln!("skipped: no flock(1)");
        return;
    };
    let held = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::process::Command::new("flock")
            .args(["-n"])
            .arg(&lock)
            .arg("true")
            .status()
            .is_ok_and(|s| !s.success())
    });
    assert!(held, "the other process took the lock");
    let (presence, _) = restart(wall(T0), &path);
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    let err = presence.save_snapshot().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ResourceBusy);
    assert!(
        err.to_string().contains(&lock.display().to_string()),
        "{err}"
    );
    assert!(!path.exists(), "nothing written");
    holder.kill().unwrap();
    holder.wait().unwrap();
    presence.save_snapshot().unwrap();
    assert!(path.is_file());
    fs::remove_dir_all(dir).unwrap();
}

/// A snapshot file around `payload`, with a valid header and checksum.
fn with_header(payload: &[u8]) -> Vec<u8> {
    let mut out = b"PRESENCE".to_vec();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A payload with the given strings, no session, the given offline users (string index,
/// 1-based) and no history.
fn payload(strings: &[&str], offline: &[u64]) -> Vec<u8> {
    let mut p = Vec::new();
    put_varint(&mut p, T0 * 1000 * 2); // saved at T0 (zigzag)
    p.extend_from_slice(&[0, 0]); // peak 0 at the epoch
    put_varint(&mut p, strings.len() as u64);
    for s in strings {
        put_varint(&mut p, s.len() as u64);
        p.extend_from_slice(s.as_bytes());
    }
    p.push(0); // sessions
    put_varint(&mut p, offline.len() as u64);
    for &user in offline {
        put_varint(&mut p, user);
        p.extend_from_slice(&[0, 0]);
    }
    p.push(0); // history
    p
}

#[test]
fn an_offline_user_name_longer_than_the_write_path_accepts_is_refused_on_load() {
    let dir = dir("long-offline-name");
    let long = "x".repeat(presence_tracker::MAX_USER_LEN + 1);
    let fine = "y".repeat(presence_tracker::MAX_USER_LEN);
    // The same file with a name at the limit restores that user.
    let path = dir.join("presence.snapshot");
    fs::write(&path, with_header(&payload(&[&fine], &[1]))).unwrap();
    let (presence, _) = restart(wall(T0), &path);
    assert!(matches!(presence.user(&fine), UserStatus::Offline { .. }));
    drop(presence);
    fs::remove_file(&path).unwrap();
    let bytes = with_header(&payload(&[&long], &[1]));
    starts_empty_and_moves_aside(&dir, &bytes, "an offline user's name too long");
    fs::remove_dir_all(dir).unwrap();
}
