//! Load-test target for `scripts/load.sh`: the same handler served twice by one server,
//! `/hot` without the presence layer and `/tracked/hot` behind it (signed cookies, pages
//! tracked), so that `wrk` can compare the two in one run.
//!
//! ```text
//! cargo run --release --example load_target --features axum   # PORT, default 3001
//! ```
//!
//! The handler is deliberately trivial: the layer's cost is then as visible as it can be.

use axum::Router;
use axum::routing::get;
use presence_tracker::Presence;
use presence_tracker::http::{Key, PresenceLayer};

async fn hot() -> &'static str {
    "hello, world\n"
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3001);
    let presence = Presence::new();
    let layer = PresenceLayer::new(presence)
        .secure(false)
        .signing_key(Key::generate());
    let app = Router::new()
        .route("/hot", get(hot))
        .merge(Router::new().route("/tracked/hot", get(hot)).layer(layer));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "load target on http://{}/hot and /tracked/hot",
        listener.local_addr()?
    );
    axum::serve(listener, app).await
}
