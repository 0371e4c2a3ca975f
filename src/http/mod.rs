//! Web integration for axum and any tower server (feature `axum`).
//!
//! Three pieces, meant to be used together:
//!
//! - [`PresenceLayer`], a tower [`Layer`](tower_layer::Layer): gives each browser a
//!   session id in a cookie (`presence_id`, v4 UUID, `HttpOnly`, `SameSite=Lax`,
//!   optionally HMAC-signed with a [`Key`], which can be rotated without losing anyone:
//!   [`PresenceLayer::signing_keys`]), classifies the visitor ([`Kind`](crate::Kind))
//!   and records each request as activity on its page once the browser has returned the
//!   cookie. Handlers get the id with the [`PresenceSession`] extractor.
//! - [`routes`] (or [`Routes`] for the settings): `POST /presence/heartbeat`,
//!   `POST /presence/active`, `POST /presence/leave`, `GET /presence/counts`,
//!   `GET /presence/stream` (the counts pushed as server-sent events; the open stream
//!   [holds](crate::Presence::hold) the session), `POST /presence/release` and
//!   `GET /presence/presence.js`.
//! - [`SCRIPT`], the page script served by those routes (plain JS, no dependencies):
//!   while the page is visible, the counts come pushed over one stream that also keeps
//!   the visitor online; otherwise (or where the stream cannot work) it heartbeats with
//!   `fetch` while the page is visible and in use, re-joins after the
//!   server forgot the session, says goodbye with `navigator.sendBeacon` on `pagehide`,
//!   and fills elements marked `data-presence="online"` (or `members`, `hidden`,
//!   `guests`, `bots`, `sessions`, `page`, `peak`, `peak-at`) and
//!   `data-presence-page="/a/path"` with the live counts, and
//!   `data-presence-list="members"` or `"page"` with member names ("alice, bob and 12
//!   more"). [`ScriptTag`] renders its `<script>` tag with the tracker's settings.
//!
//! # Composition
//!
//! Merge the routes into the application at the root, then wrap everything in the layer,
//! so that the routes see the visitor's session. The layer knows the routes by their
//! `/presence/` prefix and does not count them as page views: a heartbeat only calls
//! [`Presence::heartbeat`](crate::Presence::heartbeat).
//!
//! ```no_run
//! use axum::{Router, response::Html, routing::get};
//! use presence_tracker::{Kind, Presence};
//! use presence_tracker::http::{self, PresenceLayer, PresenceSession, ScriptTag};
//!
//! async fn run() -> std::io::Result<()> {
//!     let presence = Presence::new();
//!
//!     let tag = ScriptTag::new(&presence).to_string();
//!     let counts = presence.clone();
//!     let page = move |PresenceSession(_id): PresenceSession| {
//!         let c = counts.counts();
//!         let tag = tag.clone();
//!         async move {
//!             Html(format!(
//!                 "<p><span data-presence=\"online\">{}</span> users online</p>{tag}",
//!                 c.online
//!             ))
//!         }
//!     };
//!
//!     let app = Router::new()
//!         .route("/", get(page))
//!         .merge(http::routes(presence.clone()))
//!         .layer(
//!             PresenceLayer::new(presence)
//!                 .signing_key(http::Key::generate())
//!                 .classify(|req| match req.headers.get("x-user") {
//!                     Some(user) => Kind::member(user.to_str().unwrap_or("?")),
//!                     None => Kind::Guest,
//!                 }),
//!         );
//!
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await
//! }
//! ```
//!
//! # Failure behaviour
//!
//! The layer never fails a request: a bad cookie gets a fresh id (counted once it comes
//! back), and a full tracker
//! ([`PresenceError::Full`](crate::PresenceError::Full)) serves the request untracked
//! with a rate-limited `tracing` warning. The routes answer `410 Gone` to a heartbeat
//! for a session that is not live, which tells the script to wait for user input and
//! re-join.
//!
//! Without a [signing key](PresenceLayer::signing_key) any well-formed UUID a client
//! sends is taken as its id (1000 made-up UUIDs are 1000 visitors); with one, only ids
//! the server issued are. Set a key in production.

mod key;
mod layer;
mod routes;
mod stream;

use std::fmt;
use std::time::Duration;

pub use self::key::{Key, KeyTooShort};
pub use self::layer::{PresenceLayer, PresenceService, ResponseFuture};
pub use self::routes::{MissingPresenceLayer, PresenceSession, Routes, routes};

use crate::Presence;

/// The path prefix of the [`routes`]. The layer does not record requests under it as
/// activity.
pub(crate) const ROUTES_PREFIX: &str = "/presence";

