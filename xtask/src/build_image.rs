//! `cargo xtask build-image`: the runtime binaries, then the builder's
//! `usmol image` pipeline over them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

#[derive(clap::Args)]
pub struct Args {
    /// Output directory for every artifact.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Debian mirror (else USMOL_MIRROR, the recipe, or the host's apt sources).
    #[arg(long)]
    mirror: Option<String>,
    /// Resolve the recipes anew and rewrite their lock files.
    #[arg(long)]
    update_lock: bool,
}

pub fn run(root: &Path, args: Args) -> Result<()> {
    crate::host_deps::run(false, crate::host_deps::Purpose::Build)?;
    let bins = crate::runtime::build(root)?;
    let sh = Shell::new()?;
    sh.change_dir(root);
    let out = root.join(&args.out);
    let (launcher, init) = (&bins.launcher, &bins.init);
    let mut extra: Vec<String> = Vec::new();
    if let Some(mirror) = &args.mirror {
        extra.extend(["--mirror".into(), mirror.clone()]);
    }
    if args.update_lock {
        extra.push("--update-lock".into());
    }
    cmd!(
        sh,
        "cargo run --release --locked -p usmol -- image
            --recipe recipes/usmol.toml
            --kernel-recipe recipes/kernel.toml
            --launcher {launcher} --init {init}
            --out {out} {extra...}"
    )
    .run()
    .context("running the image pipeline (usmol image)")?;
    Ok(())
}
