//! The presence routes (heartbeat, activity, leave, counts, script) and the
//! [`PresenceSession`] extractor. The routes rely on [`PresenceLayer`](super::PresenceLayer)
//! for the session id and the visitor's kind; they never parse the cookie themselves.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, OptionalFromRequestParts, Query};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use super::layer::{Classified, MAX_PAGE_LEN};
use super::{ROUTES_PREFIX, SCRIPT};
use crate::{Counts, Presence, SessionId};

/// How long a `leave` waits before taking effect. A navigation or reload sends the old
/// page's `pagehide` beacon *after* the new page was requested; the new page's script
/// beats half a second after it loads, which cancels the pending leave, so moving
/// through the site never shows the visitor as gone.
pub(crate) const LEAVE_GRACE: Duration = Duration::from_secs(2);

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

/// The presence routes, to be merged at the root of an application wrapped in
/// [`PresenceLayer`](super::PresenceLayer):
///
/// | route | answer |
/// |---|---|
/// | `POST /presence/heartbeat` | [`Presence::heartbeat`]: `204 No Content`, or `200` with the JSON counts when the request accepts `application/json`; `410 Gone` when the session is not live (expired, past its heartbeat limit, left, or the server restarted) |
/// | `POST /presence/active` | user input on an open page: [`Presence::visit`] (or `touch`) with the visitor's kind; the script's way to re-join after a `410`. `204` or `200` JSON like the heartbeat |
/// | `POST /presence/leave` | explicit "go offline" (`navigator.sendBeacon` on `pagehide`): `204`; see below |
/// | `GET /presence/counts` | the JSON counts |
/// | `GET /presence/presence.js` | the page [`SCRIPT`], cacheable |
///
/// All but the script take an optional `?page=/some/path`: the JSON then carries
/// `"page": n`, the [`Presence::page_count`] of that page, and `active` records that
/// page. The JSON is [`Counts`] as serialized with the `serde` feature, e.g.
/// `{"online":3,"members":1,"hidden":0,"guests":2,"bots":0,"sessions":3,"active":3,
/// "idle":0,"peak":{"online":5,"at":1700000000000},"page":1}`.
///
/// The layer does not count requests to these routes as page activity (a heartbeat only
/// keeps an open page alive); it still identifies the visitor, so the layer must wrap
/// them: merge the routes *before* calling `.layer(..)`, and keep the `/presence` prefix
/// (do not `nest` them elsewhere).
///
/// **Leave** takes effect after a short grace period (2 s) and only if the session shows
/// no later activity or heartbeat; with `?page=`, it is ignored at once when the session
/// is already on another page. A navigation inside the site sends the old page's leave
/// *after* the new page was requested, so this keeps visitors who move around (or reload)
/// online. One cookie is one session, so closing one of several tabs of a guest still
/// takes the session offline until another tab beats again.
///
/// Responses other than the script carry `Cache-Control: no-store`.
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
    let (p1, p2, p3, p4) = (
        presence.clone(),
        presence.clone(),
        presence.clone(),
        presence,
    );
    Router::new()
        .route(
            &format!("{ROUTES_PREFIX}/heartbeat"),
            post(
                move |s: PresenceSession, q: Query<PageQuery>, h: HeaderMap| {
                    let presence = p1.clone();
                    async move { heartbeat(presence, s, q, h) }
                },
            ),
        )
        .route(
            &format!("{ROUTES_PREFIX}/active"),
            post(
                move |s: PresenceSession,
                      c: Option<axum::Extension<Classified>>,
                      q: Query<PageQuery>,
                      h: HeaderMap| {
                    let presence = p2.clone();
                    async move { active(presence, s, c, q, h) }
                },
            ),
        )
        .route(
            &format!("{ROUTES_PREFIX}/leave"),
            post(move |s: PresenceSession, q: Query<PageQuery>| {
                let presence = p3.clone();
                async move { leave(presence, s, q) }
            }),
        )
        .route(
            &format!("{ROUTES_PREFIX}/counts"),
            get(move |q: Query<PageQuery>| {
                let presence = p4.clone();
                async move { counts_json(&presence, q.page()) }
            }),
        )
        .route(&format!("{ROUTES_PREFIX}/presence.js"), get(script))
}

/// `?page=` of the presence routes.
#[derive(Debug, Deserialize)]
struct PageQuery {
    page: Option<String>,
}

impl PageQuery {
    /// The page, if it looks like a path we would have recorded.
    fn page(&self) -> Option<&str> {
        self.page
            .as_deref()
            .filter(|p| p.starts_with('/') && p.len() <= MAX_PAGE_LEN)
    }
}

/// [`Counts`] plus the asked page's count.
#[derive(Serialize)]
struct CountsBody {
    #[serde(flatten)]
    counts: Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    page: Option<usize>,
}

fn counts_json(presence: &Presence, page: Option<&str>) -> Response {
    let body = CountsBody {
        counts: presence.counts(),
        page: page.map(|p| presence.page_count(p)),
    };
    match serde_json::to_vec(&body) {
        Ok(json) => (
            [
                (CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            json,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(error = %err, "could not serialize presence counts");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .any(|v| v.as_bytes().windows(16).any(|w| w == b"application/json"))
}

fn no_content() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(CACHE_CONTROL, HeaderValue::from_static("no-store"))],
    )
        .into_response()
}

fn beat_answer(presence: &Presence, page: Option<&str>, headers: &HeaderMap) -> Response {
    if wants_json(headers) {
        counts_json(presence, page)
    } else {
        no_content()
    }
}

fn heartbeat(
    presence: Presence,
    PresenceSession(id): PresenceSession,
    query: Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    if presence.heartbeat(id) {
        beat_answer(&presence, query.page(), &headers)
    } else {
        (
            StatusCode::GONE,
            [(CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        )
            .into_response()
    }
}

fn active(
    presence: Presence,
    PresenceSession(id): PresenceSession,
    classified: Option<axum::Extension<Classified>>,
    query: Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(axum::Extension(Classified { kind, track_pages })) = classified else {
        return MissingPresenceLayer.into_response();
    };
    let page = query.page();
    let recorded = match page {
        Some(page) if track_pages => presence.visit(id, kind, page),
        _ => presence.touch(id, kind),
    };
    if let Err(err) = recorded {
        // The layer rate-limits its own warning; this route is driven by user input, so
        // it is rare enough to log at debug level.
        tracing::debug!(error = %err, "presence activity not recorded");
    }
    beat_answer(&presence, page, &headers)
}

fn leave(
    presence: Presence,
    PresenceSession(id): PresenceSession,
    query: Query<PageQuery>,
) -> Response {
    if let Some(info) = presence.session(id) {
        let elsewhere = match (query.page(), info.page.as_deref()) {
            (Some(left), Some(current)) => left != current,
            _ => false,
        };
        if !elsewhere {
            let seen = info.last_seen;
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        tokio::time::sleep(LEAVE_GRACE).await;
                        if presence.session(id).is_some_and(|s| s.last_seen == seen) {
                            presence.leave(id);
                        }
                    });
                }
                // Not on a tokio runtime (another executor): leave at once rather than never.
                Err(_) => {
                    presence.leave(id);
                }
            }
        }
    }
    no_content()
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
