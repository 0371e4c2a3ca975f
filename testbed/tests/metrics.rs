//! What operators see through the `metrics` feature: gauges, counters by reason and the
//! reap histogram, checked with a debugging recorder after a scripted sequence.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use presence_tracker::{Kind, ManualClock, Presence, PresenceBuilder, Reaper, SessionId};

fn builder(clock: &ManualClock) -> PresenceBuilder {
    Presence::builder()
        .clock(clock.clone())
        .reaper(Reaper::Manual)
        .idle_timeout(Duration::from_secs(60))
        .heartbeat_limit(Duration::from_secs(120))
        .max_sessions(6)
}

use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// One snapshot of the recorder: counters since the previous one (the debugging
/// recorder resets what it reports), gauges as last set.
struct Taken(Vec<(metrics_util::CompositeKey, DebugValue)>);

fn take(snapshotter: &Snapshotter) -> Taken {
    Taken(
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| (key, value))
            .collect(),
    )
}

impl Taken {
    /// The value of metric `name` (with label `reason` if given) of `kind`.
    fn value(&self, kind: MetricKind, name: &str, reason: Option<&str>) -> Option<&DebugValue> {
        self.0
            .iter()
            .find(|(key, _)| {
                key.kind() == kind
                    && key.key().name() == name
                    && reason.is_none_or(|r| {
                        key.key()
                            .labels()
                            .any(|l| l.key() == "reason" && l.value() == r)
                    })
            })
            .map(|(_, v)| v)
    }

    fn counter(&self, name: &str, reason: Option<&str>) -> u64 {
        match self.value(MetricKind::Counter, name, reason) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn gauge(&self, name: &str) -> f64 {
        match self.value(MetricKind::Gauge, name, None) {
            Some(DebugValue::Gauge(g)) => g.into_inner(),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn counters_gauges_and_the_reap_histogram_after_a_scripted_sequence() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let clock = ManualClock::new();
        let presence = builder(&clock).build();
        let ids: Vec<SessionId> = (0..7).map(|_| SessionId::new_v4()).collect();
        presence.touch(ids[0], Kind::member("alice")).unwrap();
        presence.touch(ids[1], Kind::member("alice")).unwrap(); // a second tab
        presence.touch(ids[2], Kind::hidden_member("bob")).unwrap();
        presence.touch(ids[3], Kind::Guest).unwrap();
        presence.touch(ids[4], Kind::Guest).unwrap();
        presence.touch(ids[5], Kind::Bot).unwrap();
        // Full: refused twice, and a touch of a known session is not a refusal.
        assert!(presence.touch(ids[6], Kind::Guest).is_err());
        assert!(presence.touch(ids[6], Kind::Guest).is_err());
        presence.touch(ids[0], Kind::member("alice")).unwrap();
        presence.reap();
        let m = take(&snapshotter);
        assert_eq!(m.gauge("presence_online"), 4.0);
        assert_eq!(m.gauge("presence_members"), 1.0);
        assert_eq!(m.gauge("presence_hidden"), 1.0);
        assert_eq!(m.gauge("presence_guests"), 2.0);
        assert_eq!(m.gauge("presence_bots"), 1.0);
        assert_eq!(m.gauge("presence_sessions"), 6.0);
        assert_eq!(m.counter("presence_joined_total", None), 6);
        assert_eq!(m.counter("presence_refused_total", None), 2);
        assert_eq!(m.counter("presence_left_total", None), 0);

        presence.leave(ids[1]).unwrap(); // left
        for _ in 0..3 {
            clock.advance(Duration::from_secs(40));
            presence.heartbeat(ids[0]); // heartbeats alone: out at the limit
            presence.touch(ids[3], Kind::Guest).unwrap(); // active: stays
        }
        presence.reap(); // 120 s: the rest expired at 60 s, alice's tab at its limit
        let m = take(&snapshotter);
        assert_eq!(m.gauge("presence_online"), 1.0);
        assert_eq!(m.gauge("presence_members"), 0.0);
        assert_eq!(m.gauge("presence_hidden"), 0.0);
        assert_eq!(m.gauge("presence_guests"), 1.0);
        assert_eq!(m.gauge("presence_bots"), 0.0);
        assert_eq!(m.gauge("presence_sessions"), 1.0);
        assert_eq!(m.counter("presence_joined_total", None), 0);
        assert_eq!(m.counter("presence_left_total", Some("left")), 1);
        assert_eq!(
            m.counter("presence_left_total", Some("expired")),
            3,
            "bob, a guest and the bot"
        );
        assert_eq!(m.counter("presence_left_total", Some("heartbeat_limit")), 1);
        assert_eq!(m.counter("presence_refused_total", None), 0);
        match m.value(MetricKind::Histogram, "presence_reap_seconds", None) {
            Some(DebugValue::Histogram(samples)) => {
                assert!(!samples.is_empty());
                assert!(samples.iter().all(|s| s.into_inner() >= 0.0));
            }
            other => panic!("presence_reap_seconds: {other:?}"),
        }
    });
}

#[test]
fn a_restored_session_is_not_counted_as_joined() {
    let path = std::env::temp_dir().join(format!(
        "presence-metrics-{}-{}.snapshot",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let clock = ManualClock::new();
        let before = builder(&clock).snapshot_file(&path).build();
        before.touch(SessionId::new_v4(), Kind::Guest).unwrap();
        before.save_snapshot().unwrap();
        assert_eq!(take(&snapshotter).counter("presence_joined_total", None), 1);
        let after = builder(&ManualClock::new()).snapshot_file(&path).build();
        assert_eq!(after.counts().guests, 1);
        assert_eq!(take(&snapshotter).counter("presence_joined_total", None), 0);
        drop((before, after));
    });
    std::fs::remove_file(&path).unwrap();
}
