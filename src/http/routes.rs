//! The presence routes (heartbeat, activity, leave, counts, script; the stream and its
//! release are in `stream.rs`) and the [`PresenceSession`] extractor. The routes rely on [`PresenceLayer`](super::PresenceLayer)
//! for the session id and the visitor's kind; they never parse the cookie themselves.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{FromRequestParts, OptionalFromRequestParts, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode};
use parking_lot::Mutex;
use serde::Serialize;

use super::layer::{Classified, page_key};
use super::stream::{self, MAX_STREAMS, STREAMS_PER_SESSION, Streams};
use super::{ROUTES_PREFIX, SCRIPT, Seconds};
use crate::{Counts, Presence, SessionId, UserId};

/// How long a `leave` waits before taking effect by default. A navigation or reload sends
/// the old page's `pagehide` beacon *after* the new page was requested; the new page's
/// script reports half a second after it runs, which cancels the pending leave, so moving
/// through the site never shows the visitor as gone.
const LEAVE_GRACE: Duration = Duration::from_secs(2);

const SCRIPT_ETAG: &str = concat!("\"presence-tracker-", env!("CARGO_PKG_VERSION"), "\"");

/// The visitor's [`SessionId`], as put in the request extensions by
/// [`PresenceLayer`](super::PresenceLayer).
///
/// Extracting it from a request the layer did not handle (the layer is missing, or it
/// [skipped](super::PresenceLayer::skip) the request) fails with
/// [`MissingPresenceLayer`], a 500; use `Option<PresenceSession>` where that is expected.
///
/// ```
/// use axum::{Router, routing::get};
/// use presence_tracker::Presence;
/// use presence_tracker::http::{PresenceLayer, PresenceSession};
///
/// async fn whoami(PresenceSession(id): PresenceSession) -> String {
///     format!("your session is {id}")
/// }
///
/// let presence = Presence::new();
/// let app: Router = Router::new()
///     .route("/whoami", get(whoami))
///     .layer(PresenceLayer::new(presence));
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PresenceSession(pub SessionId);

/// Rejection of [`PresenceSession`]: the request did not go through
/// [`PresenceLayer`](super::PresenceLayer). A server misconfiguration, answered with
/// 500 Internal Server Error.
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MissingPresenceLayer;

impl std::fmt::Display for MissingPresenceLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "no presence session on this request: wrap the router in PresenceLayer \
             (and do not skip this path)",
        )
    }
}

impl std::error::Error for MissingPresenceLayer {}

impl IntoResponse for MissingPresenceLayer {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PresenceSession {
    type Rejection = MissingPresenceLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<SessionId>()
            .map(|id| PresenceSession(*id))
            .ok_or(MissingPresenceLayer)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for PresenceSession {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<SessionId>()
            .map(|id| PresenceSession(*id)))
    }
}

/// The presence routes with the default settings; see [`Routes`] for what they answer
/// and for the settings.
///
/// ```
/// use axum::{Router, routing::get};
/// use presence_tracker::Presence;
/// use presence_tracker::http::{self, PresenceLayer};
///
/// let presence = Presence::new();
/// let app: Router = Router::new()
///     .route("/", get(|| async { "home" }))
///     .merge(http::routes(presence.clone()))
///     .layer(PresenceLayer::new(presence));
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub fn routes<S>(presence: Presence) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Routes::new(presence).build()
}

