//! `GET /presence/stream` (server-sent events: the counts pushed, the session held while
//! open) and `POST /presence/release` (the page hides: its stream's hold is let go), with
//! the registry of open streams that bounds them.
//!
//! A stream is a body polled by the server's connection task, not a task of its own, and
//! has no timer of its own: it waits on the tracker's publish signal (one `watch`
//! receiver) and on one beat shared by all streams (the trust checks and keep-alive
//! comments; with a cluster, the reads of its view). It reads its JSON when a publish found
//! a change, and sends it only if it differs from what it sent last (it keeps a digest, not
//! the JSON). Streams asking for the same pages share one JSON per publish (a small cache
//! keyed by the query), so a change costs one build per distinct query, not one per stream.
//! Its hold is dropped with the body, which the server drops when the connection closes: the
//! session then leaves after `hold_grace` unless its page comes back.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::Presence;

use super::layer::Classified;
use super::routes::{
    MissingPresenceLayer, PageQuery, PresenceSession, RouteState, Settings, counts_body, gone,
    no_content,
};
use crate::SessionId;
use crate::live::Hold;

type Hasher = foldhash::fast::RandomState;

/// Default of [`Routes::max_streams`](super::Routes::max_streams).
pub(super) const MAX_STREAMS: usize = 10_000;
/// Default of [`Routes::streams_per_session`](super::Routes::streams_per_session).
pub(super) const STREAMS_PER_SESSION: usize = 4;
/// A comment this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The longest stream name the page may choose.
const MAX_NAME: usize = 64;

/// A stream's hold and how to end it, shared between the stream and the registry (for a
/// release by name).
#[derive(Debug)]
struct Control {
    hold: Mutex<Option<Hold>>,
    ended: Notify,
}

#[derive(Debug)]
struct Open {
    /// The name the page gave it, if any.
    name: Option<Box<str>>,
    /// Tells this entry from another of the same name.
    serial: u64,
    control: Arc<Control>,
}

/// The open streams, by session: bounded in all and per session.
#[derive(Debug)]
pub(super) struct Streams {
    max: usize,
    per_session: usize,
    open: Mutex<Registry>,
    serial: AtomicU64,
    /// The JSON of the last publish per query, shared by the streams that ask the same.
    cache: Mutex<JsonCache>,
    /// The beat all streams share, started with the first (its task ends with the routes).
    beat: OnceLock<watch::Receiver<u64>>,
}

#[derive(Debug, Default)]
struct Registry {
    by_session: HashMap<SessionId, Vec<Open>, Hasher>,
    total: usize,
}

#[derive(Debug, Default)]
struct JsonCache {
    /// The publish (and, with a cluster, the tick) the entries were built for.
    generation: (u64, u64),
    json: HashMap<Box<str>, Arc<str>, Hasher>,
}

/// Why a stream was not opened.
enum Refused {
    /// `max_streams` streams are open, or `per_session` of this session.
    TooMany,
}

impl Streams {
    pub(super) fn new(max: usize, per_session: usize) -> Self {
        Streams {
            max,
            per_session,
            open: Mutex::new(Registry::default()),
            serial: AtomicU64::new(0),
            cache: Mutex::new(JsonCache::default()),
            beat: OnceLock::new(),
        }
    }

