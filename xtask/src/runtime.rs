//! Builds the runtime binaries (launcher and init) statically linked, in a
//! target directory of their own so the flags do not thrash the main cache.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

pub struct RuntimeBinaries {
    pub launcher: PathBuf,
    pub init: PathBuf,
}

pub fn build(root: &Path) -> Result<RuntimeBinaries> {
    let sh = Shell::new()?;
    sh.change_dir(root);
    let target_dir = root.join("target/static");
    // crt-static links glibc statically: the launcher must run in a
    // `FROM scratch` image and init must not depend on the guest's libc.
    let _flags = sh.push_env("RUSTFLAGS", "-C target-feature=+crt-static");
    let _dir = sh.push_env("CARGO_TARGET_DIR", &target_dir);
    cmd!(
        sh,
        "cargo build --profile runtime --locked --target {TARGET} -p usmol-init -p usmol-launcher"
    )
    .run()
    .context("building the static runtime binaries (usmol-init, usmol-launcher)")?;
    let bin = |name: &str| target_dir.join(TARGET).join("runtime").join(name);
    let bins = RuntimeBinaries {
        launcher: bin("usmol-launcher"),
        init: bin("usmol-init"),
    };
    for path in [&bins.launcher, &bins.init] {
        anyhow::ensure!(path.is_file(), "cargo did not produce {}", path.display());
    }
    Ok(bins)
}