/// The presence routes and their settings, to be merged at the root of an application
/// wrapped in [`PresenceLayer`](super::PresenceLayer). [`routes`] is
/// `Routes::new(presence).build()`.
///
/// | route | answer |
/// |---|---|
/// | `POST /presence/heartbeat` | [`Presence::heartbeat`]: `204 No Content`, or `200` with the JSON counts when the request accepts `application/json`; `410 Gone` when the session is not live (expired, past its heartbeat limit, left, never joined, or the server restarted). Never creates or revives a session |
/// | `POST /presence/active` | user input on an open page: [`Presence::visit`] (or `touch`) with the visitor's kind; the script's first call after load, and its way to re-join after a `410`. `204` or `200` JSON like the heartbeat; `410 Gone` when the request brought no valid cookie (see below) |
/// | `POST /presence/leave` | explicit "go offline" (`navigator.sendBeacon` on `pagehide`): `204`; see below |
/// | `GET /presence/counts` | the JSON counts |
/// | `GET /presence/stream` | the JSON counts pushed (server-sent events) while the page is open; the open stream holds the session. See below |
/// | `POST /presence/release` | `?stream=NAME`: the page hides; that stream's hold is let go (the session goes on as an ordinary one) and the stream ends. `204`, or `410` like a heartbeat |
/// | `GET /presence/presence.js` | the page [`SCRIPT`](super::SCRIPT), cacheable |
///
/// The JSON is [`Counts`] as serialized with the `serde` feature, plus `names`: the first
/// [`names`](Routes::names) listed members online by name ([`Presence::online_members`];
/// hidden users never), e.g. `{"online":3,"members":1,"hidden":0,"guests":2,"bots":0,
/// "sessions":3,"active":3,"idle":0,"peak":{"online":5,"at":1700000000000},
/// "names":["alice"]}`. All but the script take an optional `?page=/some/path`: the JSON
/// then also carries `"page": n`, the [`Presence::page_count`] of that page, and
/// `"page_names"`, its listed members ([`Presence::page_members`]); `active` records that
/// page. They also take up to 32 `pages=/other/path` (repeated), answered under
/// `"pages": {"/other/path": n}`, so that one request refreshes the viewer counts of a
/// list of links. Pages are cut to [`MAX_PAGE_LEN`](crate::MAX_PAGE_LEN) bytes as the
/// layer records them.
///
/// The layer does not count requests to these routes as page activity (a heartbeat only
/// keeps an open page alive); it still identifies the visitor, so the layer must wrap
/// them: merge the routes *before* calling `.layer(..)`, and keep the `/presence` prefix
/// (do not `nest` them elsewhere).
///
/// **Counted once the cookie comes back.** `active` records nothing for a request that
/// brought no valid presence cookie (it was just issued one), unless the layer
/// [counts first requests](super::PresenceLayer::count_first_request): it answers `410`,
/// and the script, which now holds the cookie, asks again once.
///
/// **Leave** takes effect after a short grace period ([`leave_grace`](Routes::leave_grace),
/// default 2 s) and only if the session shows no later activity or heartbeat; with
/// `?page=`, it is ignored at once when the session is already on another page. A
/// navigation inside the site sends the old page's leave *after* the new page was
/// requested, so this keeps visitors who move around (or reload) online. A session has at
/// most one pending leave however many arrive (a repeated leave restarts its grace). One
/// cookie is one session, so closing one of several tabs takes the session offline
/// unless another tab reports within the grace (a tab that becomes visible does so at
/// once).
///
/// **Stream** (`text/event-stream`): an event `stream` (`{"heartbeat": ms}`, how often the
/// script should send a heartbeat while the stream is open: half the tracker's
/// `idle_timeout`), then an event `counts` with the JSON of `GET /presence/counts` for the
/// same `?page=` and `pages=`, at once and then whenever it changed, at most every
/// [`publish_interval`](crate::PresenceBuilder::publish_interval); a comment every 15 s
/// keeps proxies from closing it. While open it [holds](Presence::hold) the visitor's
/// session on its page: no expiry, no heartbeat needed. Its hold is trusted for
/// `idle_timeout` after the browser's last request (a half-open connection must not keep
/// a ghost online); when the connection closes without a release or a leave (a crash, a
/// lost network), the session leaves after [`hold_grace`](crate::PresenceBuilder::hold_grace)
/// unless the page comes back. `?stream=NAME` (up to 64 letters, digits, `-`, `_`) names it
/// for `release` and `leave`. Answers `429` past [`max_streams`](Routes::max_streams) open
/// streams or [`streams_per_session`](Routes::streams_per_session) of one session, `410`
/// when the request brought no valid cookie, `503` once the tracker is
/// [shut down](Presence::shutdown) (open streams end then, so a graceful shutdown
/// completes) or when the tracker is full. It carries `Cache-Control: no-cache` and
/// `X-Accel-Buffering: no`; keep it out of response compression (tower-http's default
/// predicate does), which would hold events back.
///
/// Responses other than the script and the stream carry `Cache-Control: no-store`. The
/// answers of `heartbeat` and `active` carry `Presence-Idle-Timeout`, the tracker's
/// `idle_timeout` in seconds (e.g. `300`, or `0.5`), which bounds the page script's backoff.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use presence_tracker::Presence;
/// use presence_tracker::http::{PresenceLayer, Routes};
///
/// let presence = Presence::new();
/// let app: Router = Router::new()
///     .route("/", get(|| async { "home" }))
///     .merge(Routes::new(presence.clone()).leave_grace(Duration::from_secs(3)))
///     .layer(PresenceLayer::new(presence));
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Clone, Debug)]
#[must_use = "a Routes does nothing until it is built into a Router"]
pub struct Routes {
    presence: Presence,
    leave_grace: Duration,
    names: usize,
    max_streams: usize,
    streams_per_session: usize,
    #[cfg(feature = "redis")]
    cluster: Option<crate::cluster::Cluster>,
}

