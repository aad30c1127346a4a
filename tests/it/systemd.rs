//! `scripts/sandra.service`: `systemd-analyze verify` finds nothing wrong with it (pointed at the
//! binary this build made) and `systemd-analyze security` rates its exposure at most 2.0 (skipped,
//! with the reason printed, where systemd-analyze is not installed); and the real binary speaks
//! the notify protocol.

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

/// `sandra serve` under `Type=notify`: READY=1 once it listens, WATCHDOG=1 pings while it is
/// healthy, STOPPING=1 on SIGTERM. The test plays systemd's notify socket.
#[tokio::test]
async fn serve_tells_systemd_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandra"))
        .arg("serve")
        .env("SANDRA_BIND", "127.0.0.1:0")
        .env("SANDRA_DATA_DIR", dir.path().join("data"))
        .env("NOTIFY_SOCKET", &socket_path)
        // 200 ms: pings every 100 ms.
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut heard = Vec::new();
    until(&socket, &mut heard, "READY=1").await;
    until(&socket, &mut heard, "WATCHDOG=1").await;
    assert!(!heard.iter().any(|m| m.contains("STOPPING=1")), "{heard:?}");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    until(&socket, &mut heard, "STOPPING=1").await;
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?} {heard:?}");
}

/// Receives notify messages into `heard` until one has the line `want`.
async fn until(socket: &tokio::net::UnixDatagram, heard: &mut Vec<String>, want: &str) {
    let mut buf = vec![0u8; 4096];
    while !heard.iter().any(|m| m.lines().any(|l| l == want)) {
        // Generous bound against a hang only: each message normally arrives in milliseconds.
        let n = tokio::time::timeout(std::time::Duration::from_secs(120), socket.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {want} from sandra; heard {heard:?}"))
            .unwrap();
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}
