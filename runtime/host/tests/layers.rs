//! Architecture invariant: the host crate's files form layers. `lib.rs` lists them in its
//! "Layers" section, lowest first; a file may import only files listed before it, so no two
//! files import each other, directly or through others. This test reads that list and every
//! `crate::…` path in the sources, and fails on an upward import, on a source file the list
//! does not name, and on paths that hide which file they import from (`crate::{…}`, a
//! re-export at the crate root, `super::…`).

use std::path::Path;

/// The numbered `` N. `file.rs` `` lines of the crate docs, in order, as module names.
fn layers(lib_rs: &str) -> Vec<String> {
    lib_rs
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .filter_map(|l| {
            let l = l.trim_start();
            let (n, rest) = l.split_once(". `")?;
            n.parse::<u32>().ok()?;
            let (file, _) = rest.split_once('`')?;
            Some(file.strip_suffix(".rs")?.to_string())
        })
        .collect()
}

/// The code of a line, without its `//` comment (doc comments included).
fn code(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

/// The identifier starting at `s`.
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

#[test]
fn host_files_import_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib_rs = std::fs::read_to_string(src.join("lib.rs")).expect("readable lib.rs");
    let layers = layers(&lib_rs);
    assert!(
        layers.len() >= 10,
        "found the layer list in lib.rs: {layers:?}"
    );

    let mut problems = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&src)
        .expect("readable src")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    assert!(files.len() > layers.len(), "found the sources");
    for path in files {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" {
            continue;
        }
        let Some(level) = layers.iter().position(|l| *l == name) else {
            problems.push(format!("{name}.rs is not in the layer list of lib.rs"));
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            let code = code(line);
            let at = format!("{name}.rs:{}: {}", n + 1, line.trim());
            for (i, _) in code.match_indices("super::") {
                // `use super::*;` in a `mod tests` means the file itself.
                if !code[i + "super::".len()..].starts_with('*') {
                    problems.push(format!("{at}\n  name the file: `crate::<file>::…`"));
                }
            }
            for (i, _) in code.match_indices("crate::") {
                let target = ident(&code[i + "crate::".len()..]);
                match layers.iter().position(|l| l == target) {
                    Some(t) if t < level => {}
                    None if target.is_empty() => problems.push(format!(
                        "{at}\n  `crate::{{…}}` hides which file each item comes from; write one \
                         `use crate::<file>::…` per file"
                    )),
                    Some(t) => problems.push(format!(
                        "{at}\n  `{name}.rs` (layer {}) imports `{target}.rs` (layer {}), which \
                         is not below it",
                        level + 1,
                        t + 1
                    )),
                    None => problems.push(format!(
                        "{at}\n  `crate::{target}` is not a file of the layer list; import from \
                         the file that defines the item"
                    )),
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "imports that break the layering (see the Layers section of src/lib.rs):\n{}",
        problems.join("\n")
    );
}
