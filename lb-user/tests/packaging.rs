//! The packaging: the systemd units are what `systemd-analyze verify` accepts without a
//! warning (unknown keys, bad values, missing binaries), with the binary this build made.

use std::{path::Path, process::Command};

/// `systemd-analyze`, or `None` off systemd (a failure on CI, which installs it).
fn analyze() -> Option<&'static str> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!("systemd-analyze is missing: `cargo xtask setup` installs systemd");
    }
    found.then_some("systemd-analyze")
}

#[test]
fn the_systemd_units_verify_without_a_warning() {
    let Some(analyze) = analyze() else {
        eprintln!("skipped: no systemd-analyze here");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("lb-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let mut units = Vec::new();
    for (file, as_name) in [
        ("lb.service", "lb.service"),
        ("lb@.service", "lb@edge1.service"),
    ] {
        let text = std::fs::read_to_string(root.join("packaging").join(file)).expect("the unit");
        for key in [
            "Type=notify",
            "ExecReload=/usr/local/bin/lb reload",
            "WatchdogSec=",
            "CapabilityBoundingSet=",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "RuntimeDirectory=lb lock/lb",
        ] {
            assert!(text.contains(key), "{file} lacks {key}");
        }
        let text = text.replace("/usr/local/bin/lb", env!("CARGO_BIN_EXE_lb"));
        std::fs::write(dir.join(as_name), text).expect("writing the copy");
        units.push(dir.join(as_name));
    }
    // The guest agent's unit: its environment file, as the unit's comment says to write it.
    {
        let file = "lb-guest.service";
        let text = std::fs::read_to_string(root.join("packaging").join(file)).expect("the unit");
        for key in [
            "Type=notify",
            "ExecStart=/usr/local/bin/lb guest run --addresses ${LB_GUEST_ADDRESSES}",
            "EnvironmentFile=/etc/default/lb-guest",
            "CapabilityBoundingSet=",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
        ] {
            assert!(text.contains(key), "{file} lacks {key}");
        }
        let env = dir.join("lb-guest.env");
        std::fs::write(&env, "LB_GUEST_ADDRESSES=192.0.2.70,192.0.2.100\n").expect("env file");
        let text = text
            .replace("/usr/local/bin/lb", env!("CARGO_BIN_EXE_lb"))
            .replace("/etc/default/lb-guest", &env.display().to_string());
        let as_name = file;
        std::fs::write(dir.join(as_name), text).expect("writing the copy");
        units.push(dir.join(as_name));
    }
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .expect("running systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "{out:?}"
    );
}