    /// A receiver of the shared beat: every `period` (the streams' trust checks and
    /// keep-alive comments; with a cluster, the publish interval), one timer for all
    /// streams. The task ends when the routes are dropped.
    fn beat(&self, period: Duration) -> watch::Receiver<u64> {
        self.beat
            .get_or_init(|| {
                let (beat, receiver) = watch::channel(0u64);
                tokio::spawn(async move {
                    let mut every = tokio::time::interval_at(Instant::now() + period, period);
                    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = every.tick() => beat.send_modify(|n| *n = n.wrapping_add(1)),
                            () = beat.closed() => return,
                        }
                    }
                });
                receiver
            })
            .clone()
    }

    /// A place for a stream of session `id` named `name`, if the bounds allow.
    fn admit(&self, id: SessionId, name: Option<&str>) -> Result<(u64, Arc<Control>), Refused> {
        let mut open = self.open.lock();
        if open.total >= self.max {
            return Err(Refused::TooMany);
        }
        // Most sessions have one stream: room for one, not the four a first push makes.
        let mine = open
            .by_session
            .entry(id)
            .or_insert_with(|| Vec::with_capacity(1));
        if mine.len() >= self.per_session {
            if mine.is_empty() {
                open.by_session.remove(&id);
            }
            return Err(Refused::TooMany);
        }
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let control = Arc::new(Control {
            hold: Mutex::new(None),
            ended: Notify::new(),
        });
        mine.push(Open {
            name: name.map(Into::into),
            serial,
            control: control.clone(),
        });
        open.total += 1;
        Ok((serial, control))
    }

    /// Stream `serial` of session `id` is gone.
    fn remove(&self, id: SessionId, serial: u64) {
        let mut open = self.open.lock();
        let Some(mine) = open.by_session.get_mut(&id) else {
            return;
        };
        let before = mine.len();
        mine.retain(|o| o.serial != serial);
        let removed = before - mine.len();
        if mine.is_empty() {
            open.by_session.remove(&id);
        }
        open.total -= removed;
    }

    /// Session `id`'s stream named `name`: its hold, taken out, and the stream told to end.
    /// `None` when there is no such stream (it already ended).
    fn take(&self, id: SessionId, name: &str) -> Option<Hold> {
        let control = {
            let open = self.open.lock();
            let mine = open.by_session.get(&id)?;
            let found = mine
                .iter()
                .rev()
                .find(|o| o.name.as_deref() == Some(name))?;
            found.control.clone()
        };
        let hold = control.hold.lock().take();
        control.ended.notify_one();
        hold
    }
}

/// The stream's place in the registry, given back when the stream ends however it ends.
struct Ticket {
    state: RouteState,
    id: SessionId,
    serial: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.state.0.streams.remove(self.id, self.serial);
    }
}

/// A stream name from the page: short, of URL-safe characters; anything else is no name.
pub(super) fn stream_name(raw: &str) -> Option<&str> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_NAME
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(raw)
}

/// `GET /presence/stream`.
pub(super) async fn stream(
    State(state): State<RouteState>,
    PresenceSession(id): PresenceSession,
    classified: Option<axum::Extension<Classified>>,
    query: PageQuery,
) -> Response {
    let Some(axum::Extension(Classified {
        kind,
        track_pages,
        countable,
    })) = classified
    else {
        return MissingPresenceLayer.into_response();
    };
    let settings = &state.0;
    let presence = &settings.presence;
    if presence.is_stopped() {
        // Shutting down: the page polls meanwhile and tries again later.
        return unavailable();
    }
    if !countable {
        // The id was issued by this very response: counted once it comes back.
        return gone();
    }
    let name = query.stream.as_deref().and_then(stream_name);
    let (serial, control) = match settings.streams.admit(id, name) {
        Ok(admitted) => admitted,
        Err(Refused::TooMany) => return too_many(),
    };
    let ticket = Ticket {
        state: state.clone(),
        id,
        serial,
    };
    let page = query.page().filter(|_| track_pages);
    let hold = match presence.hold_on(id, kind, page) {
        Ok(hold) => hold,
        Err(err) => {
            tracing::debug!(error = %err, "presence stream refused");
            return unavailable();
        }
    };
    *control.hold.lock() = Some(hold);
    let beat = settings.streams.beat(beat_period(settings));
    let live = Live::new(state.clone(), query, control, ticket, beat);
    let events = futures_util::stream::unfold(live, Live::next);
    (
        [(
            http::header::HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        )],
        // Keep-alive comments come from the stream's own timer (one timer a stream).
        Sse::new(events),
    )
        .into_response()
}

