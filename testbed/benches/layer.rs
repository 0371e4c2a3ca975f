//! What does `PresenceLayer` cost per request, without the network?
//!
//! The router of `examples/load_target.rs` (the load test's server) is called in-process:
//! `/hot` is the page handler alone, `/tracked/hot` the same handler behind the layer with
//! signed cookies and page tracking, fed by 256 returning visitors in turn. The difference
//! is the layer: cookie parsing, the signature check (cached per value), classification,
//! `visit`, the extension insert. A real server spends most of a request in the kernel and
//! in hyper, so this is the upper bound of the layer's share; `scripts/load.sh` measures the
//! same two routes over loopback with `wrk`.

use std::hint::black_box;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use axum::routing::get;
use criterion::{Criterion, Throughput};
use presence_tracker::Presence;
use tower::ServiceExt;
use tower::layer::util::Identity;

#[allow(dead_code, unreachable_pub)]
#[path = "../../examples/load_target.rs"]
mod load_target;

/// Returning visitors, as in the load test.
const VISITORS: usize = 256;

/// Each visitor's signed `presence_id=...` pair, issued by the layer itself.
fn cookies(rt: &tokio::runtime::Runtime, app: &Router) -> Vec<String> {
    (0..VISITORS)
        .map(|_| {
            let req = Request::get("/tracked/hot").body(Body::empty()).unwrap();
            let res = rt.block_on(app.clone().oneshot(req)).unwrap();
            let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
            set.split(';').next().unwrap().to_owned()
        })
        .collect()
}

fn request(path: &str, cookie: &str) -> Request<Body> {
    Request::get(path)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap()
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let presence = Presence::new();
    // A third route behind a layer that does nothing: what any layer costs in axum (a boxed,
    // cloned service per request), apart from what PresenceLayer itself does.
    let app = load_target::app(presence.clone()).merge(
        Router::new()
            .route("/identity/hot", get(load_target::hot))
            .layer(Identity::new())
            .with_state(presence),
    );
    let cookies = cookies(&rt, &app);

    let mut group = c.benchmark_group("layer/request");
    group.throughput(Throughput::Elements(1));
    for (name, path) in [
        ("no_layer", "/hot"),
        ("identity_layer", "/identity/hot"),
        ("presence_layer", "/tracked/hot"),
    ] {
        group.bench_function(name, |b| {
            let mut n = 0;
            b.iter(|| {
                n = (n + 1) % VISITORS;
                let res = rt.block_on(app.clone().oneshot(request(path, &cookies[n])));
                black_box(res.unwrap().status())
            });
        });
    }
    group.finish();
}

// A hand-written main, as in the other benches: `criterion_group!` generates an
// undocumented `pub fn` that the crate's `missing_docs` lint rejects.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    layer(&mut c);
    c.final_summary();
}
