//! wraft-guest (placeholder: being built).
