//! Socket discovery: a user with `XDG_RUNTIME_DIR` set and no per-user
//! daemon finds the system daemon at `/run/coproc/coprocd.sock`, and with
//! no daemon at all is told what was tried and what to do. Runs in a mount
//! namespace of its own with a private `/run/coproc` (needs root, util-linux's
//! `unshare` and `setpriv`), so no daemon of the machine is touched.

// Casts of values the test itself chose (sizes, counts, addresses).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use common::{coprocd_bin, copy_executable, need_root, MCU_RR};
use std::process::Command;

#[test]
fn a_user_finds_the_system_daemon_and_is_told_what_to_do_without_one() {
    if !need_root("mount a private /run/coproc in a mount namespace") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("coproc-test-discovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A copy uid 65534 can execute; its runtime directory has no daemon.
    let coproc = dir.join("coproc");
    copy_executable(&common::coproc_bin(), &coproc);
    std::fs::write(dir.join("coprocd.toml"), MCU_RR).unwrap();
    let xdg = dir.join("xdg");
    std::fs::create_dir_all(&xdg).unwrap();
    let user = format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups env -u COPROC_SOCKET XDG_RUNTIME_DIR={} {}",
        xdg.display(),
        coproc.display()
    );
    let script = format!(
        r"set -u
mkdir -p /run/coproc
mount -t tmpfs tmpfs /run/coproc || exit 20
# No daemon anywhere.
if {user} list 2>{d}/none.err; then exit 21; fi
{coprocd} --config {d}/coprocd.toml --socket /run/coproc/coprocd.sock 2>{d}/coprocd.err &
pid=$!
# Poll (at most 60 s) until the user's coproc reaches it.
i=0
until {user} -o json list >{d}/found.json 2>{d}/found.err; do
    i=$((i+1)); [ $i -gt 6000 ] && {{ kill $pid; exit 22; }}
    sleep 0.01
done
kill $pid; wait $pid
",
        d = dir.display(),
        coprocd = coprocd_bin().display(),
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    assert!(
        out.status.success(),
        "{:?}: {}\nnone.err: {}\nfound.err: {}\ncoprocd.err: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        read("none.err"),
        read("found.err"),
        read("coprocd.err"),
    );
    let none = read("none.err");
    let per_user = format!("{}/coproc/coprocd.sock (no such socket)", xdg.display());
    assert!(none.contains(&per_user), "{none}");
    assert!(
        none.contains("/run/coproc/coprocd.sock (no such socket)"),
        "{none}"
    );
    assert!(
        none.contains("systemctl start coprocd") && none.contains("--socket"),
        "{none}"
    );
    let found: serde_json::Value = serde_json::from_str(&read("found.json")).unwrap();
    assert_eq!(found[0]["name"], "mcu0", "{found}");
    let _ = std::fs::remove_dir_all(&dir);
}
