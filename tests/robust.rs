//! SPEC section 10: robustness. What a careless or hostile world does
//! (silent sockets, HTTP/2 clients, slow uploads, floods of keys, reload
//! churn, store outages, clock steps, backends that close idle connections)
//! must cost tether nothing it cannot give back. One test per rule, on real
//! sockets; the rooms below group them by the part of tether they lean on.

#[path = "support/mod.rs"]
mod support;

#[path = "robust/lifecycle.rs"]
mod lifecycle;

#[path = "robust/ending.rs"]
mod ending;

#[path = "robust/crossing.rs"]
mod crossing;

#[path = "robust/sessions.rs"]
mod sessions;

#[path = "robust/reload.rs"]
mod reload;

#[path = "robust/cookies.rs"]
mod cookies;
