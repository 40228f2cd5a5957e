//! wraft-storage (placeholder: being built).
