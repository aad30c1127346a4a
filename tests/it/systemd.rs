//! `scripts/sandra.service`: `systemd-analyze verify` finds nothing wrong with it (pointed at the
//! binary this build made) and `systemd-analyze security` rates its exposure at most 2.0. Skipped,
//! with the reason printed, where systemd-analyze is not installed.

use std::path::Path;
use std::process::Command;

fn systemd_analyze() -> Option<&'static str> {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("SKIPPED: systemd-analyze is not installed (Debian: apt-get install systemd)");
    }
    found.then_some("systemd-analyze")
}

#[test]
fn the_unit_verifies_clean_and_is_hardened() {
    let Some(tool) = systemd_analyze() else {
        return;
    };
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sandra.service"),
    )
    .unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/sandra serve"),
        "{unit}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sandra.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/sandra", env!("CARGO_BIN_EXE_sandra")),
    )
    .unwrap();

    let out = Command::new(tool)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Warnings name the unit file; a clean unit gets none.
    assert!(!stderr.contains("sandra.service"), "{stderr}");

    let out = Command::new(tool)
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exposure above 2.0:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
