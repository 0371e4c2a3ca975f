//! What operators see through `tracing`: refusals (rate-limited) and each snapshot save and
//! restore. The `metrics` feature's values are checked in the testbed's `metrics` test, which
//! has the debugging recorder.

use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;
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

/// A `tracing` subscriber that keeps each event's message and fields as text, with the
/// thread that emitted it.
///
/// Installed once as the global default: a thread-local default (`with_default`) races with
/// the callsite cache when other tests of the binary run in parallel, and then misses events.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(ThreadId, String)>>>);

/// The process's capturing subscriber.
fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        tracing::subscriber::set_global_default(captured.clone()).unwrap();
        captured
    })
}

impl Captured {
    /// The lines of this thread's events that contain `containing`.
    fn lines(&self, containing: &str) -> Vec<String> {
        let me = std::thread::current().id();
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .filter(|(thread, l)| *thread == me && l.contains(containing))
            .map(|(_, l)| l.clone())
            .collect()
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl tracing::Subscriber for Captured {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(format!("{} ", event.metadata().level()));
        event.record(&mut fields);
        let thread = std::thread::current().id();
        self.0.lock().unwrap().push((thread, fields.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn a_flood_of_refusals_is_one_warning_per_ten_seconds() {
    let captured = captured();
    {
        let clock = ManualClock::new();
        let presence = builder(&clock).max_sessions(1).build();
        presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
        for _ in 0..1000 {
            assert!(presence.touch(SessionId::new_v4(), Kind::Guest).is_err());
        }
        assert_eq!(captured.lines("refused").len(), 1, "the first, at once");
        clock.advance(Duration::from_secs(9));
        presence.touch(SessionId::new_v4(), Kind::Bot).unwrap_err();
        assert_eq!(captured.lines("refused").len(), 1);
        clock.advance(Duration::from_secs(1));
        presence.touch(SessionId::new_v4(), Kind::Bot).unwrap_err();
        let lines = captured.lines("refused");
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("WARN") && lines[0].contains("refused=1 "),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("refused=1001 "),
            "999 + 1 + 1 since the first: {lines:?}"
        );
        assert!(lines[1].contains("max_sessions=1 "), "{lines:?}");
    }
}

#[test]
fn each_snapshot_save_and_restore_says_its_size_and_duration() {
    let path = std::env::temp_dir().join(format!(
        "presence-tracing-{}-{}.snapshot",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let captured = captured();
    {
        let clock = ManualClock::new();
        let before = builder(&clock).snapshot_file(&path).build();
        before.touch(SessionId::new_v4(), Kind::Guest).unwrap();
        before.save_snapshot().unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        let saved = captured.lines("snapshot saved");
        assert_eq!(saved.len(), 1);
        assert!(saved[0].contains(&format!("bytes={size} ")), "{saved:?}");
        assert!(saved[0].contains("took_ms=") && saved[0].contains("sessions=1 "));
        let _after = builder(&clock).snapshot_file(&path).build();
        let restored = captured.lines("snapshot restored");
        assert_eq!(restored.len(), 1);
        assert!(
            restored[0].contains(&format!("bytes={size} ")),
            "{restored:?}"
        );
        assert!(restored[0].contains("took_ms="));
        std::fs::write(&path, b"garbage").unwrap();
        let _third = builder(&clock).snapshot_file(&path).build();
        let warned = captured.lines("moved aside");
        assert_eq!(warned.len(), 1);
        assert!(warned[0].starts_with("WARN"), "{warned:?}");
        for aside in std::fs::read_dir(path.parent().unwrap()).unwrap() {
            let aside = aside.unwrap().path();
            let name = aside.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with(&*path.file_name().unwrap().to_string_lossy())
                && name.contains(".corrupt-")
            {
                std::fs::remove_file(aside).unwrap();
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_reap_pass_over_ten_milliseconds_is_reported() {
    let captured = captured();
    let clock = ManualClock::new();
    let presence = builder(&clock).max_sessions(100_000).build();
    for _ in 0..100_000 {
        presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    }
    clock.advance(Duration::from_secs(61));
    let started = std::time::Instant::now();
    assert_eq!(presence.reap(), 100_000);
    let took = started.elapsed();
    let lines = captured.lines("slow reap pass");
    // Whether the pass is slow depends on the machine; what it must do then does not.
    if took > Duration::from_millis(20) {
        assert_eq!(lines.len(), 1, "a pass of {took:?}: {lines:?}");
        assert!(lines[0].contains("took_ms=") && lines[0].contains("sessions=0 "));
    } else if took < Duration::from_millis(10) {
        assert!(lines.is_empty(), "a pass of {took:?}: {lines:?}");
    }
    eprintln!("a reap of 100 000 sessions took {took:?}");
    let started = std::time::Instant::now();
    presence.reap(); // nothing due: a fast pass, not reported
    if started.elapsed() < Duration::from_millis(10) {
        assert_eq!(captured.lines("slow reap pass").len(), lines.len());
    }
}
