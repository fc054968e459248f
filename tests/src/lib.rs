//! Shared helpers for the integration and golden boot tests.

use std::path::{Path, PathBuf};

/// The static hello-world program that `build.rs` compiled.
pub fn hello_binary() -> &'static Path {
    Path::new(env!("USMOL_TEST_HELLO_BIN"))
}

/// The static multi-call file helper (`tool append|write|cat|copy`) that
/// `build.rs` compiled.
pub fn tool_binary() -> &'static Path {
    Path::new(env!("USMOL_TEST_TOOL_BIN"))
}

/// The static program that tries to leave hostfs's confinement from inside
/// the guest (see `fixtures/hostfs_probe.c`).
pub fn hostfs_probe_binary() -> &'static Path {
    Path::new(env!("USMOL_TEST_HOSTFS_PROBE_BIN"))
}

/// The static program that reports which pages of a fresh mapping a few
/// writes made resident (`tests/fixtures/prefault_probe.c`).
pub fn prefault_probe_binary() -> &'static Path {
    Path::new(env!("USMOL_TEST_PREFAULT_PROBE_BIN"))
}

/// The static program that checks the vDSO's clocks in the guest
/// (`tests/fixtures/clock_probe.c`).
pub fn clock_probe_binary() -> &'static Path {
    Path::new(env!("USMOL_TEST_CLOCK_PROBE_BIN"))
}

/// The one switch for slow tests (kernel builds, boots, registries).
/// Returns false, after saying so, when they are not asked for.
pub fn slow_tests_enabled(test: &str) -> bool {
    let on = std::env::var_os("USMOL_SLOW_TESTS").is_some_and(|v| v == "1");
    if !on {
        eprintln!("{test}: skipped: set USMOL_SLOW_TESTS=1");
    }
    on
}

/// The workspace root.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The build output directory (`usmol/`, the tarball, the docker archive):
/// env `USMOL_OUT`, else `<workspace root>/out`. Panics with what to do when
/// it is missing, since every golden test needs it.
pub fn usmol_out() -> PathBuf {
    let out = std::env::var_os("USMOL_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("out"));
    assert!(
        out.join("usmol").join("run").is_file(),
        "{} has no usmol/run: run `cargo xtask build-image` first (or point USMOL_OUT at its output)",
        out.display()
    );
    out
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    #[test]
    fn hello_binary_prints_the_hello_message() {
        let out = Command::new(super::hello_binary()).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Hello from Docker!"), "{text}");
    }

    #[test]
    fn tool_appends_and_copies() {
        let dir = std::env::temp_dir().join(format!("usmol-tool-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("lines");
        for text in ["one", "two words"] {
            let st = Command::new(super::tool_binary())
                .arg("append")
                .arg(&file)
                .arg(text)
                .status()
                .unwrap();
            assert!(st.success());
        }
        let copy = dir.join("copy");
        let st = Command::new(super::tool_binary())
            .arg("copy")
            .arg(&file)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(st.success());
        let out = Command::new(super::tool_binary())
            .arg("cat")
            .arg(&copy)
            .output()
            .unwrap();
        let usage = Command::new(super::tool_binary())
            .arg("bogus")
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo words\n");
        assert_eq!(usage.status.code(), Some(2));
    }
}
