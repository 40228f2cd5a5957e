//! wraft-transport (placeholder: being built).
