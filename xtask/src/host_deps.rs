//! `cargo xtask host-deps`: the Debian packages the build and the tests need
//! on the host, checked by the commands they provide, and installed on
//! request.

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

/// A host command and the Debian package that provides it.
struct Need {
    command: &'static str,
    package: &'static str,
    why: &'static str,
}

/// What the host tools are for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `cargo xtask build-image`.
    Build,
    /// Building and running the tests too.
    All,
}

/// The tools that only the tests use.
const TEST_ONLY: &[&str] = &["setpriv", "dockerd", "docker-registry"];

const NEEDS: &[Need] = &[
    // The kernel compiles in a sysroot of Debian packages (recipes/
    // toolchain.toml), so the host needs only what enters it and what
    // handles the outputs.
    Need {
        command: "cc",
        package: "gcc",
        why: "linking Rust programs, the tests' static programs",
    },
    Need {
        command: "patch",
        package: "patch",
        why: "kernel patches",
    },
    Need {
        command: "unshare",
        package: "util-linux",
        why: "entering the kernel build sysroot",
    },
    Need {
        command: "chroot",
        package: "coreutils",
        why: "entering the kernel build sysroot",
    },
    Need {
        command: "mke2fs",
        package: "e2fsprogs",
        why: "root disk image",
    },
    Need {
        command: "debugfs",
        package: "e2fsprogs",
        why: "root disk image",
    },
    Need {
        command: "e2fsck",
        package: "e2fsprogs",
        why: "root disk checks",
    },
    Need {
        command: "setpriv",
        package: "util-linux",
        why: "tests run the artifact as a normal user",
    },
    Need {
        command: "dockerd",
        package: "docker.io",
        why: "golden tests under a docker engine",
    },
    Need {
        command: "docker-registry",
        package: "docker-registry",
        why: "push/export tests against a local registry",
    },
];

fn missing(purpose: Purpose) -> Vec<&'static Need> {
    NEEDS
        .iter()
        .filter(|need| purpose == Purpose::All || !TEST_ONLY.contains(&need.command))
        .filter(|need| which(need.command).is_none())
        .collect()
}

fn which(command: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(command))
        .find(|candidate| candidate.is_file())
}

pub fn run(install: bool, purpose: Purpose) -> Result<()> {
    let missing = missing(purpose);
    if missing.is_empty() {
        if purpose == Purpose::All {
            println!("host-deps: every host tool is present");
        }
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|need| need.package).collect();
    packages.sort_unstable();
    packages.dedup();
    for need in &missing {
        eprintln!(
            "host-deps: missing `{}` (Debian package {}): {}",
            need.command, need.package, need.why
        );
    }
    if !install {
        bail!(
            "install the missing host packages with: apt-get install --no-install-recommends {}\n\
             (or run `cargo xtask host-deps --install` as root)",
            packages.join(" ")
        );
    }
    let sh = Shell::new()?;
    let _frontend = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    let package_args = packages.clone();
    cmd!(sh, "apt-get update -qq")
        .run()
        .context("apt-get update")?;
    cmd!(
        sh,
        "apt-get install -y -qq --no-install-recommends {package_args...}"
    )
    .run()
    .with_context(|| format!("apt-get install {}", packages.join(" ")))?;
    let still = missing_after_install(purpose);
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(", "));
    }
    println!("host-deps: installed {}", packages.join(" "));
    Ok(())
}

fn missing_after_install(purpose: Purpose) -> Vec<&'static str> {
    missing(purpose).iter().map(|need| need.command).collect()
}
