//! Signatures shared by the hub and its clients: the envelope signing base,
//! the V8-compatible body hash it covers, and draft-cavage HTTP signatures.
//! Nothing here knows about the HTTP framework or the store.

pub mod body_hash;
pub mod envelope;
pub mod http;
pub mod keys;
