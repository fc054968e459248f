//! Developer workflows, run as `cargo xtask <command>`.
//!
//! Each command lives in its own module; shell calls go through
//! `xshell::cmd!`, which passes arguments without a shell in between.

mod bench;
mod build_image;
mod host_deps;
mod runtime;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "usmol developer workflows")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build every artifact (kernel, rootfs disk, OCI image, docker archive,
    /// plain tarball) into one output directory.
    BuildImage(build_image::Args),
    /// Build the statically linked runtime binaries (launcher and init).
    Runtime,
    /// Measure the artifacts in out/ (start-up, latency, sizes, memory) and
    /// write the figures into BENCHMARKS.md.
    Bench(bench::Args),
    /// Check the host packages the build and the tests need.
    HostDeps {
        /// Install the missing ones with apt-get (needs root).
        #[arg(long)]
        install: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = project_root();
    match cli.command {
        Command::BuildImage(args) => build_image::run(&root, args),
        Command::Bench(args) => bench::run(&root, args),
        Command::HostDeps { install } => host_deps::run(install, host_deps::Purpose::All),
        Command::Runtime => runtime::build(&root).map(|bins| {
            println!("launcher: {}", bins.launcher.display());
            println!("init:     {}", bins.init.display());
        }),
    }
}

/// The workspace root, wherever `cargo xtask` was started from.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_owned()
}
