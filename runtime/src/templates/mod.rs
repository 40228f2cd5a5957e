//! `wraft new`: machine projects created from templates compiled into the binary.
//!
//! Each language has a fixed list of files (`include_str!`), with `{{name}}` (the machine and
//! package name), `{{crate_name}}` (the name as a Rust identifier) and `{{sdk_dependency}}`
//! substituted. Nothing is fetched while creating a project.
//!
//! # Where a Rust project gets `wraft-guest` from
//!
//! `wraft-guest` is not published to a registry yet, so a new Rust project depends on it by path:
//! `--sdk-path`, else `$WRAFT_SDK_PATH`, else the `guest-sdk` of the checkout this binary was
//! built from (if it still exists). With a checkout, its `Cargo.lock` is copied into the project
//! so the project builds with exactly the dependency versions wraft is tested with (cargo prunes
//! the entries the project does not use). Once the SDK is published, the fallback becomes a
//! registry version.

use std::path::{Path, PathBuf};

/// A machine project's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    /// A `wraft-guest` crate: `Cargo.toml`.
    Rust,
    /// A JavaScript guest: `package.json`.
    Js,
    /// A Python guest: `pyproject.toml` or `app.py`.
    Python,
}

impl Language {
    /// The lower-case name used on the command line (`rust`, `js`, `python`).
    pub fn name(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Js => "js",
            Language::Python => "python",
        }
    }

    /// The language of the project in `dir`, from its manifest file: `Cargo.toml` (Rust),
    /// `package.json` (JavaScript), `pyproject.toml` or `app.py` (Python). Cost: a few `stat`s.
    pub fn detect(dir: &Path) -> Option<Language> {
        if dir.join("Cargo.toml").is_file() {
            Some(Language::Rust)
        } else if dir.join("package.json").is_file() {
            Some(Language::Js)
        } else if dir.join("pyproject.toml").is_file() || dir.join("app.py").is_file() {
            Some(Language::Python)
        } else {
            None
        }
    }
}

impl std::str::FromStr for Language {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rust" | "rs" => Ok(Language::Rust),
            "js" | "javascript" => Ok(Language::Js),
            "python" | "py" => Ok(Language::Python),
            other => Err(format!(
                "unknown language {other:?}: expected rust, js or python"
            )),
        }
    }
}

/// One template file: where it goes in the project and its text.
struct TemplateFile {
    path: &'static str,
    text: &'static str,
    /// For files taken verbatim from an example machine: the example's quoted machine name,
    /// replaced by the new project's (so the starter is the example the suite builds and runs
    /// through a cluster, not a copy of it that could drift).
    rename: Option<&'static str>,
}

/// The JavaScript starter (componentize-js; no WASI): `examples/js-kv` itself, with the
/// project's own `package.json` and README from `runtime/templates/js`.
const JS: &[TemplateFile] = &[
    TemplateFile {
        path: ".gitignore",
        text: include_str!("../../templates/js/gitignore"),
        rename: None,
    },
    TemplateFile {
        path: "package.json",
        text: include_str!("../../templates/js/package.json"),
        rename: None,
    },
    TemplateFile {
        path: "src/machine.js",
        text: include_str!("../../../examples/js-kv/src/machine.js"),
        rename: Some("\"js-kv\""),
    },
    TemplateFile {
        path: "src/state.js",
        text: include_str!("../../../examples/js-kv/src/state.js"),
        rename: None,
    },
    TemplateFile {
        path: "test/state.test.js",
        text: include_str!("../../../examples/js-kv/test/state.test.js"),
        rename: None,
    },
    TemplateFile {
        path: crate::fidelity::SAMPLE_FILE,
        text: include_str!("../../../examples/js-kv/wraft-check.jsonl"),
        rename: None,
    },
    TemplateFile {
        path: "README.md",
        text: include_str!("../../templates/js/README.md"),
        rename: None,
    },
];

/// The Python starter (componentize-py; deploy with `--wasi deterministic`):
/// `examples/py-counter` itself, with the README from `runtime/templates/python`.
const PYTHON: &[TemplateFile] = &[
    TemplateFile {
        path: ".gitignore",
        text: include_str!("../../templates/python/gitignore"),
        rename: None,
    },
    TemplateFile {
        path: "app.py",
        text: include_str!("../../../examples/py-counter/app.py"),
        rename: Some("\"py-counter\""),
    },
    TemplateFile {
        path: "counter.py",
        text: include_str!("../../../examples/py-counter/counter.py"),
        rename: None,
    },
    TemplateFile {
        path: "test_counter.py",
        text: include_str!("../../../examples/py-counter/test_counter.py"),
        rename: None,
    },
    TemplateFile {
        path: crate::fidelity::SAMPLE_FILE,
        text: include_str!("../../../examples/py-counter/wraft-check.jsonl"),
        rename: None,
    },
    TemplateFile {
        path: "README.md",
        text: include_str!("../../templates/python/README.md"),
        rename: None,
    },
];