/// `POST /presence/release?stream=NAME`: the page hides; its stream's hold is let go and the
/// stream ends, and the session goes on as an ordinary one (this request is its heartbeat).
pub(super) async fn release(
    State(state): State<RouteState>,
    PresenceSession(id): PresenceSession,
    query: PageQuery,
) -> Response {
    let settings = &state.0;
    // A page that closes sends this and then its leave, which may arrive first: a
    // heartbeat then would cancel the leave. Otherwise the release is the page's heartbeat
    // (taken while still held, so that the session goes on from now).
    let live = if settings.leaving(id) {
        settings.presence.session(id).is_some()
    } else {
        settings.presence.heartbeat(id)
    };
    release_named(settings, id, &query);
    if live { no_content() } else { gone() }
}

/// Lets go of the hold of session `id`'s stream named in `query`, if it is open: the
/// session goes on from its last request, without a grace.
pub(super) fn release_named(settings: &Settings, id: SessionId, query: &PageQuery) {
    let name = query.stream.as_deref().and_then(stream_name);
    if let Some(hold) = name.and_then(|name| settings.streams.take(id, name)) {
        hold.release();
    }
}

fn too_many() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        )],
    )
        .into_response()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        )],
    )
        .into_response()
}

/// One open stream's state, between two events.
struct Live {
    state: RouteState,
    query: PageQuery,
    /// The cache key of `query`.
    key: Box<str>,
    control: Arc<Control>,
    _ticket: Ticket,
    changes: watch::Receiver<u64>,
    /// The beat all streams share: a trust check (see [`Live::trusted`]) and a keep-alive
    /// comment when due; with a cluster, a read of its view (it changes with other nodes'
    /// flushes).
    beat: watch::Receiver<u64>,
    /// When the page's requests were last checked.
    checked: Instant,
    /// How often they are: a quarter of `idle_timeout`, at most [`KEEP_ALIVE`].
    check_every: Duration,
    /// When the last event or comment went out.
    wrote: Instant,
    /// A hash of the JSON sent last (not the JSON: ten thousand idle streams would each
    /// keep a copy); `None` before the first event.
    sent: Option<u64>,
    /// The hello (the script's heartbeat interval) went out.
    hello: bool,
}

impl Live {
    fn new(
        state: RouteState,
        query: PageQuery,
        control: Arc<Control>,
        ticket: Ticket,
        mut beat: watch::Receiver<u64>,
    ) -> Self {
        let presence = &state.0.presence;
        let mut changes = presence.watch_changes();
        changes.borrow_and_update();
        beat.borrow_and_update();
        let check_every = check_period(presence);
        let key = query.cache_key();
        Live {
            state,
            query,
            key,
            control,
            _ticket: ticket,
            changes,
            beat,
            checked: Instant::now(),
            check_every,
            wrote: Instant::now(),
            sent: None,
            hello: false,
        }
    }

