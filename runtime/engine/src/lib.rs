//! wraft-engine (placeholder: being built).