const RUST: &[TemplateFile] = &[
    TemplateFile {
        path: "Cargo.toml",
        text: include_str!("rust/Cargo.toml.tmpl"),
        rename: None,
    },
    TemplateFile {
        path: "src/lib.rs",
        text: include_str!("rust/src/lib.rs.tmpl"),
        rename: None,
    },
    TemplateFile {
        path: "tests/machine.rs",
        text: include_str!("rust/tests/machine.rs.tmpl"),
        rename: None,
    },
    TemplateFile {
        path: crate::fidelity::SAMPLE_FILE,
        text: include_str!("rust/wraft-check.jsonl.tmpl"),
        rename: None,
    },
    TemplateFile {
        path: "README.md",
        text: include_str!("rust/README.md.tmpl"),
        rename: None,
    },
    TemplateFile {
        path: ".gitignore",
        text: include_str!("rust/gitignore.tmpl"),
        rename: None,
    },
];

/// Longest machine name accepted by `wraft new`, in bytes.
pub const NAME_BYTES_MAX: usize = 64;

/// Why a project could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    /// The name is not usable as a machine and package name.
    #[error(
        "invalid machine name {name:?}: use 1..={NAME_BYTES_MAX} lower-case letters, digits, \
         '-' or '_', starting with a letter"
    )]
    BadName {
        /// The name given.
        name: String,
    },
    /// The target directory exists and is not empty.
    #[error("{0} already exists and is not empty; choose another --dir or remove it")]
    NotEmpty(PathBuf),
    /// No template exists for this language yet.
    #[error("no {lang} template in this build of wraft yet: {detail}")]
    NoTemplate {
        /// The language asked for.
        lang: &'static str,
        /// What to do instead.
        detail: String,
    },
    /// `wraft-guest` could not be located.
    #[error(
        "cannot find the wraft-guest SDK: {detail}. wraft-guest is not on a registry yet; pass \
         --sdk-path PATH/TO/wraft/guest-sdk (or set WRAFT_SDK_PATH) to a checkout of wraft"
    )]
    NoSdk {
        /// What was tried.
        detail: String,
    },
    /// Writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What [`new_project`] created.
#[derive(Debug, Clone)]
pub struct NewProject {
    /// The project directory.
    pub dir: PathBuf,
    /// Its language.
    pub lang: Language,
    /// Files written, relative to `dir`.
    pub files: Vec<PathBuf>,
    /// The `wraft-guest` directory a Rust project depends on.
    pub sdk: Option<PathBuf>,
    /// Whether a `Cargo.lock` was copied from the SDK's checkout.
    pub lockfile_copied: bool,
}

/// Options of [`new_project`].
#[derive(Debug, Clone, Default)]
pub struct NewOptions {
    /// Where to create the project; default `./NAME`.
    pub dir: Option<PathBuf>,
    /// The `wraft-guest` directory for a Rust project; see the module docs for the default.
    pub sdk_path: Option<PathBuf>,
}

/// Check that `name` can be a machine name, a package name and a directory name.
pub fn check_name(name: &str) -> Result<(), NewError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(NewError::BadName {
            name: name.to_owned(),
        })
    }
}

/// The `guest-sdk` directory of the checkout this binary was built from, if it is still there.
pub fn checkout_sdk() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
    is_sdk(&p).then(|| p.canonicalize().unwrap_or(p))
}

fn is_sdk(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|s| s.contains("name = \"wraft-guest\""))
}

fn find_sdk(explicit: Option<&Path>) -> Result<PathBuf, NewError> {
    let candidate = explicit
        .map(Path::to_owned)
        .or_else(|| std::env::var_os("WRAFT_SDK_PATH").map(PathBuf::from));
    if let Some(p) = candidate {
        if !is_sdk(&p) {
            return Err(NewError::NoSdk {
                detail: format!(
                    "{} has no Cargo.toml of the package wraft-guest",
                    p.display()
                ),
            });
        }
        return Ok(p.canonicalize().unwrap_or(p));
    }
    checkout_sdk().ok_or_else(|| NewError::NoSdk {
        detail: format!(
            "no --sdk-path or WRAFT_SDK_PATH, and the checkout this wraft was built from ({}) \
             is gone",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").display()
        ),
    })
}