impl Routes {
    /// The routes for `presence`, with the defaults: a leave grace of 2 s, 50 names, at
    /// most 10 000 streams, 4 of one session.
    pub fn new(presence: Presence) -> Self {
        Routes {
            presence,
            leave_grace: LEAVE_GRACE,
            names: 50,
            max_streams: MAX_STREAMS,
            streams_per_session: STREAMS_PER_SESSION,
            #[cfg(feature = "redis")]
            cluster: None,
        }
    }

    /// The most `GET /presence/stream` open at once; past it a stream is answered `429` and
    /// the script polls instead (and tries the stream again later). Default 10 000. A
    /// stream costs its connection and a few KiB (the benchmarks document measures it);
    /// serving many needs a raised open-files limit (`ulimit -n`).
    ///
    /// ```
    /// use presence_tracker::Presence;
    /// use presence_tracker::http::Routes;
    ///
    /// let routes = Routes::new(Presence::new()).max_streams(50_000);
    /// # let _: axum::Router = routes.build();
    /// ```
    ///
    /// # Panics
    ///
    /// If `max` is 0.
    pub fn max_streams(mut self, max: usize) -> Self {
        assert!(max > 0, "Routes::max_streams must be at least 1");
        self.max_streams = max;
        self
    }

    /// The most streams one session (one browser: its tabs share the cookie) may have open;
    /// past it, `429` and that tab polls. Default 4: the script opens a stream only while
    /// its tab is visible, and a browser over HTTP/1.1 has six connections per host for
    /// all its tabs, so four streams leave two for everything else.
    ///
    /// ```
    /// use presence_tracker::Presence;
    /// use presence_tracker::http::Routes;
    ///
    /// let routes = Routes::new(Presence::new()).streams_per_session(2);
    /// # let _: axum::Router = routes.build();
    /// ```
    ///
    /// # Panics
    ///
    /// If `n` is 0 or over 64.
    pub fn streams_per_session(mut self, n: usize) -> Self {
        assert!(
            (1..=64).contains(&n),
            "Routes::streams_per_session must be between 1 and 64, got {n}"
        );
        self.streams_per_session = n;
        self
    }

