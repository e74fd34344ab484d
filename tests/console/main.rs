//! The operator console, tested for real: HTTP-level checks of every route's
//! authorization (sessions, CSRF, CSP, login limits), and the whole operator
//! flow in headless Chromium driven over WebDriver on every backend. One
//! test binary keeps the link step to one.

#[path = "../support/mod.rs"]
mod support;

mod browser;
mod fixture;
mod http;