/// Create a new machine project `name` in `lang` (see the module docs).
///
/// Fails if the name is unusable, the directory exists and is not empty, the SDK cannot be found
/// (Rust), or no template exists for `lang` yet. Cost: a handful of small file writes (plus a copy
/// of the checkout's `Cargo.lock`).
pub fn new_project(name: &str, lang: Language, opts: &NewOptions) -> Result<NewProject, NewError> {
    check_name(name)?;
    let dir = opts.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(NewError::NotEmpty(dir));
    }
    let (files, sdk) = match lang {
        Language::Rust => (RUST, Some(find_sdk(opts.sdk_path.as_deref())?)),
        Language::Js => (JS, None),
        Language::Python => (PYTHON, None),
    };
    let crate_name = name.replace('-', "_");
    let sdk_dependency = match &sdk {
        Some(p) => format!(
            "wraft-guest = {{ path = {} }}",
            toml_string(&p.to_string_lossy())
        ),
        None => String::new(),
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| NewError::Io { path, source }
    };
    let mut written = Vec::new();
    for f in files {
        let mut text = f.text.to_owned();
        if let Some(from) = f.rename {
            debug_assert!(text.contains(from), "{}: no {from} to rename", f.path);
            text = text.replace(from, &format!("{name:?}"));
        }
        let text = text
            .replace("{{name}}", name)
            .replace("{{crate_name}}", &crate_name)
            .replace("{{sdk_dependency}}", &sdk_dependency);
        let path = dir.join(f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
        written.push(PathBuf::from(f.path));
    }
    let mut lockfile_copied = false;
    if let Some(lock) = sdk
        .as_ref()
        .and_then(|s| s.parent())
        .map(|root| root.join("Cargo.lock"))
        .filter(|l| l.is_file())
    {
        let to = dir.join("Cargo.lock");
        std::fs::copy(&lock, &to).map_err(io(&to))?;
        written.push(PathBuf::from("Cargo.lock"));
        lockfile_copied = true;
    }
    Ok(NewProject {
        dir,
        lang,
        files: written,
        sdk,
        lockfile_copied,
    })
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_packages_are_refused() {
        for bad in ["", "Kv", "1kv", "k v", "kv/x", &"k".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["kv", "my-kv", "kv_2"] {
            check_name(good).unwrap();
        }
    }

    #[test]
    fn a_rust_project_gets_every_template_file_with_names_substituted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("my-kv");
        let p = new_project(
            "my-kv",
            Language::Rust,
            &NewOptions {
                dir: Some(dir.clone()),
                sdk_path: checkout_sdk(),
            },
        )
        .unwrap();
        assert_eq!(Language::detect(&dir), Some(Language::Rust));
        assert!(p.lockfile_copied);
        assert!(dir.join(crate::fidelity::SAMPLE_FILE).is_file());
        for f in &p.files {
            let text = std::fs::read_to_string(dir.join(f)).unwrap();
            assert!(!text.contains("{{"), "{} keeps a placeholder", f.display());
        }
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains(r#"const NAME: &'static str = "my-kv";"#));
        let tests = std::fs::read_to_string(dir.join("tests/machine.rs")).unwrap();
        assert!(tests.contains("use my_kv::"));
        let e = new_project(
            "my-kv",
            Language::Rust,
            &NewOptions {
                dir: Some(dir),
                sdk_path: None,
            },
        )
        .unwrap_err();
        assert!(matches!(e, NewError::NotEmpty(_)), "{e}");
    }

    #[test]
    fn js_and_python_projects_get_their_template_files_with_the_name_substituted() {
        for (lang, manifest) in [(Language::Js, "package.json"), (Language::Python, "app.py")] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("shop");
            let opts = NewOptions {
                dir: Some(dir.clone()),
                ..NewOptions::default()
            };
            let p = new_project("shop", lang, &opts).unwrap();
            assert_eq!(Language::detect(&p.dir), Some(lang));
            assert!(dir.join(crate::fidelity::SAMPLE_FILE).is_file(), "{lang:?}");
            let text = std::fs::read_to_string(dir.join(manifest)).unwrap();
            assert!(
                text.contains("shop") && !text.contains("{{"),
                "{manifest}: {text}"
            );
            // The machine's `info` names the project, not the example it was taken from.
            let entry = if lang == Language::Js {
                "src/machine.js"
            } else {
                "app.py"
            };
            let code = std::fs::read_to_string(dir.join(entry)).unwrap();
            assert!(
                code.contains("name: \"shop\"") || code.contains("name=\"shop\""),
                "{entry}"
            );
            assert!(
                !code.contains("js-kv") && !code.contains("py-counter"),
                "{entry}"
            );
        }
    }

    #[test]
    fn a_wrong_sdk_path_is_refused_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let e = new_project(
            "kv",
            Language::Rust,
            &NewOptions {
                dir: Some(tmp.path().join("kv")),
                sdk_path: Some(tmp.path().to_owned()),
            },
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("has no Cargo.toml of the package wraft-guest"),
            "{e}"
        );
    }
}