    /// Answers with the cluster-wide view (feature `redis`): the JSON counts (of
    /// `GET /presence/counts` and of the heartbeat and activity answers) are
    /// [`ClusterCounts`](crate::cluster::ClusterCounts) (`online`, `members`, `hidden`,
    /// `guests`, `bots`, `sessions`, `peak` as before; `nodes`, `as_of` and `stale` added;
    /// `active` and `idle` are this node's only and left out), and page counts and names
    /// come from every node. When Redis does not answer, page counts and names fall back
    /// to this node's and the counts are the last view, with `"stale": true`.
    ///
    /// Without sticky sessions a heartbeat can reach a node that does not know the
    /// session: this node then asks the cluster, and a session another node holds is taken
    /// up here (as a touch with its kind and page) and answered `204`, not `410`. A leave
    /// reaching such a node takes the session up the same way, then ends it (after the
    /// grace) for the whole cluster.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn cluster(mut self, cluster: crate::cluster::Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// How many member names the JSON carries: the first `n` of
    /// [`Presence::online_members`] under `names` and, with `?page=`, of
    /// [`Presence::page_members`] under `page_names`. Default: 50. Zero leaves both out.
    ///
    /// Each list costs what it returns, so a page of names on every heartbeat and read
    /// is cheap; hidden users are never listed.
    ///
    /// # Panics
    ///
    /// If `n` is over 1000: the JSON goes to every open tab on every read.
    pub fn names(mut self, n: usize) -> Self {
        assert!(
            n <= MAX_NAMES,
            "Routes::names must be at most {MAX_NAMES}, got {n}"
        );
        self.names = n;
        self
    }

    /// How long a `leave` waits before it takes effect; any activity or heartbeat of the
    /// session meanwhile cancels it. Default: 2 s, enough for the next page of a
    /// navigation or reload to load and report (its script reports half a second after
    /// it runs). Zero makes a leave take effect at once, so a reload shows the visitor
    /// gone until the new page reports.
    ///
    /// # Panics
    ///
    /// If `grace` is longer than a minute: past that, a goodbye is no faster than an
    /// expiry with a short `idle_timeout`.
    pub fn leave_grace(mut self, grace: Duration) -> Self {
        assert!(
            grace <= MAX_LEAVE_GRACE,
            "Routes::leave_grace must be at most {MAX_LEAVE_GRACE:?}, got {grace:?}"
        );
        self.leave_grace = grace;
        self
    }

    /// The [`Router`] serving the routes, ready to be merged into an application of any
    /// state type.
    pub fn build<S>(self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let idle_timeout = Seconds(self.presence.idle_timeout()).to_string();
        let state = RouteState(Arc::new(Settings {
            // Digits and a dot: always a valid header value. Were it not, no header: the
            // script then keeps its interval fixed, never a wrong bound.
            idle_timeout: HeaderValue::try_from(idle_timeout).ok(),
            presence: self.presence,
            leave_grace: self.leave_grace,
            names: self.names,
            pending_leaves: Mutex::new(HashMap::default()),
            streams: Streams::new(self.max_streams, self.streams_per_session),
            #[cfg(feature = "redis")]
            cluster: self.cluster,
        }));
        Router::new()
            .route(&format!("{ROUTES_PREFIX}/heartbeat"), post(heartbeat))
            .route(&format!("{ROUTES_PREFIX}/active"), post(active))
            .route(&format!("{ROUTES_PREFIX}/leave"), post(leave))
            .route(&format!("{ROUTES_PREFIX}/release"), post(stream::release))
            .route(&format!("{ROUTES_PREFIX}/counts"), get(counts))
            .route(&format!("{ROUTES_PREFIX}/stream"), get(stream::stream))
            .route(&format!("{ROUTES_PREFIX}/presence.js"), get(script))
            .with_state(state)
    }
}

impl<S> From<Routes> for Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    fn from(routes: Routes) -> Self {
        routes.build()
    }
}

/// The longest [`Routes::leave_grace`].
const MAX_LEAVE_GRACE: Duration = Duration::from_secs(60);

/// The most names [`Routes::names`] accepts.
const MAX_NAMES: usize = 1000;

/// The most `pages=` one counts request is answered for; more are ignored.
const MAX_PAGES_PER_REQUEST: usize = 32;

/// The routes' shared state.
#[derive(Clone)]
pub(super) struct RouteState(pub(super) Arc<Settings>);

