//! Static checks on a component, before anything is compiled. Shared by `load` and `wraft build`.

use wasmparser::{Encoding, Parser, Payload, Validator, WasmFeatures};
use wraft_proto::WasiProfile;

use crate::error::LoadError;

/// The instance names a guest may import: the host functions and the shared type definitions.
pub const ALLOWED_IMPORTS: &[&str] = &["wraft:machine/host@0.1.0", "wraft:machine/types@0.1.0"];
/// The instance a guest must export.
pub const REQUIRED_EXPORT: &str = "wraft:machine/machine@0.1.0";

/// What the static checks learned about a component.
#[derive(Debug, Clone)]
pub struct ComponentSummary {
    /// Top-level imports.
    pub imports: Vec<String>,
    /// Top-level exports.
    pub exports: Vec<String>,
}

/// [`validate_component_for`] under [`WasiProfile::None`]: the guest may import only
/// `wraft:machine/host` and `types`.
pub fn validate_component(
    bytes: &[u8],
    module_bytes_max: usize,
    full: bool,
) -> Result<ComponentSummary, LoadError> {
    validate_component_for(bytes, module_bytes_max, full, WasiProfile::None)
}

/// Check size, parse, validate (when `full`), and the top-level import and export names: every
/// import must be in [`ALLOWED_IMPORTS`] or provided by the machine's WASI profile `wasi`.
///
/// Cost: linear in the size; full validation runs at a few hundred MB/s. Fails with a
/// [`LoadError`] that names the cause (the offending import and the profile, the missing export,
/// the byte offset of a malformation).
pub fn validate_component_for(
    bytes: &[u8],
    module_bytes_max: usize,
    full: bool,
    wasi: WasiProfile,
) -> Result<ComponentSummary, LoadError> {
    if bytes.len() > module_bytes_max {
        return Err(LoadError::TooLarge {
            found: bytes.len(),
            max: module_bytes_max,
        });
    }
    if full {
        let mut features = WasmFeatures::default();
        features.remove(WasmFeatures::THREADS);
        features.remove(WasmFeatures::SHARED_EVERYTHING_THREADS);
        Validator::new_with_features(features)
            .validate_all(bytes)
            .map_err(|e| LoadError::Malformed(e.to_string()))?;
    }
    let mut summary = ComponentSummary {
        imports: Vec::new(),
        exports: Vec::new(),
    };
    // Depth of nesting: imports/exports of nested modules and components are not the guest's.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| LoadError::Malformed(e.to_string()))?;
        match payload {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding == Encoding::Module {
                    return Err(LoadError::CoreModule);
                }
                depth += 1;
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 1 => {
                for import in section {
                    let import = import.map_err(|e| LoadError::Malformed(e.to_string()))?;
                    let name = import.name.name.to_string();
                    if !ALLOWED_IMPORTS.contains(&name.as_str()) && !wasi.provides_wasi(&name) {
                        return Err(forbidden(name, wasi));
                    }
                    summary.imports.push(name);
                }
            }
            Payload::ComponentExportSection(section) if depth == 1 => {
                for export in section {
                    let export = export.map_err(|e| LoadError::Malformed(e.to_string()))?;
                    summary.exports.push(export.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    if !summary.exports.iter().any(|e| e == REQUIRED_EXPORT) {
        return Err(LoadError::MissingExport {
            expected: REQUIRED_EXPORT.into(),
            found: if summary.exports.is_empty() {
                "nothing".into()
            } else {
                summary.exports.join(", ")
            },
        });
    }
    Ok(summary)
}

fn forbidden(name: String, wasi: WasiProfile) -> LoadError {
    let mut allowed = ALLOWED_IMPORTS.join(", ");
    match wasi {
        WasiProfile::None if WasiProfile::Deterministic.provides_wasi(&name) => allowed.push_str(
            "; this WASI interface is available under the deterministic WASI profile: deploy \
             with `--wasi deterministic`",
        ),
        WasiProfile::None => {}
        WasiProfile::Deterministic => {
            allowed.push_str(", and WASI 0.2.x: ");
            allowed.push_str(&wraft_proto::DETERMINISTIC_WASI_IMPORTS.join(", "));
        }
    }
    LoadError::ForbiddenImport {
        name,
        profile: wasi,
        allowed,
    }
}
