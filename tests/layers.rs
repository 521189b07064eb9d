//! The module layering of `src/`, checked: which top-level module may use which, no cycles,
//! and a sans-IO core. A module that reaches up (say `http` importing `net`) fails here, so the
//! architecture the README draws is the one the code has.
//!
//! Read from the source text: every `crate::<module>` outside comments and `#[cfg(test)]`
//! code counts as a use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may use. `main.rs` and `lib.rs` are the roots
/// and may use anything.
const LAYERS: &[(&str, &[&str])] = &[
    ("protocol", &[]),
    ("config", &[]),
    ("systemd", &[]),
    ("shutdown", &[]),
    ("http", &[]),
    ("core", &["protocol"]),
    ("api", &["protocol"]),
    ("metrics", &["protocol"]),
    ("telemetry", &["protocol"]),
    ("backend", &["protocol", "config", "metrics"]),
    ("broker", &["protocol", "core", "api", "metrics"]),
    (
        "net",
        &[
            "protocol",
            "config",
            "systemd",
            "http",
            "core",
            "api",
            "metrics",
            "telemetry",
            "backend",
            "broker",
        ],
    ),
];

/// What the sans-IO modules must not touch: sockets, threads, runtimes, the clock.
const SANS_IO: &[&str] = &["core", "api"];
const IO_WORDS: &[&str] = &[
    "monoio",
    "tokio",
    "std::net",
    "std::thread",
    "Instant::now",
    "SystemTime",
];

/// The `.rs` files under `dir`, but files named `tests.rs`: those are `#[cfg(test)] mod
/// tests;` bodies (test code, which may use threads and the clock).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// The file's code lines outside comments and its `#[cfg(test)]` tail.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .filter(|l| !l.trim_start().starts_with("//"))
}

/// Top-level module of each file (None for the roots) and the modules its code uses.
fn uses() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut by_module: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if module == "main" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        let used = by_module
            .entry(module.clone())
            .or_default()
            .entry(rel.display().to_string())
            .or_default();
        for line in code_lines(&text) {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    used.insert(name);
                }
            }
        }
    }
    by_module
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut broken = Vec::new();
    for (module, files) in uses() {
        let Some(may) = allowed.get(module.as_str()) else {
            broken.push(format!("src/{module} is not in LAYERS: place it"));
            continue;
        };
        for (file, used) in files {
            for u in used {
                if !may.contains(&u.as_str()) {
                    broken.push(format!(
                        "src/{file} uses crate::{u}, above or beside {module}"
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_layers_have_no_cycle() {
    // Each module may only use modules listed before it.
    let mut seen = BTreeSet::new();
    for (module, may) in LAYERS {
        for m in *may {
            assert!(
                seen.contains(m),
                "{module} may use {m}, which is not below it in LAYERS"
            );
        }
        seen.insert(*module);
    }
}

#[test]
fn the_sans_io_modules_touch_no_sockets_threads_runtimes_or_clock() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    for module in SANS_IO {
        let mut files = Vec::new();
        rust_files(&src.join(module), &mut files);
        assert!(!files.is_empty(), "src/{module} has no files");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read");
            for line in code_lines(&text) {
                for word in IO_WORDS {
                    if line.contains(word) {
                        broken.push(format!("{}: {word}: {line}", file.display()));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
