//! Sessions under pressure: floods of app keys, store outages, logout with
//! a full store, wall-clock steps, and IPv6 clients under `new_session_rate`.
