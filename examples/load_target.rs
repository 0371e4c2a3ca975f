//! Load-test target for `scripts/load.sh`: the same handler served twice by one server,
//! `/hot` without the presence layer and `/tracked/hot` behind it (signed cookies, pages
//! tracked), so that `wrk` can compare the two in one run.
//!
//! ```text
//! cargo run --release --example load_target --features axum   # PORT, default 3001
//! ```
//!
//! The handler is what a who's-online page does on every view, as the demo's pages do: read
//! the counts and the page's viewers and render them into a small HTML page. The handler is
//! the same on both routes, so the difference is the layer (cookie, classification, visit).

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::response::Html;
use axum::routing::get;
use presence_tracker::Presence;
use presence_tracker::http::{Key, PresenceLayer};

/// The page handler of both routes.
pub async fn hot(State(presence): State<Presence>, uri: Uri) -> Html<String> {
    let c = presence.counts();
    let viewing = presence.page_count(uri.path());
    Html(format!(
        "<!doctype html><title>Forum</title><h1>Rust async questions</h1>\
         <p>In total there are {} users online :: {} registered, {} hidden and {} guests \
         ({} bots)</p><p>{viewing} viewing this page</p>\
         <p>Most users ever online was {}</p>",
        c.online, c.members, c.hidden, c.guests, c.bots, c.peak.online
    ))
}

/// `/hot` without the layer and `/tracked/hot` behind it (signed cookies, pages tracked).
/// `benches/layer.rs` measures this same router in-process.
pub fn app(presence: Presence) -> Router {
    let layer = PresenceLayer::new(presence.clone())
        .secure(false)
        .signing_key(Key::generate());
    Router::new()
        .route("/hot", get(hot))
        .merge(Router::new().route("/tracked/hot", get(hot)).layer(layer))
        .with_state(presence)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3001);
    let app = app(Presence::new());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "load target on http://{}/hot and /tracked/hot",
        listener.local_addr()?
    );
    axum::serve(listener, app).await
}
