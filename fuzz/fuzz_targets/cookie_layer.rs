//! The HTTP layer's cookie reader, driven in-process through tower with arbitrary `Cookie`
//! headers (several headers, several pairs, our cookie duplicated, valid, tampered, truncated
//! or odd bytes), signed and unsigned. Checked on every request:
//!
//! - no panic, and the inner service's 200 comes back unchanged (never a 500);
//! - the request carries the first valid id among the first eight cookies of our name (a
//!   cookie-string is `;`-separated `name=value` pairs, whitespace around each part
//!   ignored), with no `Set-Cookie`, and that session is recorded;
//! - without a valid one, a fresh id comes with a `Set-Cookie`, and that cookie sent back
//!   alone round-trips: the same id, no new cookie, the session recorded.
#![no_main]

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use arbitrary::Arbitrary;
use cookie::{Cookie, CookieJar};
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderValue, Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use presence_tracker::http::{Key, PresenceLayer};
use presence_tracker::{Presence, Reaper, SessionId};
use tower::{Layer, Service, service_fn};

const NAME: &str = "presence_id";
const IDS: usize = 8;
/// The layer looks at this many cookies of its name at most (a bound on the work one
/// request can cause); one after them is ignored even when valid.
const LOOKED_AT: usize = 8;

struct Fixture {
    /// The layer's key, as the `cookie` crate holds it: the oracle signs and verifies with it.
    key: cookie::Key,
    ids: Vec<SessionId>,
    signed: Vec<String>,
    /// One tracker for all runs (building one per run is most of a run's cost); each run
    /// removes the sessions it made.
    presence: Presence,
    plain: PresenceLayer,
    signing: PresenceLayer,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let secret = [0x5au8; 64];
        let key = cookie::Key::from(&secret);
        let ids: Vec<SessionId> = (0..IDS as u128)
            .map(|i| {
                uuid::Uuid::from_u128(
                    0x67e5_5044_10b1_426f_9247_bb68_0e5f_e0c8 ^ (i * 0x9e37_79b9_7f4a_7c15),
                )
                .into()
            })
            .collect();
        let signed = ids
            .iter()
            .map(|id| {
                let mut jar = CookieJar::new();
                jar.signed_mut(&key).add(Cookie::new(NAME, id.to_string()));
                jar.get(NAME).expect("just added").value().to_owned()
            })
            .collect();
        let presence = Presence::builder().reaper(Reaper::Manual).build();
        let plain = PresenceLayer::new(presence.clone()).secure(false);
        let signing = plain
            .clone()
            .signing_key(Key::try_from(&secret[..]).expect("a 64-byte secret"));
        Fixture {
            key,
            ids,
            signed,
            presence,
            plain,
            signing,
        }
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    signed: bool,
    headers: Vec<Vec<Part>>,
}

#[derive(Arbitrary, Debug)]
enum Part {
    Pair(Name, Value),
    /// Bytes between two `;`, `=` or not.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Name {
    Ours,
    /// Ours with whitespace around it.
    Padded(u8, u8),
    /// Ours in another case: another cookie.
    Upper,
    Other(u8),
}

#[derive(Arbitrary, Debug)]
enum Value {
    Id(u8),
    UpperId(u8),
    SignedId(u8),
    /// A valid value (signed or not) with one byte replaced.
    Flip {
        id: u8,
        signed: bool,
        at: u8,
        byte: u8,
    },
    /// A valid value (signed or not) cut short or extended.
    Cut {
        id: u8,
        signed: bool,
        len: u8,
    },
    Padded {
        id: u8,
        signed: bool,
    },
    Bytes(Vec<u8>),
}

fn id_text(f: &Fixture, id: u8, signed: bool) -> Vec<u8> {
    let i = usize::from(id) % IDS;
    if signed {
        f.signed[i].clone().into_bytes()
    } else {
        f.ids[i].to_string().into_bytes()
    }
}

impl Part {
    fn bytes(&self, f: &Fixture) -> Vec<u8> {
        match self {
            Part::Raw(raw) => raw.clone(),
            Part::Pair(name, value) => {
                let mut out: Vec<u8> = match name {
                    Name::Ours => NAME.into(),
                    Name::Padded(l, r) => {
                        let ws = |n: u8| " \t".repeat(usize::from(n % 3));
                        format!("{}{NAME}{}", ws(*l), ws(*r)).into_bytes()
                    }
                    Name::Upper => NAME.to_ascii_uppercase().into_bytes(),
                    Name::Other(n) => ["a", "presence", "presence_id2", "_presence_id", "sid"]
                        [usize::from(*n) % 5]
                        .into(),
                };
                out.push(b'=');
                match value {
                    Value::Id(id) => out.extend(id_text(f, *id, false)),
                    Value::UpperId(id) => out.extend(id_text(f, *id, false).to_ascii_uppercase()),
                    Value::SignedId(id) => out.extend(id_text(f, *id, true)),
                    Value::Flip {
                        id,
                        signed,
                        at,
                        byte,
                    } => {
                        let mut v = id_text(f, *id, *signed);
                        let at = usize::from(*at) % v.len();
                        v[at] = *byte;
                        out.extend(v);
                    }
                    Value::Cut { id, signed, len } => {
                        let mut v = id_text(f, *id, *signed);
                        v.resize(usize::from(*len), b'0');
                        out.extend(v);
                    }
                    Value::Padded { id, signed } => {
                        out.extend(b"  ");
                        out.extend(id_text(f, *id, *signed));
                        out.push(b'\t');
                    }
                    Value::Bytes(bytes) => out.extend(bytes),
                }
                out
            }
        }
    }
}

