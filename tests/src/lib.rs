//! Shared helpers for wraft's end-to-end tests.
