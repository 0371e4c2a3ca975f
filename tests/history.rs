//! `history()`: `online` once a minute over the last 24 hours, oldest first, in fixed memory.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use presence_tracker::{Kind, ManualClock, Presence, PresenceBuilder, Reaper, SessionId};

/// A wall-clock time on a whole minute.
const T0: u64 = 1_800_000_000; // 30 000 000 minutes

fn wall(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn builder(clock: &ManualClock) -> PresenceBuilder {
    Presence::builder()
        .clock(clock.clone())
        .reaper(Reaper::Manual)
        .idle_timeout(Duration::from_secs(90))
}

fn minutes(m: u64) -> Duration {
    Duration::from_secs(60 * m)
}

#[test]
fn online_is_sampled_once_a_minute_oldest_first() {
    let clock = ManualClock::starting_at(wall(T0 + 5));
    let presence = builder(&clock).build();
    let alice = SessionId::new_v4();
    presence.touch(alice, Kind::member("alice")).unwrap();
    presence.reap(); // the reaper's tick samples minute 0: 1 online
    clock.advance(Duration::from_secs(20));
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    presence.reap(); // still minute 0: no second sample
    clock.advance(Duration::from_secs(40)); // minute 1
    presence.touch(alice, Kind::member("alice")).unwrap();
    presence.touch(SessionId::new_v4(), Kind::Bot).unwrap(); // bots are not people
    assert_eq!(presence.counts().online, 2); // a read samples minute 1: 2 online
    clock.advance(minutes(1));
    presence.touch(alice, Kind::member("alice")).unwrap();
    presence.reap(); // minute 2: the first guest expired (90 s), 1 online
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        presence.history(),
        vec![(wall(T0), 1), (wall(T0 + 60), 2), (wall(T0 + 120), 1),]
    );
}

#[test]
fn the_history_holds_the_last_24_hours_in_1440_samples() {
    let clock = ManualClock::starting_at(wall(T0));
    let presence = builder(&clock).build();
    let id = SessionId::new_v4();
    // 26 hours, one guest more every hour (each kept alive).
    let mut guests = Vec::new();
    for minute in 0..26 * 60 {
        if minute % 60 == 0 {
            guests.push(SessionId::new_v4());
        }
        for g in &guests {
            presence.touch(*g, Kind::Guest).unwrap();
        }
        presence.touch(id, Kind::member("night-owl")).unwrap();
        presence.reap();
        clock.advance(minutes(1));
    }
    let history = presence.history();
    assert_eq!(history.len(), 1440, "a day of minutes, no more");
    let now = clock.wall_time().unwrap();
    assert_eq!(
        history[0].0,
        now - minutes(1439),
        "the oldest: 24 hours ago"
    );
    assert_eq!(history[1439].0, now, "the newest: this minute");
    assert!(history.windows(2).all(|w| w[1].0 - minutes(1) == w[0].0));
    // The minute 24 hours ago (hour 2 of 26) had 3 guests and the member.
    assert_eq!(history[0].1, 4);
    assert_eq!(history[1439].1, 26 + 1);
}

#[test]
fn a_minute_in_which_nothing_ran_has_no_sample() {
    let clock = ManualClock::starting_at(wall(T0));
    let presence = builder(&clock).build();
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    presence.reap();
    clock.advance(minutes(5)); // no reaper, no read: the guest expired unseen
    let history = presence.history();
    assert_eq!(history, vec![(wall(T0), 1), (wall(T0 + 300), 0)]);
}

#[test]
fn a_faster_interval_samples_faster() {
    let clock = ManualClock::starting_at(wall(T0));
    let presence = builder(&clock)
        .history_interval(Duration::from_secs(2))
        .build();
    for _ in 0..10 {
        presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
        presence.reap();
        clock.advance(Duration::from_secs(1));
    }
    let history = presence.history();
    let online: Vec<usize> = history.iter().map(|&(_, n)| n).collect();
    assert_eq!(online, [1, 3, 5, 7, 9, 10]);
    assert_eq!(history[1].0, wall(T0 + 2));
}

#[test]
fn the_background_reaper_samples_without_any_read() {
    let presence = Presence::builder()
        .reaper(Reaper::Thread)
        .reap_interval(Duration::from_millis(5))
        .history_interval(Duration::from_millis(20))
        .build();
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // One read samples at most one interval; the rest came from the reaper.
    let history = presence.history();
    assert!(history.len() >= 4, "{} samples", history.len());
    assert!(history.iter().all(|&(_, online)| online == 1));
}

#[test]
fn the_history_survives_a_restart() {
    let path = std::env::temp_dir().join(format!(
        "presence-history-{}-{}.snapshot",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let clock = ManualClock::starting_at(wall(T0));
    let before = builder(&clock).snapshot_file(&path).build();
    for _ in 0..3 {
        presence_touch_and_tick(&before, &clock);
    }
    let saved = before.history(); // minutes 0 to 3
    assert_eq!(saved.len(), 4);
    before.save_snapshot().unwrap();

    // Back two minutes later: the old samples, then the new one (everyone expired).
    let clock2 = ManualClock::starting_at(wall(T0 + 300));
    let after = builder(&clock2).snapshot_file(&path).build();
    let history = after.history();
    assert_eq!(&history[..4], &saved[..]);
    assert_eq!(history[4], (wall(T0 + 300), 0));
    assert_eq!(history.len(), 5);
    drop((before, after));
    std::fs::remove_file(&path).unwrap();
}

fn presence_touch_and_tick(presence: &Presence, clock: &ManualClock) {
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    presence.reap();
    clock.advance(minutes(1));
}
