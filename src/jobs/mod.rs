//! Background work that keeps the hub tidy without blocking requests.

pub mod sweeper;