/// The page script (plain JavaScript, no dependencies), as served by
/// `GET /presence/presence.js`. Include it with [`ScriptTag`].
///
/// Settings come from `data-` attributes of its `<script>` tag:
///
/// - `data-interval`: seconds between heartbeats while the page is in use (default 30).
///   Keep it well under the tracker's `idle_timeout`.
/// - `data-idle-timeout`: the tracker's `idle_timeout` in seconds, the bound of the
///   backoff below. Every heartbeat's answer says it too (header `Presence-Idle-Timeout`),
///   and the answer wins, so a page served before a change of setting stays safe.
/// - `data-backoff="off"`: heartbeats at `data-interval` however long the visitor is idle.
/// - `data-heartbeat-limit`: seconds without user input (pointer, key, scroll, touch)
///   after which the script stops beating, so a forgotten tab goes offline (default 1200,
///   the tracker's default `heartbeat_limit`). Input resumes it.
/// - `data-page`: the page key sent with heartbeats (default `location.pathname`, which
///   matches the path recorded by the layer).
/// - `data-refresh`: seconds between reads of `GET /presence/counts` while the tab is
///   visible and in use, so that the numbers on the page follow changes within that
///   time (default: none, the numbers follow the heartbeats). A read is not activity and
///   keeps nobody online.
/// - `data-stream="off"`: poll only, never open the stream.
///
/// **The stream.** While the tab is visible the script opens `GET /presence/stream` (an
/// `EventSource`): the counts arrive as they change, nothing is polled, and the open
/// stream holds the session, so the only requests are a heartbeat every half
/// `idle_timeout` (which keeps the stream's hold trusted) and activity reports. When the
/// tab is hidden it releases the stream's hold (`POST /presence/release`) and closes it:
/// the visitor stays online as an ordinary session, as a hidden tab does when polling; on
/// `pagehide` it closes the stream (so the back/forward cache keeps the page) and its
/// leave names the stream. A stream lost otherwise starts the server's `hold_grace`; the
/// script heartbeats at once and polls meanwhile. Where `EventSource` is missing, where
/// the stream is refused (`429`, `503`: it closes before it opened) or does not open
/// within 5 s, it polls as below and tries the stream again later, backing off up to a
/// minute, never giving it up for good.
///
/// Half a second after it runs, the script reports activity (`POST /presence/active`):
/// that counts a first-time visitor, whose page came without the presence cookie. When
/// polling, it then beats only while the tab is visible, reports input since the last beat
/// as activity, backs off while the visitor is idle (each beat without input since the one
/// before waits twice as long: 30 s, 60 s, 120 s, … up to half of `idle_timeout`, so a
/// session stays online as before and a failed beat, retried at the interval, still comes
/// in time; input or the tab coming back into view brings the next beat within the
/// interval and starts over), stops after `data-heartbeat-limit` without input and on
/// `410 Gone`, re-joins on the next input, sends
/// `navigator.sendBeacon(".../leave")` on `pagehide` (no `unload` or `beforeunload`
/// listener, no WebSocket, so the back/forward cache keeps working), and fills elements
/// marked `data-presence="online|members|hidden|guests|bots|sessions|page|peak|peak-at"`
/// (`peak-at` as `YYYY-MM-DD HH:MM:SS UTC`) and `data-presence-page="/some/path"` (the
/// sessions on that page) with the counts pushed, or returned by each beat or read, and elements
/// marked `data-presence-list="members"` (members online) or `data-presence-list="page"`
/// (sessions on this page) with the names the JSON carries: "alice, bob and 12 more",
/// where 12 is the members count (or the page's session count) minus the names shown.
/// On such an element, `data-presence-more="guest|guests"` names the rest (singular and
/// plural; default `more`) and `data-presence-empty` is the text when there is nobody
/// (default `None`). It writes text only (`textContent`), never markup, so a name such as
/// `<script>` shows as typed.
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub const SCRIPT: &str = include_str!("presence.js");

/// The `<script>` tag that loads [`SCRIPT`], with the heartbeat interval, limit and
/// `idle_timeout` taken from a [`Presence`]. Render it with `Display` (`to_string()` or
/// `format!`).
///
/// ```
/// use std::time::Duration;
/// use presence_tracker::Presence;
/// use presence_tracker::http::ScriptTag;
///
/// let presence = Presence::builder()
///     .idle_timeout(Duration::from_secs(90))
///     .heartbeat_limit(Duration::from_secs(600))
///     .build();
/// assert_eq!(
///     ScriptTag::new(&presence).to_string(),
///     r#"<script src="/presence/presence.js" data-interval="30" data-heartbeat-limit="600" data-idle-timeout="90" defer></script>"#
/// );
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptTag {
    interval: Duration,
    heartbeat_limit: Duration,
    idle_timeout: Duration,
    backoff: bool,
    refresh: Option<Duration>,
    stream: bool,
}

impl ScriptTag {
    /// The tag for `presence`: heartbeats every 30 s, or a third of the tracker's
    /// `idle_timeout` when that is shorter (so two beats may be lost before the session
    /// expires), backing off while the visitor is idle up to half the tracker's
    /// `idle_timeout`, and the tracker's `heartbeat_limit`.
    pub fn new(presence: &Presence) -> Self {
        ScriptTag {
            interval: Duration::from_secs(30).min(presence.idle_timeout() / 3),
            heartbeat_limit: presence.heartbeat_limit(),
            idle_timeout: presence.idle_timeout(),
            backoff: true,
            refresh: None,
            stream: true,
        }
    }

