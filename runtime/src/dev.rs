//! `wraft dev`.
