//! wraft host runtime (placeholder: being built).
