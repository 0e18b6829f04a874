//! The `lb` binary's own surface, unprivileged: its version, the generated man pages, shell
//! completions and configuration schema (what packaging installs), `LB_PIN_DIR`, exit codes.

use std::{path::Path, process::Command};

use serde_json::Value;

fn lb(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(args)
        .env_remove("LB_PIN_DIR")
        .output()
        .expect("running lb")
}

fn stdout(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_version_names_the_datapath_layout() {
    let v = stdout(&lb(&["--version"]));
    assert!(
        v.starts_with(&format!("lb {} (git ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(
        v.trim_end().ends_with(&format!(
            ", datapath layout {})",
            lb_common::maps::LAYOUT_VERSION
        )),
        "{v}"
    );
}

#[test]
fn man_pages_cover_every_command() {
    let dir = std::env::temp_dir().join(format!("lb-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    stdout(&lb(&["generate", "man", &dir.to_string_lossy()]));
    for page in [
        "lb.1",
        "lb-run.1",
        "lb-status.1",
        "lb-reload.1",
        "lb-events.1",
        "lb-path-drain.1",
        "lb-down.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
    let main = std::fs::read_to_string(dir.join("lb.1")).expect("lb.1");
    assert!(
        main.contains("pin\\-dir"),
        "the global option is documented: {main}"
    );
    // Hidden: not a command an operator runs.
    assert!(!dir.join("lb-generate.1").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn completions_know_the_commands_and_their_options() {
    for shell in ["bash", "zsh", "fish"] {
        let text = stdout(&lb(&["generate", "completions", shell]));
        for word in ["status", "reload", "events", "drain", "dry-run", "pin-dir"] {
            assert!(text.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = lb(&["generate", "completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

/// The shipped schema (`docs/lb.schema.json`) is the one the types make: regenerate it with
/// `lb generate schema > docs/lb.schema.json` after changing the configuration.
#[test]
fn the_shipped_schema_is_the_generated_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("docs/lb.schema.json")).expect("docs/lb.schema.json"),
    )
    .expect("JSON");
    assert_eq!(
        shipped,
        lb_user::config::schema(),
        "regenerate docs/lb.schema.json"
    );
    let printed: Value = serde_json::from_str(&stdout(&lb(&["generate", "schema"]))).expect("JSON");
    assert_eq!(printed, shipped);
}

/// Every field of the example configuration is one the schema knows, all the way down (the
/// schema forbids the rest, as the parser does).
#[test]
fn the_example_configuration_fits_the_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("examples/lb.json")).expect("examples/lb.json"),
    )
    .expect("JSON");
    let schema = lb_user::config::schema();
    fits(&schema, &schema, &example, "$");
}

/// Checks that every key of `value` is a property of `node` (a schema node of `root`).
fn fits(root: &Value, node: &Value, value: &Value, at: &str) {
    // Follow `$ref` and the first non-null branch of `anyOf` (an optional field).
    if let Some(r) = node["$ref"].as_str() {
        let name = r.trim_start_matches("#/$defs/");
        return fits(root, &root["$defs"][name], value, at);
    }
    if let Some(branches) = node["anyOf"].as_array() {
        let branch = branches
            .iter()
            .find(|b| b["type"] != "null")
            .expect("a non-null branch");
        return fits(root, branch, value, at);
    }
    match value {
        Value::Object(fields) => {
            let properties = node["properties"].as_object();
            for (k, v) in fields {
                let Some(child) = properties.and_then(|p| p.get(k)) else {
                    // A map (interfaces.hooks): its values' schema.
                    if let Some(extra) = node["additionalProperties"].as_object() {
                        fits(root, &Value::Object(extra.clone()), v, &format!("{at}.{k}"));
                        continue;
                    }
                    panic!("{at}.{k} is not in the schema");
                };
                fits(root, child, v, &format!("{at}.{k}"));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                fits(root, &node["items"], v, &format!("{at}[{i}]"));
            }
        }
        _ => {}
    }
}

#[test]
fn the_pin_directory_comes_from_lb_pin_dir_and_usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_lb"))
        .args(["status"])
        .env("LB_PIN_DIR", "/nonexistent/lb-env-pins")
        .output()
        .expect("running lb");
    let err = String::from_utf8_lossy(&out.stderr);
    // Without privileges it says so first; with them, that nothing is pinned there.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        err.contains("/nonexistent/lb-env-pins") || err.contains("CAP_BPF"),
        "{err}"
    );
    assert_eq!(lb(&["status", "--no-such-flag"]).status.code(), Some(2));
    assert_eq!(lb(&["no-such-command"]).status.code(), Some(2));
}
