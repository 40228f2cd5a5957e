//! [`WasiProfile`]: which WASI a machine may import. A plain protocol type (it travels in
//! deploy requests and replicated deploy commands), kept apart from the wasmtime host so that
//! `wraft-proto` (the fuzzable protocol crate) can compile it; the host adds what the profile
//! links (`wraft-host`'s `wasi` module).

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
    /// The WASI 0.2 interfaces in [`DETERMINISTIC_WASI_IMPORTS`], made deterministic by
    /// `wraft-host`: for Python (componentize-py) guests.
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

impl WasiProfile {
    /// True if `name` (a component's top-level import, e.g. `wasi:io/poll@0.2.0`) is provided
    /// under this profile, beyond `wraft:machine/host` and `types`.
    pub fn provides_wasi(self, name: &str) -> bool {
        match self {
            WasiProfile::None => false,
            WasiProfile::Deterministic => {
                let Some((iface, version)) = name.split_once('@') else {
                    return false;
                };
                version.starts_with(WASI_VERSION_PREFIX)
                    && DETERMINISTIC_WASI_IMPORTS.contains(&iface)
            }
        }
    }
}

/// WASI versions the deterministic profile links (wasmtime-wasi 48 implements 0.2.12; the
/// linker serves any 0.2.x import from it).
const WASI_VERSION_PREFIX: &str = "0.2.";

/// The interfaces (without `@version`) a [`WasiProfile::Deterministic`] machine may import.
pub const DETERMINISTIC_WASI_IMPORTS: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stderr",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stderr",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:filesystem/preopens",
    "wasi:filesystem/types",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:random/random",
    "wasi:sockets/instance-network",
    "wasi:sockets/ip-name-lookup",
    "wasi:sockets/network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
];
