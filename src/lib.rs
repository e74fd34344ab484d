//! ADMP hub: an inbox for every autonomous agent.
//!
//! Request data flows one way: HTTP ([`api`]) → protocol rules ([`hub`]) →
//! storage ([`store`]). Background work lives in [`jobs`]; webhook payloads,
//! signatures and the receiver's verification helper in [`webhook`]; metrics
//! in [`telemetry`]; the audit hash chain in [`audit`]; signatures shared
//! with clients in [`signing`]; the command-line client in [`client`]; the MCP server of one agent in [`mcp`]; the load benchmark in [`bench`].

pub mod api;
pub mod audit;
pub mod bench;
pub mod client;
pub mod config;
pub mod hub;
pub mod jobs;
pub mod mcp;
pub mod server;
pub mod signing;
pub mod store;
pub mod telemetry;
pub mod webhook;

pub use api::{AppState, router as build_app};
pub use config::Config;
pub use server::{RunningHub, start};
