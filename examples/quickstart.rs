//! A simulated forum: visitors arrive, browse, sign in, go idle and leave, while the
//! "who is online" line updates twice a second. Ends by itself after 10 seconds.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Time runs fast: a step is half a second, a session goes idle after 1 s and offline after
//! 2.5 s without a call, so that a few seconds show a whole life.

use std::time::Duration;

/// One step of the simulation.
const STEP: Duration = Duration::from_millis(500);

use presence_tracker::{Event, Kind, LeaveReason, Presence, SessionId};

const NAMES: [&str; 8] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];
const PAGES: [&str; 5] = [
    "/",
    "/forum/rust",
    "/forum/rust/42",
    "/forum/async",
    "/members",
];

/// A visitor of the simulation: a session and how it behaves.
struct Visitor {
    id: SessionId,
    kind: Kind,
    /// Steps until this visitor stops sending anything (then it expires by itself).
    stays: u32,
    /// Closes the tab properly (an explicit leave) instead of just going quiet.
    says_goodbye: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let presence = Presence::builder()
        .idle_timeout(5 * STEP)
        .idle_after(2 * STEP)
        .heartbeat_limit(12 * STEP)
        .reap_interval(STEP / 4)
        .build();
    let mut events = presence.subscribe();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut visitors: Vec<Visitor> = Vec::new();

    for step in 1..=20u32 {
        // Arrivals: mostly guests, now and then a crawler, until the last few seconds.
        if step <= 14 {
            for _ in 0..rng.below(4) {
                let kind = if rng.below(10) == 0 {
                    Kind::Bot
                } else {
                    Kind::Guest
                };
                visitors.push(Visitor {
                    id: SessionId::new_v4(),
                    kind,
                    stays: 3 + rng.below(9),
                    says_goodbye: rng.below(2) == 0,
                });
            }
        }
        for v in &mut visitors {
            if v.stays == 0 {
                continue;
            }
            v.stays -= 1;
            if v.stays == 0 {
                if v.says_goodbye {
                    presence.leave(v.id);
                }
                continue;
            }
            // Some guests sign in; some members hide; a third of the time nothing happens
            // (the page is open but the visitor reads: idle after 2 s, heartbeats keep it).
            if v.kind == Kind::Guest && rng.below(6) == 0 {
                let name = NAMES[rng.below(NAMES.len() as u32) as usize];
                v.kind = if rng.below(4) == 0 {
                    Kind::hidden_member(name)
                } else {
                    Kind::member(name)
                };
            }
            match rng.below(3) {
                0 => {
                    presence.heartbeat(v.id);
                }
                _ => {
                    let page = PAGES[rng.below(PAGES.len() as u32) as usize];
                    presence.visit(v.id, v.kind.clone(), page)?;
                }
            }
        }

        let (mut joined, mut left, mut expired) = (0, 0, 0);
        while let Ok(event) = events.try_recv() {
            match event {
                Event::Joined { .. } => joined += 1,
                Event::Left {
                    reason: LeaveReason::Left,
                    ..
                } => left += 1,
                Event::Left { .. } => expired += 1,
                _ => {}
            }
        }
        let c = presence.counts();
        let busiest = match presence.top_pages(1).first() {
            Some((page, n)) => format!("busiest: {page} ({n})"),
            None => "no pages".to_string(),
        };
        println!(
            "[{:>4.1}s] In total there {} online :: {} registered, {} hidden and {}",
            (step * STEP).as_secs_f32(),
            is_are(c.online, "user"),
            c.members,
            c.hidden,
            count(c.guests, "guest"),
        );
        println!(
            "        (+{}) {} active, {} idle | {busiest} | {joined} joined, {left} left, {expired} expired",
            count(c.bots, "bot"),
            c.active,
            c.idle,
        );
        std::thread::sleep(STEP);
    }
    let c = presence.counts();
    println!(
        "Most users ever online was {} ({} still here at the end).",
        c.peak.online, c.online
    );
    Ok(())
}

/// "1 guest", "2 guests".
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// "is 1 user", "are 2 users".
fn is_are(n: usize, noun: &str) -> String {
    let verb = if n == 1 { "is" } else { "are" };
    format!("{verb} {}", count(n, noun))
}

/// A tiny deterministic generator, so the demo needs no dependency.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % u64::from(n)) as u32
    }
}