    /// Whether heartbeats back off while the visitor is idle (no pointer, key, scroll or
    /// touch input): each beat without input since the previous one waits twice as long,
    /// up to half the tracker's `idle_timeout`; input starts over at the
    /// [interval](Self::interval). Default: on. Who counts as online is the same either
    /// way (a session lives `idle_timeout` after its last beat); an idle tab sends a
    /// fraction of the requests (BENCHMARKS.md has the figures). Turn it off when the
    /// heartbeats are what keeps the numbers on a page fresh (no
    /// [`refresh`](Self::refresh)) and idle readers must see them move at the interval.
    ///
    /// ```
    /// use presence_tracker::Presence;
    /// use presence_tracker::http::ScriptTag;
    ///
    /// let tag = ScriptTag::new(&Presence::new()).backoff(false);
    /// assert!(tag.to_string().contains(r#"data-backoff="off""#));
    /// ```
    pub fn backoff(mut self, on: bool) -> Self {
        self.backoff = on;
        self
    }

    /// Overrides the heartbeat interval.
    ///
    /// # Panics
    ///
    /// If `interval` is under 100 ms.
    pub fn interval(mut self, interval: Duration) -> Self {
        assert!(
            interval >= Duration::from_millis(100),
            "ScriptTag::interval must be at least 100 ms, got {interval:?}"
        );
        self.interval = interval;
        self
    }

    /// Makes the script read the counts every `every` while the tab is visible and in
    /// use (`data-refresh`), so the numbers on the page follow changes within that time
    /// rather than within a heartbeat interval. Default: off. Each open, visible tab then
    /// costs one `GET /presence/counts` per `every`, an O(1) read.
    ///
    /// ```
    /// use std::time::Duration;
    /// use presence_tracker::Presence;
    /// use presence_tracker::http::ScriptTag;
    ///
    /// let tag = ScriptTag::new(&Presence::new()).refresh(Duration::from_secs(2));
    /// assert!(tag.to_string().contains(r#"data-refresh="2""#));
    /// ```
    ///
    /// # Panics
    ///
    /// If `every` is under 500 ms.
    pub fn refresh(mut self, every: Duration) -> Self {
        assert!(
            every >= Duration::from_millis(500),
            "ScriptTag::refresh must be at least 500 ms, got {every:?}"
        );
        self.refresh = Some(every);
        self
    }
}

impl ScriptTag {
    /// Whether the script opens `GET /presence/stream` while the tab is visible (default:
    /// yes). With `false` (`data-stream="off"`) it only polls: heartbeats, and reads at the
    /// [`refresh`](Self::refresh) interval.
    ///
    /// ```
    /// use presence_tracker::Presence;
    /// use presence_tracker::http::ScriptTag;
    ///
    /// let tag = ScriptTag::new(&Presence::new()).stream(false);
    /// assert!(tag.to_string().contains(r#"data-stream="off""#));
    /// ```
    pub fn stream(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }
}

impl fmt::Display for ScriptTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            r#"<script src="{ROUTES_PREFIX}/presence.js" data-interval="{}" data-heartbeat-limit="{}" data-idle-timeout="{}""#,
            Seconds(self.interval),
            Seconds(self.heartbeat_limit),
            Seconds(self.idle_timeout),
        )?;
        if !self.backoff {
            f.write_str(r#" data-backoff="off""#)?;
        }
        if let Some(refresh) = self.refresh {
            write!(f, r#" data-refresh="{}""#, Seconds(refresh))?;
        }
        if !self.stream {
            f.write_str(r#" data-stream="off""#)?;
        }
        f.write_str(" defer></script>")
    }
}

/// Seconds with at most millisecond precision and no trailing zeros.
pub(crate) struct Seconds(pub(crate) Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis().max(1);
        let (s, frac) = (ms / 1000, ms % 1000);
        if frac == 0 {
            write!(f, "{s}")
        } else {
            let frac = format!("{frac:03}");
            write!(f, "{s}.{}", frac.trim_end_matches('0'))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_short() {
        assert_eq!(Seconds(Duration::from_secs(30)).to_string(), "30");
        assert_eq!(Seconds(Duration::from_millis(1500)).to_string(), "1.5");
        assert_eq!(Seconds(Duration::from_millis(250)).to_string(), "0.25");
    }

    #[test]
    fn presence_routes_are_recognised_by_prefix() {
        assert!(layer::is_presence_route("/presence/heartbeat"));
        assert!(!layer::is_presence_route("/presence"));
        assert!(!layer::is_presence_route("/presenceful/x"));
        assert!(!layer::is_presence_route("/"));
    }
}
