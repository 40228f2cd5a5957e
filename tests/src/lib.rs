//! Shared helpers for wraft's end-to-end tests.

pub mod guests;
