//! example guest (placeholder: being built).