    /// The next event, or `None` when the stream ends (shutdown, released, no longer
    /// trusted, or the tracker gone).
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if !self.hello {
            self.hello = true;
            let beat = self.state.0.presence.idle_timeout().as_millis() / 2;
            let hello = Event::default()
                .event("stream")
                .data(format!("{{\"heartbeat\":{beat}}}"));
            return Some((Ok(hello), self));
        }
        if self.sent.is_none() {
            // At once, and fresh: it shows the visitor's own arrival.
            let json = self.build().await?;
            return Some((Ok(counts_event(&json)), self.sending(&json)));
        }
        loop {
            if self.state.0.presence.is_stopped() {
                return None; // shut down: the page polls, and tries again later
            }
            let beat = tokio::select! {
                biased;
                () = self.control.ended.notified() => return None,
                changed = self.changes.changed() => {
                    // The tracker gone (its publisher with it): nothing more to say.
                    changed.ok()?;
                    false
                }
                beat = self.beat.changed() => {
                    beat.ok()?;
                    true
                }
            };
            if self.state.0.presence.is_stopped() {
                return None;
            }
            if beat && self.checked.elapsed() + Duration::from_millis(5) >= self.check_every {
                self.checked = Instant::now();
                if !self.trusted() {
                    return None;
                }
                // Quiet for about KEEP_ALIVE: a comment, so that proxies keep it open.
                if self.wrote.elapsed() + Duration::from_secs(1) >= KEEP_ALIVE {
                    self.wrote = Instant::now();
                    return Some((Ok(Event::default().comment("")), self));
                }
            }
            if beat && !self.state.0.has_cluster() {
                continue; // without a cluster, only a publish changes the view
            }
            if !self.holding() {
                // Its session was ended (an admin's leave): the page finds out and waits
                // for input to come back, as after a 410.
                return None;
            }
            let json = self.json().await?;
            if self.sent != Some(digest(&json)) {
                return Some((Ok(counts_event(&json)), self.sending(&json)));
            }
        }
    }

    /// Whether the stream's hold still holds its session.
    fn holding(&self) -> bool {
        self.control.hold.lock().as_ref().is_some_and(Hold::is_live)
    }

    fn sending(mut self, json: &str) -> Self {
        self.sent = Some(digest(json));
        self.wrote = Instant::now();
        self
    }

    /// Whether the hold may be kept: the page made a request within `idle_timeout` (its
    /// script heartbeats every half of it). A half-open connection looks open until a write
    /// fails, which can take many minutes: it must not keep a ghost online meanwhile. When
    /// not, the hold goes without a grace (the session is then as quiet as an ordinary one
    /// that stopped beating) and the stream ends.
    fn trusted(&self) -> bool {
        let quiet = {
            let hold = self.control.hold.lock();
            let Some(hold) = hold.as_ref() else {
                return false; // released by name
            };
            hold.quiet_for()
        };
        if quiet.is_some_and(|quiet| quiet < self.state.0.presence.idle_timeout()) {
            return true;
        }
        // Not heard from, or the session ended (an admin's leave).
        let hold = self.control.hold.lock().take();
        if let Some(hold) = hold {
            hold.release();
        }
        false
    }

    /// The JSON for this stream's query at the current publish: shared with the other
    /// streams asking the same.
    async fn json(&mut self) -> Option<Arc<str>> {
        let generation = (*self.changes.borrow(), self.tick_number());
        let streams = &self.state.0.streams;
        {
            let cache = streams.cache.lock();
            if cache.generation == generation {
                if let Some(json) = cache.json.get(&self.key) {
                    return Some(json.clone());
                }
            }
        }
        let json = self.build().await?;
        let mut cache = streams.cache.lock();
        if cache.generation != generation {
            cache.generation = generation;
            cache.json.clear();
        }
        cache.json.insert(self.key.clone(), json.clone());
        Some(json)
    }

    /// Which beat this is, with a cluster (the view changes with it); 0 without.
    fn tick_number(&self) -> u64 {
        if self.state.0.has_cluster() {
            *self.beat.borrow()
        } else {
            0
        }
    }

    async fn build(&self) -> Option<Arc<str>> {
        // Boxed: the reads (a cluster's above all) would otherwise make every waiting
        // stream as large as the largest of them.
        match Box::pin(counts_body(&self.state.0, &self.query)).await {
            Ok(json) => String::from_utf8(json).ok().map(Arc::from),
            Err(err) => {
                tracing::error!(error = %err, "could not serialize presence counts");
                None
            }
        }
    }
}

/// How often a stream checks that its page still makes requests: a quarter of
/// `idle_timeout`, so that a silent page is let go within about `idle_timeout`; at most
/// [`KEEP_ALIVE`], the keep-alive comments' period.
fn check_period(presence: &Presence) -> Duration {
    (presence.idle_timeout() / 4).clamp(Duration::from_millis(10), KEEP_ALIVE)
}

/// The period of the streams' shared beat: the check period; with a cluster, the publish
/// interval if shorter (its view is read at each beat).
fn beat_period(settings: &Settings) -> Duration {
    let check = check_period(&settings.presence);
    if settings.has_cluster() {
        check.min(settings.presence.publish_interval())
    } else {
        check
    }
}

/// A 64-bit digest of a JSON sent: equal JSON, equal digest; a collision (one in 2^64)
/// would only skip one update until the next change.
fn digest(json: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(json)
}

fn counts_event(json: &str) -> Event {
    Event::default().event("counts").data(json)
}