/// Bytes a header value may hold, less `;`, which would split the part.
fn header_byte(b: u8) -> bool {
    (b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80) && b != b';'
}

/// The id a cookie value stands for, by the cookie format's own definition.
fn valid(f: &Fixture, signed: bool, value: &[u8]) -> Option<SessionId> {
    let value = std::str::from_utf8(value).ok()?;
    if signed {
        let mut jar = CookieJar::new();
        jar.add_original(Cookie::new(NAME, value.to_owned()));
        let verified = jar.signed(&f.key).get(NAME)?;
        uuid_id(verified.value())
    } else {
        uuid_id(value)
    }
}

fn uuid_id(text: &str) -> Option<SessionId> {
    // Only the hyphenated form: 36 bytes.
    (text.len() == 36)
        .then(|| uuid::Uuid::try_parse(text).ok())
        .flatten()
        .map(SessionId::from)
}

/// The first valid id among the first [`LOOKED_AT`] cookies named ours, over all headers in
/// order.
fn expected(f: &Fixture, signed: bool, headers: &[Vec<u8>]) -> Option<SessionId> {
    headers
        .iter()
        .flat_map(|header| header.split(|&b| b == b';'))
        .filter_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == NAME.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
        .take(LOOKED_AT)
        .find_map(|value| valid(f, signed, value))
}

/// Polls a future that never waits (the inner service answers at once).
fn now<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the layer waited on nothing"),
    }
}

/// The id the request carried to the handler, and any `Set-Cookie` value.
fn call<S>(service: &mut S, headers: &[Vec<u8>]) -> (SessionId, Option<String>)
where
    S: Service<Request<()>, Response = Response<Option<SessionId>>, Error = Infallible>,
{
    let mut req = Request::builder().uri("/forum/42");
    for header in headers {
        req = req.header(
            COOKIE,
            HeaderValue::from_bytes(header).expect("filtered bytes"),
        );
    }
    let res = now(service.call(req.body(()).expect("a valid request"))).expect("infallible");
    assert_eq!(res.status(), StatusCode::OK, "the layer changed the status");
    let set: Vec<_> = res.headers().get_all(SET_COOKIE).iter().collect();
    assert!(set.len() <= 1, "one Set-Cookie at most: {set:?}");
    let set = set.first().map(|v| {
        let text = v.to_str().expect("an ASCII Set-Cookie");
        let cookie = Cookie::parse(text).expect("a well-formed Set-Cookie");
        assert_eq!(cookie.name(), NAME);
        cookie.value().to_owned()
    });
    let id = res
        .into_body()
        .expect("the layer put a SessionId in the request");
    (id, set)
}

fuzz_target!(|input: Input| {
    let f = fixture();
    let headers: Vec<Vec<u8>> = input
        .headers
        .iter()
        .take(8)
        .map(|parts| {
            let parts: Vec<Vec<u8>> = parts
                .iter()
                .take(32)
                .map(|p| p.bytes(f).into_iter().filter(|&b| header_byte(b)).collect())
                .collect();
            parts.join(&b"; "[..])
        })
        .collect();

    let presence = &f.presence;
    let layer = if input.signed { &f.signing } else { &f.plain };
    let handler = service_fn(|req: Request<()>| async move {
        Ok::<_, Infallible>(Response::new(req.extensions().get::<SessionId>().copied()))
    });
    let mut service = layer.layer(handler);

    let (id, set) = call(&mut service, &headers);
    let shown: Vec<_> = headers.iter().map(|h| String::from_utf8_lossy(h)).collect();
    let headers_shown = &shown;
    match expected(f, input.signed, &headers) {
        Some(want) => {
            assert_eq!(id, want, "not the first valid cookie: {headers_shown:?}");
            assert_eq!(set, None, "a valid cookie was replaced: {headers_shown:?}");
            assert!(
                presence.session(id).is_some(),
                "a returning visitor not recorded"
            );
        }
        None => {
            let set =
                set.unwrap_or_else(|| panic!("no valid cookie, no fresh one: {headers_shown:?}"));
            assert_eq!(valid(f, input.signed, set.as_bytes()), Some(id), "{set}");
            let back = format!("{NAME}={set}").into_bytes();
            let (again, reissued) = call(&mut service, &[back]);
            assert_eq!(
                (again, reissued),
                (id, None),
                "the issued cookie did not round-trip"
            );
            assert!(
                presence.session(id).is_some(),
                "the returned cookie not recorded"
            );
        }
    }
    presence.leave(id);
    assert_eq!(presence.counts().sessions, 0, "a run left a session behind");
});
