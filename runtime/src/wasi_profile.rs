//! [`WasiProfile`]: which WASI a machine may import. A plain protocol type (it travels in
//! deploy requests and replicated deploy commands), kept apart from the wasmtime host so that
//! `wraft-proto` (the fuzzable protocol crate) can compile it; the host adds what the profile
//! provides (`WasiProfile::provides_wasi`, in `host/wasi.rs`).

/// Which WASI interfaces a machine may import. Part of a machine's deployment: it is replicated
/// with the deploy command, so every replica links the same imports.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum WasiProfile {
    /// No WASI: the guest may import only `wraft:machine/host` (and `types`). Rust (`wraft-guest`)
    /// and JavaScript (componentize-js with its WASI features disabled) guests need nothing more.
    #[default]
    None,
    /// The WASI 0.2 interfaces in `wraft::host::DETERMINISTIC_WASI_IMPORTS`, deterministic (see
    /// `wraft::host::wasi`): for Python (componentize-py) guests.
    Deterministic,
}

impl WasiProfile {
    /// Every profile, for help texts.
    pub const ALL: [WasiProfile; 2] = [WasiProfile::None, WasiProfile::Deterministic];

    /// The profile's name on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            WasiProfile::None => "none",
            WasiProfile::Deterministic => "deterministic",
        }
    }
}

impl std::fmt::Display for WasiProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WasiProfile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        WasiProfile::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown WASI profile {s:?}; expected \"none\" or \"deterministic\"")
            })
    }
}
