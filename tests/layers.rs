//! The layer order written in `src/lib.rs` is true of the code: every module of `src/` has a
//! layer, a module uses only modules of its own layer or below, and no modules use each
//! other in a cycle.
//!
//! A module's uses are the `crate::` and `super::` paths in its code (comments and its
//! `#[cfg(test)] mod tests` left out); a name re-exported at the crate root counts as a use
//! of the module that defines it. Each entry of the order is a part (`http`) or one module
//! (`core::tracker`); a module belongs to the longest entry that names it or its folder.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

const MARKER: &str = "// The layers, top first.";

/// The order from `src/lib.rs`: each line's entries, top line first.
fn layers(lib: &str) -> Vec<Vec<String>> {
    let mut lines = lib.lines().skip_while(|l| !l.starts_with(MARKER));
    assert!(lines.next().is_some(), "src/lib.rs has no `{MARKER}` block");
    let mut out = Vec::new();
    for line in lines.skip_while(|l| !l.starts_with("//   ")) {
        let Some(rest) = line.strip_prefix("//   ") else {
            break;
        };
        let names = rest.split("  ").next().unwrap_or("");
        out.push(names.split_whitespace().map(str::to_owned).collect());
    }
    assert!(!out.is_empty(), "the layer block in src/lib.rs is empty");
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `core::tracker` for `src/core/tracker.rs`, `http` for `src/http/mod.rs`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    let name = parts.join("::");
    // Declared in lib.rs with `#[path = "internals.rs"] pub mod __internals`.
    if name == "internals" {
        "__internals".to_owned()
    } else {
        name
    }
}

/// The code of a file without comments and without its unit tests.
fn code(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..end]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths named after `prefix::` (`crate::a::b::{C, d::E}` gives `a::b::C`, `a::b::d::E`).
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `$crate::`, `foo_crate::`, `::crate`
        }
        expand("", rest, &mut out);
    }
    out
}

/// Reads one path (or a brace group of them) at the start of `s`, under `base`.
fn expand(base: &str, s: &str, out: &mut Vec<String>) -> usize {
    let mut i = 0;
    let bytes = s.as_bytes();
    let mut path = base.to_owned();
    loop {
        if bytes.get(i) == Some(&b'{') {
            i += 1;
            loop {
                while bytes
                    .get(i)
                    .is_some_and(|b| b.is_ascii_whitespace() || *b == b',')
                {
                    i += 1;
                }
                if bytes.get(i).is_none_or(|b| *b == b'}') {
                    return i + 1;
                }
                i += expand(&path, &s[i..], out);
            }
        }
        let start = i;
        while bytes
            .get(i)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            i += 1;
        }
        if i > start {
            if !path.is_empty() {
                path.push_str("::");
            }
            path.push_str(&s[start..i]);
        }
        if s[i..].starts_with("::") {
            i += 2;
            continue;
        }
        // ` as alias`, `<T>`, `(`...: the path ends here.
        if !path.is_empty() {
            out.push(path);
        }
        while bytes
            .get(i)
            .is_some_and(|b| !matches!(b, b',' | b'}' | b';' | b'\n'))
        {
            if bytes[i] == b'{' {
                break;
            }
            i += 1;
        }
        return i;
    }
}

/// The module a path names: its longest prefix that is a module.
fn target(
    path: &str,
    modules: &BTreeSet<String>,
    root: &HashMap<String, String>,
) -> Option<String> {
    let segments: Vec<&str> = path.split("::").collect();
    let mut found = None;
    for n in 1..=segments.len() {
        let candidate = segments[..n].join("::");
        if modules.contains(&candidate) {
            found = Some(candidate);
        }
    }
    found.or_else(|| root.get(segments[0]).cloned())
}

#[test]
fn the_layer_order_in_lib_rs_is_true_and_there_is_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    let order = layers(&lib);
    let layer_of_entry: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .flat_map(|(i, names)| names.iter().map(move |n| (n.as_str(), i)))
        .collect();

    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(&src, f))
        .filter(|m| m != "lib")
        .collect();

    // Names re-exported (or imported) at the crate root, by the module that defines them.
    let mut root = HashMap::new();
    for path in paths_after(&code(&lib), "use ") {
        let path = path.strip_prefix("crate::").unwrap_or(&path);
        if let (Some(module), Some(name)) = (
            target(path, &modules, &HashMap::new()),
            path.rsplit("::").next(),
        ) {
            root.insert(name.to_owned(), module);
        }
    }

    let entry_of = |module: &str| -> String {
        let mut best: Option<&str> = None;
        for name in layer_of_entry.keys() {
            if (module == *name || module.starts_with(&format!("{name}::")))
                && best.is_none_or(|b| name.len() > b.len())
            {
                best = Some(name);
            }
        }
        best.map(str::to_owned).unwrap_or_default()
    };

    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue;
        }
        let text = code(&fs::read_to_string(file).unwrap());
        let mut uses = Vec::new();
        for path in paths_after(&text, "crate::") {
            uses.extend(target(&path, &modules, &root));
        }
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        for path in paths_after(&text, "super::") {
            let full = if parent.is_empty() {
                path
            } else {
                format!("{parent}::{path}")
            };
            uses.extend(target(&full, &modules, &root));
        }
        let from = entry_of(&module);
        if from.is_empty() {
            if !uses.is_empty() {
                problems.push(format!("{module} has no layer in src/lib.rs"));
            }
            continue;
        }
        for used in uses {
            let to = entry_of(&used);
            if to.is_empty() {
                problems.push(format!(
                    "{used} (used by {module}) has no layer in src/lib.rs"
                ));
                continue;
            }
            if to == from {
                continue;
            }
            if layer_of_entry[to.as_str()] < layer_of_entry[from.as_str()] {
                problems.push(format!("{module} uses {used}, a layer above it"));
            }
            edges.entry(from.clone()).or_default().insert(to);
        }
    }

    // A cycle among entries of one layer (the order rules out any other).
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut HashMap<String, u8>,
        stack: &mut Vec<String>,
        problems: &mut Vec<String>,
    ) {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    problems.push(format!("cycle: {} -> {next}", stack[from..].join(" -> ")));
                }
                Some(_) => {}
                None => visit(next, edges, state, stack, problems),
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
    }
    let mut state = HashMap::new();
    for node in edges.keys() {
        if !state.contains_key(node.as_str()) {
            visit(node, &edges, &mut state, &mut Vec::new(), &mut problems);
        }
    }

    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check sees the code: a few uses it must find.
    assert!(edges["core::tracker"].contains("core::lifecycle"));
    assert!(edges["presence"].contains("core::tracker"));
}
