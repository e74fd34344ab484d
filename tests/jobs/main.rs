//! Background jobs, tested for real: the sweeper against a store driven by a
//! manual clock, and webhook delivery from a hub served on port 0 to a real
//! local HTTP receiver. One test binary keeps the link step to one.

#[path = "../support/storage.rs"]
#[allow(dead_code)]
mod storage;
mod support;
mod sweeper;
mod webhooks;