pub(super) struct Settings {
    pub(super) presence: Presence,
    /// The `Presence-Idle-Timeout` of the beats' answers.
    idle_timeout: Option<HeaderValue>,
    leave_grace: Duration,
    names: usize,
    /// Sessions with a leave waiting out its grace, and the `last_seen` it was sent at.
    /// One entry (and one task) per session however many leaves arrive, so its size is
    /// bounded by the live sessions.
    pending_leaves: Mutex<HashMap<SessionId, PendingLeave, foldhash::fast::RandomState>>,
    /// The open streams.
    pub(super) streams: Streams,
    #[cfg(feature = "redis")]
    cluster: Option<crate::cluster::Cluster>,
}

impl Settings {
    /// Whether a leave of session `id` is waiting out its grace.
    pub(super) fn leaving(&self, id: SessionId) -> bool {
        self.pending_leaves.lock().contains_key(&id)
    }

    /// Whether the JSON is the cluster's view.
    pub(super) fn has_cluster(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.cluster.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }
}

#[derive(Clone, Copy)]
struct PendingLeave {
    /// The session's last request (touch, visit or heartbeat) when the (latest) leave
    /// arrived.
    seen: SystemTime,
    /// When the grace of the latest leave ends.
    due: tokio::time::Instant,
}

/// `?page=`, the repeated `pages=` and `stream=` of the presence routes.
#[derive(Debug, Default)]
pub(super) struct PageQuery {
    page: Option<String>,
    pages: Vec<String>,
    /// The stream a release or a leave names (unchecked: see `stream::stream_name`).
    pub(super) stream: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for PageQuery {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // A malformed query is no reason to refuse a heartbeat: it is read as no page.
        let pairs = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|Query(pairs)| pairs)
            .unwrap_or_default();
        let mut q = PageQuery::default();
        for (key, value) in pairs {
            match key.as_str() {
                "page" if q.page.is_none() => q.page = Some(value),
                "stream" if q.stream.is_none() => q.stream = Some(value),
                "pages" if q.pages.len() < MAX_PAGES_PER_REQUEST && is_page(&value) => {
                    let page = page_key(&value);
                    if !q.pages.iter().any(|p| p == page) {
                        q.pages.push(page.to_owned());
                    }
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

/// Whether `page` looks like a path the layer would have recorded.
fn is_page(page: &str) -> bool {
    page.starts_with('/')
}

impl PageQuery {
    /// The page, if it looks like a path, as the layer records it.
    pub(super) fn page(&self) -> Option<&str> {
        self.page.as_deref().filter(|p| is_page(p)).map(page_key)
    }

    /// What the JSON depends on, as one string: streams asking the same share it.
    pub(super) fn cache_key(&self) -> Box<str> {
        let mut key = String::from(self.page().unwrap_or(""));
        for page in &self.pages {
            key.push('\n');
            key.push_str(page);
        }
        key.into()
    }
}

/// [`Counts`] plus the asked pages' counts and the member names.
#[derive(Serialize)]
struct CountsBody<'a, C: Serialize = Counts> {
    #[serde(flatten)]
    counts: C,
    #[serde(skip_serializing_if = "Option::is_none")]
    page: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_map")]
    pages: Vec<(&'a str, usize)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    names: Option<Vec<UserId>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    page_names: Option<Vec<UserId>>,
}

fn as_map<S: serde::Serializer>(pages: &[(&str, usize)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pages.iter().map(|(k, v)| (k, v)))
}

async fn counts_json(settings: &Settings, query: &PageQuery) -> Response {
    match counts_body(settings, query).await {
        Ok(json) => json_response(json),
        Err(err) => {
            tracing::error!(error = %err, "could not serialize presence counts");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The JSON counts for `query`: this node's, or the cluster's view.
pub(super) async fn counts_body(
    settings: &Settings,
    query: &PageQuery,
) -> Result<Vec<u8>, serde_json::Error> {
    #[cfg(feature = "redis")]
    if let Some(cluster) = &settings.cluster {
        return cluster_json(settings, cluster, query).await;
    }
    let presence = &settings.presence;
    let n = settings.names;
    let page = query.page();
    let body = CountsBody {
        counts: presence.counts(),
        page: page.map(|p| presence.page_count(p)),
        names: (n > 0).then(|| presence.online_members(n)),
        page_names: page.filter(|_| n > 0).map(|p| presence.page_members(p, n)),
        pages: query
            .pages
            .iter()
            .map(|p| (p.as_str(), presence.page_count(p)))
            .collect(),
    };
    serde_json::to_vec(&body)
}

/// The counts from the cluster-wide view; page counts and names fall back to this node's
/// when Redis does not answer (the counts then say `"stale": true`).
#[cfg(feature = "redis")]
async fn cluster_json(
    settings: &Settings,
    cluster: &crate::cluster::Cluster,
    query: &PageQuery,
) -> Result<Vec<u8>, serde_json::Error> {
    let presence = &settings.presence;
    let n = settings.names;
    let page = query.page();
    let mut counts = cluster.counts();
    let mut degraded = false;
    let page_count = match page {
        Some(p) => Some(cluster.page_count(p).await.unwrap_or_else(|_| {
            degraded = true;
            presence.page_count(p)
        })),
        None => None,
    };
    let names = if n > 0 {
        Some(cluster.online_members(n).await.unwrap_or_else(|_| {
            degraded = true;
            presence.online_members(n)
        }))
    } else {
        None
    };
    let page_names = match page.filter(|_| n > 0) {
        Some(p) => Some(cluster.page_members(p, n).await.unwrap_or_else(|_| {
            degraded = true;
            presence.page_members(p, n)
        })),
        None => None,
    };
    let asked: Vec<&str> = query.pages.iter().map(String::as_str).collect();
    let pages = match cluster.page_counts(&asked).await {
        Ok(c) => asked.iter().copied().zip(c).collect(),
        Err(_) => {
            degraded |= !asked.is_empty();
            asked.iter().map(|p| (*p, presence.page_count(p))).collect()
        }
    };
    counts.stale |= degraded;
    serde_json::to_vec(&CountsBody {
        counts,
        page: page_count,
        names,
        page_names,
        pages,
    })
}

fn json_response(json: Vec<u8>) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        json,
    )
        .into_response()
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .any(|v| v.as_bytes().windows(16).any(|w| w == b"application/json"))
}

pub(super) fn no_content() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(CACHE_CONTROL, HeaderValue::from_static("no-store"))],
    )
        .into_response()
}

pub(super) fn gone() -> Response {
    (
        StatusCode::GONE,
        [(CACHE_CONTROL, HeaderValue::from_static("no-store"))],
    )
        .into_response()
}

/// The name of the header that tells the page script the tracker's `idle_timeout`.
const IDLE_TIMEOUT_HEADER: &str = "presence-idle-timeout";

async fn beat_answer(settings: &Settings, query: &PageQuery, headers: &HeaderMap) -> Response {
    let mut res = if wants_json(headers) {
        counts_json(settings, query).await
    } else {
        no_content()
    };
    if let Some(idle_timeout) = &settings.idle_timeout {
        res.headers_mut()
            .insert(IDLE_TIMEOUT_HEADER, idle_timeout.clone());
    }
    res
}

async fn counts(State(state): State<RouteState>, query: PageQuery) -> Response {
    counts_json(&state.0, &query).await
}

async fn heartbeat(
    State(state): State<RouteState>,
    PresenceSession(id): PresenceSession,
    query: PageQuery,
    headers: HeaderMap,
) -> Response {
    if state.0.presence.heartbeat(id) {
        return beat_answer(&state.0, &query, &headers).await;
    }
    if take_up(&state.0, id).await.is_some() {
        return beat_answer(&state.0, &query, &headers).await;
    }
    gone()
}

async fn active(
    State(state): State<RouteState>,
    PresenceSession(id): PresenceSession,
    classified: Option<axum::Extension<Classified>>,
    query: PageQuery,
    headers: HeaderMap,
) -> Response {
    let Some(axum::Extension(Classified {
        kind,
        track_pages,
        countable,
    })) = classified
    else {
        return MissingPresenceLayer.into_response();
    };
    if !countable {
        // The id was issued by this very response: the visitor counts once it comes back.
        return gone();
    }
    let presence = &state.0.presence;
    let recorded = match query.page() {
        Some(page) if track_pages => presence.visit(id, kind, page),
        _ => presence.touch(id, kind),
    };
    if let Err(err) = recorded {
        // The layer rate-limits its own warning; this route is driven by user input, so
        // it is rare enough to log at debug level.
        tracing::debug!(error = %err, "presence activity not recorded");
    }
    beat_answer(&state.0, &query, &headers).await
}

/// Without sticky sessions a request may reach a node that does not know its session:
/// with a cluster attached, a session another node holds is taken up here (a touch with
/// its kind and page). `None` when no node holds it (or without a cluster).
async fn take_up(settings: &Settings, id: SessionId) -> Option<crate::SessionInfo> {
    #[cfg(feature = "redis")]
    if let Some(cluster) = &settings.cluster {
        if let Ok(Some((kind, page))) = cluster.live_session(id).await {
            let presence = &settings.presence;
            let taken = match page {
                Some(page) => presence.visit(id, kind, &page),
                None => presence.touch(id, kind),
            };
            if taken.is_ok() {
                return presence.session(id);
            }
        }
    }
    #[cfg(not(feature = "redis"))]
    let _ = (settings, id);
    None
}

async fn leave(
    State(state): State<RouteState>,
    PresenceSession(id): PresenceSession,
    query: PageQuery,
) -> Response {
    let settings = &state.0;
    // The page's stream, if it is still open, lets go first: its hold must not keep the
    // session (another tab's may).
    stream::release_named(settings, id, &query);
    let info = match settings.presence.session(id) {
        Some(info) => info,
        // Live on another node: taken up here, so that this leave ends it for the cluster.
        None => match take_up(settings, id).await {
            Some(info) => info,
            None => return no_content(),
        },
    };
    let elsewhere = match (query.page(), info.page.as_deref()) {
        (Some(left), Some(current)) => left != current,
        _ => false,
    };
    if elsewhere {
        return no_content();
    }
    let runtime = match tokio::runtime::Handle::try_current() {
        Ok(runtime) if !settings.leave_grace.is_zero() => runtime,
        // No grace, or not on a tokio runtime (another executor): leave at once rather
        // than never.
        _ => {
            settings.presence.leave(id);
            return no_content();
        }
    };
    let pending = PendingLeave {
        // The time of its last request, holds aside (a held session reads as seen now).
        seen: settings.presence.last_call(id).unwrap_or(info.last_seen),
        due: tokio::time::Instant::now() + settings.leave_grace,
    };
    let first = settings.pending_leaves.lock().insert(id, pending).is_none();
    if first {
        runtime.spawn(settle_leave(state.clone(), id, pending.due));
    }
    no_content()
}

/// Waits out a session's pending leave, following it when a later leave moved it, then
/// ends the session unless it showed life since.
async fn settle_leave(state: RouteState, id: SessionId, mut due: tokio::time::Instant) {
    let settings = &state.0;
    loop {
        tokio::time::sleep_until(due).await;
        let mut pending = settings.pending_leaves.lock();
        let Some(leave) = pending.get(&id).copied() else {
            return;
        };
        if leave.due > due {
            due = leave.due;
            continue;
        }
        pending.remove(&id);
        drop(pending);
        // No lock is held here: `leave` sends events. A session another tab's stream holds
        // stays; so does one that made a request since.
        let presence = &settings.presence;
        let quiet = presence.holds(id) == 0 && presence.last_call(id) == Some(leave.seen);
        if quiet {
            settings.presence.leave(id);
        }
        return;
    }
}

async fn script(headers: HeaderMap) -> Response {
    let cache = [
        (
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        ),
        (ETAG, HeaderValue::from_static(SCRIPT_ETAG)),
    ];
    let fresh = headers
        .get(IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == SCRIPT_ETAG.as_bytes());
    if fresh {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("application/javascript; charset=utf-8"),
        )],
        cache,
        SCRIPT,
    )
        .into_response()
}
