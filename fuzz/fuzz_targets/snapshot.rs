//! The snapshot reader on any bytes: it never panics, never hangs, allocates in proportion
//! to the file, and what it accepts restores into a tracker whose counts equal a recount.
//!
//! An input's first byte chooses how the rest is used: as a whole file (header included,
//! so the header checks are fuzzed too), or as a payload given a valid header (magic,
//! version, length and CRC), so that the fuzzer reaches the records instead of stopping at
//! the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use presence_tracker::__internals::{decode_snapshot, restore_snapshot_bytes, snapshot_with_header};
use presence_tracker::{ManualClock, Presence, Reaper};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        snapshot_with_header(rest)
    };
    let Ok((sessions, offline, history)) = decode_snapshot(&file) else {
        assert!(!restore_snapshot_bytes(&Presence::builder().reaper(Reaper::Manual).build(), &file));
        return;
    };
    // Each record takes bytes in the file: counts cannot exceed what it holds.
    assert!(sessions * 22 + offline * 3 + history * 2 <= file.len());
    let presence = Presence::builder()
        .clock(ManualClock::new())
        .reaper(Reaper::Manual)
        .max_sessions(4096)
        .max_remembered_users(4096)
        .build();
    assert!(restore_snapshot_bytes(&presence, &file));
    let c = presence.counts();
    let all = presence.sessions();
    assert_eq!(c.sessions, all.len());
    assert!(c.sessions <= sessions.min(4096));
    assert_eq!(c.online, c.members + c.hidden + c.guests);
    assert_eq!(c.active + c.idle, c.sessions);
    for s in &all {
        if let Some(user) = s.kind.user() {
            assert!(user.len() <= presence_tracker::MAX_USER_LEN);
        }
        if let Some(page) = &s.page {
            assert!(page.len() <= presence_tracker::MAX_PAGE_LEN);
        }
    }
    assert!(presence.history().len() <= 1440);
});
