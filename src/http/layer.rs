//! The tower layer: reads (or issues) the presence cookie, classifies the visitor and
//! records the request as activity once the browser has shown that it keeps the cookie.
//! It owns the cookie format and must never fail a request: every problem with the cookie
//! is answered with a fresh id.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cookie::{Cookie, CookieJar, SameSite};
use http::header::{COOKIE, SET_COOKIE};
use http::request::Parts;
use http::{HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::{Key, ROUTES_PREFIX};
use crate::{Kind, Presence, PresenceError, SessionId};

/// The length of a signed cookie value: 44 characters of base64 MAC, then the
/// 36-character id. Anything else is not ours and is refused before any MAC is computed.
const SIGNED_VALUE_LEN: usize = 44 + 36;

/// How many cookies of our name a request may carry before the rest are ignored. Browsers
/// send one, or a few when parent domains or paths set their own; checking a signed one
/// costs an HMAC, so a request packed with thousands must not cost thousands.
const MAX_CANDIDATES: usize = 8;

/// A request path as recorded: cut to [`MAX_PAGE_LEN`](crate::MAX_PAGE_LEN) bytes on a
/// character boundary, so that one visitor cannot make the page table hold kilobytes per
/// session and a long path is still a page rather than a refused call.
pub(crate) fn page_key(path: &str) -> &str {
    if path.len() <= crate::MAX_PAGE_LEN {
        return path;
    }
    let mut end = crate::MAX_PAGE_LEN;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

/// A refused call ("tracker full", a user name over the limit) is logged at most this
/// often, so a full tracker cannot flood the log.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

type ClassifyFn = dyn Fn(&Parts) -> Kind + Send + Sync;
type SkipFn = dyn Fn(&Parts) -> bool + Send + Sync;

/// A [`tower_layer::Layer`] that gives every browser a session id (a cookie) and records
/// each request in a [`Presence`] tracker.
///
/// For every request that is not [skipped](PresenceLayer::skip) the service
///
/// 1. reads the cookie (default name `presence_id`). When the request carries several
///    cookies of that name (a parent domain may set one too), the first valid one wins,
///    so the visitor keeps one id (only the first 8 are looked at). Without a valid one (missing, malformed, oversized,
///    non-UTF-8 or badly signed) a fresh [`SessionId::new_v4`] is issued with a
///    `Set-Cookie` header (`HttpOnly; SameSite=Lax; Path=/`, `Secure` unless turned off,
///    `Max-Age`). One signed with a previous key during a
///    [key rotation](PresenceLayer::signing_keys) keeps its id and is re-signed;
/// 2. classifies the visitor with the [`classify`](PresenceLayer::classify) closure
///    (default: [`Kind::Guest`]);
/// 3. records activity with [`Presence::visit`] on the request path when the request is a
///    *document navigation* (see below), else with [`Presence::touch`] (always a touch
///    when [`track_pages`](PresenceLayer::track_pages) is off),
///    **if the request returned a valid cookie**. A request that had to be given a fresh
///    id records nothing: the visitor counts from the first request that brings the
///    cookie back (the next page, or the page script's first call after load). Clients
///    that never keep cookies (curl, uptime probes, most scrapers) are never counted and
///    cost no memory; [`count_first_request`](PresenceLayer::count_first_request) turns
///    this off. Requests to the presence [`routes`](super::routes) (paths under
///    `/presence/`) are *not* page activity: the routes decide themselves (a heartbeat
///    only calls [`Presence::heartbeat`]);
/// 4. puts the [`SessionId`] in the request extensions, where handlers read it with the
///    [`PresenceSession`](super::PresenceSession) extractor (fresh ids included).
///
/// # Which requests set the page
///
/// Only a document navigation sets "the page this visitor views": a request with
/// `Sec-Fetch-Dest: document` (every current browser sends it), or, when that header is
/// absent, one whose `Accept` prefers `text/html` (lists it with no other type ranked
/// higher). A stylesheet, an image, a script, a `fetch` or an API call is a touch: it keeps
/// the visitor online and leaves their page as the document's path. So the layer can wrap
/// the whole application, static files included.
///
/// # Made-up ids
///
/// Without a [signing key](PresenceLayer::signing_key), any well-formed UUID in the
/// cookie is accepted as the visitor's id: a client that sends 1000 random UUIDs, each
/// returned as if it were ours, is 1000 visitors. Signing is what stops that: with a key,
/// an id the server did not issue is replaced by a fresh one, which counts only once it
/// comes back. Set a key in production.
///
/// Paths longer than [`MAX_PAGE_LEN`](crate::MAX_PAGE_LEN) bytes are recorded cut to
/// that length (on a character boundary); the query string is never part of the page.
///
/// The request always proceeds. When the tracker refuses the call (it is full,
/// [`PresenceError::Full`], or the classified user name is longer than
/// [`MAX_USER_LEN`](crate::MAX_USER_LEN)) the request is served untracked and a warning is
/// logged through `tracing` at most once a minute.
///
/// Cloning is cheap (an `Arc` bump); the builder methods copy the settings only while the
/// layer is still being configured.
///
/// # Example
///
/// ```
/// use axum::{Router, routing::get};
/// use presence_tracker::{Kind, Presence};
/// use presence_tracker::http::PresenceLayer;
///
/// let presence = Presence::new();
/// let layer = PresenceLayer::new(presence.clone())
///     .cookie_name("sid")
///     .secure(false) // plain-HTTP development only
///     .signing_key(presence_tracker::http::Key::generate())
///     .classify(|req| {
///         let ua = req.headers.get("user-agent").and_then(|v| v.to_str().ok());
///         if ua.is_some_and(|ua| ua.contains("bot")) { Kind::Bot } else { Kind::Guest }
///     })
///     .skip(|req| req.uri.path().starts_with("/static/"));
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(layer);
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Clone)]
pub struct PresenceLayer {
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct Shared {
    presence: Presence,
    cookie_name: Cow<'static, str>,
    secure: bool,
    max_age: Duration,
    keys: Option<SigningKeys>,
    classify: Option<Arc<ClassifyFn>>,
    skip: Option<Arc<SkipFn>>,
    track_pages: bool,
    count_first_request: bool,
    refusals: Arc<RefusalLog>,
}

impl fmt::Debug for PresenceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("PresenceLayer")
            .field("presence", &s.presence)
            .field("cookie_name", &s.cookie_name)
            .field("secure", &s.secure)
            .field("max_age", &s.max_age)
            .field("signed", &s.keys.is_some())
            .field(
                "previous_keys",
                &s.keys.as_ref().map_or(0, |k| k.previous.len()),
            )
            .field("classify", &s.classify.as_ref().map(|_| "Fn"))
            .field("skip", &s.skip.as_ref().map(|_| "Fn"))
            .field("track_pages", &s.track_pages)
            .field("count_first_request", &s.count_first_request)
            .finish()
    }
}

