//! The house's layers (see `src/lib.rs`): each folder of `lb-user/src` may use only the folders
//! below it. Read from the sources, so a `use` that reaches up fails here, naming the file.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// What each top-level module may use of the crate (besides itself and the root's interface
/// helpers `ifindex` and `ifname`).
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("config", &[][..]),
        ("datapath", &["config"][..]),
        ("control", &["config", "datapath"][..]),
        ("probe", &["config", "control"][..]),
        ("announce", &["config"][..]),
        ("guest", &["config"][..]),
        ("rpc", &["config", "datapath"][..]),
        (
            "view",
            &["config", "control", "datapath", "announce", "rpc"][..],
        ),
        (
            "metrics",
            &["config", "control", "datapath", "probe", "view"][..],
        ),
        (
            "daemon",
            &[
                "config", "control", "datapath", "probe", "announce", "rpc", "view", "metrics",
            ][..],
        ),
    ])
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules `text` names through `crate::`: `crate::a::…` and each item of
/// `crate::{a::…, b, …}`.
fn crate_uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start_of_item = true;
            for (k, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start_of_item = true,
                    c if start_of_item && (c.is_ascii_alphabetic() || c == '_') => {
                        start_of_item = false;
                        out.insert(ident(&inner[k..]));
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn no_layer_uses_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let allowed = allowed();
    let mut checked = BTreeSet::new();
    let mut wrong = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a name")
            .trim_end_matches(".rs");
        let Some(may) = allowed.get(top) else {
            continue; // the crate root, main.rs and the binary's cli/
        };
        checked.insert(top);
        let text = fs::read_to_string(file).expect("read source");
        for used in crate_uses(&text) {
            let ok = used == top || used == "ifindex" || used == "ifname" || may.contains(&&*used);
            if !ok {
                wrong.push(format!("{} uses crate::{used}", rel.display()));
            }
        }
    }
    assert_eq!(
        checked.len(),
        allowed.len(),
        "every layer has sources: {checked:?}"
    );
    assert!(wrong.is_empty(), "layers reached up:\n{}", wrong.join("\n"));
}

#[test]
fn the_scanner_sees_both_forms_of_use() {
    let uses = crate_uses(
        "use crate::{config::{A, b::C}, datapath::tables::Tables, view};\nlet x = crate::daemon::f();",
    );
    assert_eq!(
        uses,
        BTreeSet::from(["config", "datapath", "view", "daemon"].map(String::from))
    );
}
