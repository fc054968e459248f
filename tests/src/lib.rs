//! Shared helpers for the integration and golden boot tests.

use std::path::{Path, PathBuf};

/// The static hello-world program that `build.rs` compiled.
pub fn hello_binary() -> &'static Path {
    Path::new(env!("USMOL_TEST_HELLO_BIN"))
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
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
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
}