impl PresenceLayer {
    /// A layer recording into `presence` with the defaults: cookie `presence_id`,
    /// `Secure`, `Max-Age` one year, unsigned ids, every visitor a [`Kind::Guest`], no
    /// request skipped, pages tracked, visitors counted once their cookie comes back.
    pub fn new(presence: Presence) -> Self {
        PresenceLayer {
            shared: Arc::new(Shared {
                presence,
                cookie_name: Cow::Borrowed("presence_id"),
                secure: true,
                max_age: Duration::from_secs(365 * 24 * 60 * 60),
                keys: None,
                classify: None,
                skip: None,
                track_pages: true,
                count_first_request: false,
                refusals: Arc::new(RefusalLog::new()),
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
    }

    /// The cookie's name. Default: `presence_id`.
    ///
    /// # Panics
    ///
    /// If `name` is empty or holds a character not allowed in a cookie name
    /// (controls, whitespace, separators such as `=`, `;`, `,`).
    pub fn cookie_name(self, name: impl Into<Cow<'static, str>>) -> Self {
        let name = name.into();
        assert!(
            !name.is_empty() && name.bytes().all(is_token_byte),
            "PresenceLayer::cookie_name: {name:?} is not a valid cookie name (RFC 6265 token)"
        );
        self.with(|s| s.cookie_name = name)
    }

    /// Whether the cookie carries `Secure` (sent over HTTPS only). Default: `true`.
    /// Turn it off only for plain-HTTP development.
    pub fn secure(self, secure: bool) -> Self {
        self.with(|s| s.secure = secure)
    }

    /// The cookie's `Max-Age`. Default: one year, so a returning visitor keeps one id.
    /// Rounded down to whole seconds.
    ///
    /// # Panics
    ///
    /// If `max_age` is under one second (the cookie would be discarded at once).
    pub fn max_age(self, max_age: Duration) -> Self {
        assert!(
            max_age >= Duration::from_secs(1),
            "PresenceLayer::max_age must be at least one second, got {max_age:?}"
        );
        self.with(|s| s.max_age = max_age)
    }

    /// Signs the cookie with an HMAC (SHA-256) under `key`, through the `cookie` crate's
    /// signed jar. Ids the server did not issue, or whose signature does not match, are
    /// then replaced with a fresh one, so made-up ids cannot inflate the counts (without
    /// a key, 1000 random UUIDs are 1000 visitors). Default: unsigned.
    ///
    /// Servers sharing visitors (several nodes, or one across restarts) need the same key,
    /// e.g. [`Key::try_from`] on a secret from the environment. Replacing the key with
    /// another invalidates every issued id (visitors get new ones and drop out of the
    /// counts until they come back); to change it without that, see
    /// [`signing_keys`](Self::signing_keys). `signing_key(key)` is
    /// `signing_keys(key, [])`.
    pub fn signing_key(self, key: Key) -> Self {
        self.signing_keys(key, [])
    }

    /// Signs with `current` and also accepts cookies signed with any of `previous`: key
    /// rotation without losing anyone. A cookie signed with a previous key is taken as
    /// the visitor's id (a returning visitor, counted at once, not a first visit) and
    /// re-signed with `current` in the response (a `Set-Cookie` with the same id), so the
    /// browser holds a current cookie from its next request on. A cookie signed with a key
    /// in neither place (a retired one), or a forged one, gets a fresh id as usual.
    ///
    /// Rotating on one server: deploy `signing_keys(new, [old])`; once every session that
    /// was online at the switch has made a request or ended (`idle_timeout` after the
    /// deploy: a session with no request for that long is gone; a day is plenty), retire
    /// the old key with `signing_key(new)`. A visitor who comes back after that with an old cookie is
    /// given a new id, like a first visit (the page script's first report counts them).
    ///
    /// On several nodes behind a load balancer, a rolling deploy would let a node that
    /// does not know `new` yet refuse the re-signed cookies. Rotate in three deploys:
    /// `signing_keys(old, [new])` everywhere (accept the new key, still sign with the old),
    /// then `signing_keys(new, [old])`, then `signing_key(new)`.
    ///
    /// After a leak, retire the leaked key as soon as you can: whoever holds it can make up
    /// ids that are accepted while it is listed.
    ///
    /// Cost: a current cookie costs what it did (one HMAC, then a per-thread cache); a
    /// cookie that fails the current key costs one more HMAC for each previous key, so keep
    /// the list to the keys being rotated out (one or two).
    ///
    /// ```
    /// use presence_tracker::Presence;
    /// use presence_tracker::http::{Key, PresenceLayer};
    ///
    /// # let (old_secret, new_secret) = ([1u8; 64], [2u8; 64]);
    /// // Both secrets from the secret store: 64 random bytes each.
    /// let old = Key::try_from(&old_secret[..]).expect("a 64-byte secret");
    /// let new = Key::try_from(&new_secret[..]).expect("a 64-byte secret");
    /// let layer = PresenceLayer::new(Presence::new()).signing_keys(new, [old]);
    /// ```
    pub fn signing_keys(self, current: Key, previous: impl IntoIterator<Item = Key>) -> Self {
        let keys = SigningKeys {
            current: SigningKey::new(current),
            previous: previous.into_iter().map(SigningKey::new).collect(),
        };
        self.with(|s| s.keys = Some(keys))
    }

    /// How a request's visitor is classified, e.g. from the authentication extension or
    /// the `User-Agent`. Default: every visitor is a [`Kind::Guest`].
    ///
    /// The closure sees the request head only and runs on every request not skipped,
    /// so it should be cheap and must not block.
    pub fn classify<F>(self, classify: F) -> Self
    where
        F: Fn(&Parts) -> Kind + Send + Sync + 'static,
    {
        self.with(|s| s.classify = Some(Arc::new(classify)))
    }

    /// Requests for which `skip` returns `true` pass through untouched: no cookie read or
    /// issued, no activity, no [`SessionId`] in the extensions. Use it for static files
    /// and health checks. Default: nothing skipped.
    ///
    /// Do not skip the presence [`routes`](super::routes): they need the session id.
    pub fn skip<F>(self, skip: F) -> Self
    where
        F: Fn(&Parts) -> bool + Send + Sync + 'static,
    {
        self.with(|s| s.skip = Some(Arc::new(skip)))
    }

    /// Whether document navigations record the page they are on ([`Presence::visit`] with
    /// the URI path, feeding [`Presence::page_count`]) or only that the visitor is active
    /// ([`Presence::touch`]). Other requests (stylesheets, images, `fetch`) are a touch
    /// either way; see [which requests set the page](PresenceLayer#which-requests-set-the-page).
    /// Default: `true`.
    pub fn track_pages(self, track: bool) -> Self {
        self.with(|s| s.track_pages = track)
    }

    /// Whether a request without a valid cookie is counted at once, under the id it is
    /// being given. Default: `false`, the visitor counts from the first request that
    /// returns the cookie (step 3 in [`PresenceLayer`]), so that clients which never keep
    /// cookies are not visitors.
    ///
    /// Turn it on only when every client keeps cookies (an internal tool, a test); a
    /// flood of cookieless requests then makes as many sessions, each held for
    /// `idle_timeout`, and with `max_sessions` set it can keep real visitors out.
    pub fn count_first_request(self, count: bool) -> Self {
        self.with(|s| s.count_first_request = count)
    }
}

impl<S> Layer<S> for PresenceLayer {
    type Service = PresenceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PresenceService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The [`tower_service::Service`] made by [`PresenceLayer`]; see there for what it does.
///
/// It works with any tower-based server for any request and response body type.
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
#[derive(Clone)]
pub struct PresenceService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for PresenceService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresenceService")
            .field("inner", &self.inner)
            .field(
                "layer",
                &PresenceLayer {
                    shared: self.shared.clone(),
                },
            )
            .finish()
    }
}

/// What the presence routes need from the layer: the visitor's kind, how to record
/// activity, and whether they may record it at all, since the layer does not record it
/// for them.
#[derive(Clone, Debug)]
pub(crate) struct Classified {
    pub(crate) kind: Kind,
    pub(crate) track_pages: bool,
    /// The id came back in a valid cookie (or the layer counts first requests): activity
    /// may create the session.
    pub(crate) countable: bool,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PresenceService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let shared = &*self.shared;
        if shared.skip.as_ref().is_some_and(|skip| skip(&parts)) {
            return ResponseFuture {
                inner: self.inner.call(Request::from_parts(parts, body)),
                set_cookie: None,
            };
        }

        let (id, set_cookie, countable) = match shared.read_id(&parts) {
            Some((id, Signed::Current)) => (id, None, true),
            // A returning visitor: the same id, signed with the current key from now on.
            Some((id, Signed::Previous)) => (id, shared.set_cookie(id), true),
            None => {
                let id = SessionId::new_v4();
                (id, shared.set_cookie(id), shared.count_first_request)
            }
        };
        let kind = match &shared.classify {
            Some(classify) => classify(&parts),
            None => Kind::Guest,
        };

        let path = parts.uri.path();
        if is_presence_route(path) {
            parts.extensions.insert(Classified {
                kind,
                track_pages: shared.track_pages,
                countable,
            });
        } else if countable {
            let recorded = if shared.track_pages && is_document(&parts.headers) {
                shared.presence.visit(id, kind, page_key(path))
            } else {
                shared.presence.touch(id, kind)
            };
            if let Err(err) = recorded {
                shared.refusals.report(&err);
            }
        }
        parts.extensions.insert(id);

        ResponseFuture {
            inner: self.inner.call(Request::from_parts(parts, body)),
            set_cookie,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`PresenceService`]: the inner service's response, plus the
    /// `Set-Cookie` header when a fresh id was issued.
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        set_cookie: Option<HeaderValue>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("set_cookie", &self.set_cookie)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut res = std::task::ready!(this.inner.poll(cx))?;
        if let Some(cookie) = this.set_cookie.take() {
            res.headers_mut().append(SET_COOKIE, cookie);
        }
        Poll::Ready(Ok(res))
    }
}

/// Whether `path` belongs to the presence routes, which record activity themselves.
/// Whether a request is a document navigation, whose path is the visitor's page:
/// `Sec-Fetch-Dest: document`, or without that header an `Accept` that prefers `text/html`.
pub(crate) fn is_document(headers: &http::HeaderMap) -> bool {
    if let Some(dest) = headers.get("sec-fetch-dest") {
        return dest.as_bytes().eq_ignore_ascii_case(b"document");
    }
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(prefers_html)
}

/// Whether an `Accept` value names `text/html` with a weight above zero and no other media
/// range weighted higher (`*/*` alone, as `fetch` and curl send, does not prefer it). Looks
/// at the first 32 ranges only: the work is bounded whatever the header.
fn prefers_html(accept: &str) -> bool {
    let mut html = None::<u32>;
    let mut best_other = 0u32;
    for range in accept.split(',').take(32) {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
            .map(weight)
            .next()
            .unwrap_or(1000);
        if media.eq_ignore_ascii_case("text/html") {
            html = Some(html.map_or(q, |h| h.max(q)));
        } else {
            best_other = best_other.max(q);
        }
    }
    html.is_some_and(|h| h > 0 && h >= best_other)
}

/// A `q` value in thousandths; anything malformed weighs 0.
fn weight(q: &str) -> u32 {
    let q = q.trim();
    let (int, frac) = q.split_once('.').unwrap_or((q, ""));
    let whole = match int {
        "1" => 1000,
        "0" => 0,
        _ => return 0,
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    let mut thousandths = 0;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u32::from(b - b'0') * [100, 10, 1][i];
    }
    (whole + thousandths).min(1000)
}

pub(crate) fn is_presence_route(path: &str) -> bool {
    path.strip_prefix(ROUTES_PREFIX)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Which key signed a cookie the layer accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signed {
    /// The current key, or no key is set: the cookie is kept as it is.
    Current,
    /// A previous key: the id is kept and re-signed with the current key.
    Previous,
}

impl Shared {
    /// The first valid id among the request's presence cookies: well-formed and, with a
    /// key, correctly signed. A browser sends the cookie of the most specific path and
    /// domain first, and keeps the order, so the same one wins on every request. During a
    /// key rotation a cookie signed with the current key wins over one signed with a
    /// previous key, wherever it comes: the re-signed cookie must not lose to the old one
    /// it replaces (which would be re-signed on every response).
    fn read_id(&self, parts: &Parts) -> Option<(SessionId, Signed)> {
        let name = self.cookie_name.as_bytes();
        let mut candidates = 0;
        let mut previous = None;
        // Parse bytes, not `&str`: one non-UTF-8 byte in an unrelated cookie must not cost
        // the visitor their id, and our own value is checked below.
        for header in parts.headers.get_all(COOKIE) {
            for pair in header.as_bytes().split(|&b| b == b';') {
                let pair = pair.trim_ascii();
                let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                    continue;
                };
                if pair[..eq].trim_ascii() != name {
                    continue;
                }
                let raw = pair[eq + 1..].trim_ascii();
                match self.valid_id(raw, previous.is_none()) {
                    Some((id, Signed::Current)) => return Some((id, Signed::Current)),
                    Some((id, Signed::Previous)) => previous = Some((id, Signed::Previous)),
                    None => {}
                }
                candidates += 1;
                if candidates == MAX_CANDIDATES {
                    return previous;
                }
            }
        }
        previous
    }

    /// The id in one presence cookie value, if it is one we accept, and which key signed
    /// it. Previous keys are tried only if `try_previous`.
    fn valid_id(&self, raw: &[u8], try_previous: bool) -> Option<(SessionId, Signed)> {
        let Some(keys) = &self.keys else {
            return SessionId::parse_ascii(raw)
                .ok()
                .map(|id| (id, Signed::Current));
        };
        if raw.len() != SIGNED_VALUE_LEN {
            return None;
        }
        let previous: &[SigningKey] = if try_previous { &keys.previous } else { &[] };
        if let Some((generation, id)) = recently_verified(raw) {
            if generation == keys.current.generation {
                return Some((id, Signed::Current));
            }
            if previous.iter().any(|k| k.generation == generation) {
                return Some((id, Signed::Previous));
            }
        }
        let value = std::str::from_utf8(raw).ok()?;
        let mut jar = CookieJar::new();
        jar.add_original(Cookie::new(self.cookie_name.to_string(), value.to_owned()));
        let signed = std::iter::once((&keys.current, Signed::Current))
            .chain(previous.iter().map(|k| (k, Signed::Previous)));
        for (key, which) in signed {
            let Some(verified) = jar.signed(&key.key).get(&self.cookie_name) else {
                continue;
            };
            // Signed by us, so an id we issued; refused all the same if it is not one.
            let id = verified.value().parse().ok()?;
            key.verified(raw, id);
            return Some((id, which));
        }
        None
    }

    /// The `Set-Cookie` header for a freshly issued id.
    fn set_cookie(&self, id: SessionId) -> Option<HeaderValue> {
        let max_age = i64::try_from(self.max_age.as_secs()).unwrap_or(i64::MAX);
        let cookie = Cookie::build((self.cookie_name.to_string(), id.to_string()))
            .http_only(true)
            .same_site(SameSite::Lax)
            .path("/")
            .secure(self.secure)
            .max_age(cookie::time::Duration::seconds(max_age))
            .build();
        let cookie = match &self.keys {
            None => cookie,
            Some(keys) => {
                let mut jar = CookieJar::new();
                jar.signed_mut(&keys.current.key).add(cookie);
                jar.get(&self.cookie_name)?.clone()
            }
        };
        // The name is a checked token and the value is a UUID, possibly behind a base64
        // MAC, so the header value is always valid; never panic on it regardless.
        HeaderValue::try_from(cookie.to_string()).ok()
    }
}

/// Distinguishes signing keys in the per-thread cache of verified cookies.
static KEY_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Verified cookie values remembered per thread; the cache is emptied when it reaches this.
const VERIFIED_CACHE: usize = 4096;

/// Verified cookie values and, for each, the key generation that verified it and its id.
/// Keyed by the bare value so that a probe borrows the request's bytes (no allocation).
type VerifiedCache = HashMap<Box<[u8]>, (u64, SessionId), foldhash::fast::RandomState>;

thread_local! {
    /// Cookie values whose MAC was checked. An HMAC costs about as much as the rest of the
    /// layer together, and a visitor sends the same value on every request; an exact match
    /// on the whole value (MAC included) under the same key is as good as a check.
    static VERIFIED: RefCell<VerifiedCache> = RefCell::new(HashMap::default());
}

/// The key that signs new cookies, and the keys being rotated out, whose cookies are
/// accepted and re-signed.
#[derive(Clone)]
struct SigningKeys {
    current: SigningKey,
    previous: Vec<SigningKey>,
}

#[derive(Clone)]
struct SigningKey {
    key: cookie::Key,
    generation: u64,
}

/// The generation of the key that verified `value` on this thread, and its id.
fn recently_verified(value: &[u8]) -> Option<(u64, SessionId)> {
    VERIFIED.with(|cache| cache.borrow().get(value).copied())
}

impl SigningKey {
    fn new(key: Key) -> Self {
        SigningKey {
            key: key.into_inner(),
            generation: KEY_GENERATION.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn verified(&self, value: &[u8], id: SessionId) {
        VERIFIED.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.len() >= VERIFIED_CACHE {
                cache.clear();
            }
            cache.insert(value.into(), (self.generation, id));
        });
    }
}

/// Rate limit for the "tracker is full" warning.
struct RefusalLog {
    start: Instant,
    /// Milliseconds since `start` of the last warning, plus one (0: never warned).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl RefusalLog {
    fn new() -> Self {
        RefusalLog {
            start: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    fn report(&self, err: &PresenceError) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last.load(Ordering::Relaxed);
        let interval = REFUSAL_LOG_INTERVAL.as_millis() as u64;
        let due = last == 0 || now.saturating_sub(last) >= interval;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(
                error = %err,
                suppressed,
                "presence tracker refused to record a request; it is served untracked"
            );
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// RFC 6265 / RFC 7230 `token` characters, the ones allowed in a cookie name.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_warning_is_rate_limited() {
        let log = RefusalLog::new();
        let err = PresenceError::Full { max_sessions: 1 };
        for _ in 0..1000 {
            log.report(&err);
        }
        assert_ne!(
            log.last.load(Ordering::Relaxed),
            0,
            "the first one is logged"
        );
        assert_eq!(log.suppressed.load(Ordering::Relaxed), 999);
    }

    #[test]
    fn only_document_navigations_are_pages() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, http::HeaderValue::from_static(v));
            }
            h
        };
        let navigation = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(is_document(&headers(&[("sec-fetch-dest", "document")])));
        assert!(is_document(&headers(&[("sec-fetch-dest", "Document")])));
        for dest in ["style", "image", "script", "empty", "iframe", "font"] {
            let h = headers(&[("sec-fetch-dest", dest), ("accept", navigation)]);
            assert!(!is_document(&h), "{dest}: the fetch header decides");
        }
        assert!(is_document(&headers(&[("accept", navigation)])));
        assert!(is_document(&headers(&[("accept", "text/html")])));
        assert!(is_document(&headers(&[(
            "accept",
            "text/html;q=0.5, text/plain;q=0.5"
        )])));
        for accept in [
            "*/*",
            "text/css,*/*;q=0.1",
            "image/avif,image/webp,*/*;q=0.8",
            "application/json",
            "application/json, text/html;q=0.9",
            "text/html;q=0",
            "text/html;q=x",
            "",
        ] {
            assert!(!is_document(&headers(&[("accept", accept)])), "{accept:?}");
        }
        assert!(!is_document(&headers(&[])), "neither header: a touch");
        assert_eq!(weight("0.8"), 800);
        assert_eq!(weight("1.000"), 1000);
        assert_eq!(weight("0.0001"), 0);
    }

    #[test]
    fn page_keys_are_cut_on_a_character_boundary() {
        let max = crate::MAX_PAGE_LEN;
        assert_eq!(page_key("/a"), "/a");
        let ascii = "/".repeat(max + 10);
        assert_eq!(page_key(&ascii).len(), max);
        // A decoded `?page=` may hold multi-byte characters.
        let wide = format!("/{}", "é".repeat(max));
        let cut = page_key(&wide);
        assert_eq!(
            cut.len(),
            max - 1,
            "the two-byte char at the limit is dropped"
        );
        assert!(wide.starts_with(cut));
    }

    #[test]
    fn cookie_names_must_be_tokens() {
        assert!("presence_id".bytes().all(is_token_byte));
        assert!(!"a=b".bytes().all(is_token_byte));
        assert!(!"a b".bytes().all(is_token_byte));
        assert!(!"a;b".bytes().all(is_token_byte));
    }
}
