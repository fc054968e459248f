//! The toolchain that builds the kernel: a preflight that names every
//! missing tool with the Debian package providing it, and an identity
//! string (compiler and linker versions) that goes into the cache key.
//!
//! [`Toolchain::Sysroot`] is a root filesystem holding the same tools
//! (assembled by the rootfs builder from a toolchain recipe); its tools are
//! looked up and identified inside it, and the build runs chrooted into it
//! (see `crate::run`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// Where the compiler, make and friends come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Toolchain {
    /// The host's `PATH`.
    Host,
    /// A root filesystem with the tools in `/usr/bin`, entered with chroot.
    Sysroot(PathBuf),
}

/// Where the sysroot assembled from a toolchain lock lives in the cache:
/// keyed by the sha256 of every package in it, so a changed lock makes a
/// new sysroot. Its tree is `<entry>/root`.
pub fn sysroot_entry<'a>(
    cache_dir: &Path,
    package_sha256s: impl IntoIterator<Item = &'a str>,
) -> PathBuf {
    use sha2::Digest;
    let mut ids: Vec<&str> = package_sha256s.into_iter().collect();
    ids.sort_unstable();
    let key = hex::encode(sha2::Sha256::digest(ids.join("\n").as_bytes()));
    cache_dir.join("toolchain").join(&key[..32])
}

/// A tool the build cannot do without.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The command or file looked for.
    pub what: String,
    /// The Debian package that provides it.
    pub package: &'static str,
}

/// Commands `make ARCH=um linux` runs, and their Debian packages.
pub const TOOLS: &[(&str, &str)] = &[
    ("gcc", "gcc"),
    ("make", "make"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("perl", "perl"),
    ("ld", "binutils"),
    ("strip", "binutils"),
    ("awk", "mawk"),
    ("sh", "dash"),
];

/// Host commands needed whatever the toolchain: patches apply on the host.
const HOST_TOOLS: &[(&str, &str)] = &[("patch", "patch")];

/// Host commands that enter a sysroot.
const SYSROOT_HOST_TOOLS: &[(&str, &str)] = &[("unshare", "util-linux"), ("sh", "dash")];

/// Directories searched for tools inside a sysroot.
const SYSROOT_BIN: &[&str] = &["usr/local/bin", "usr/bin", "bin"];

impl Toolchain {
    /// Fails naming every missing tool and the packages to install.
    pub fn preflight(&self) -> Result<()> {
        if let Toolchain::Sysroot(root) = self
            && !root.join("usr/bin").is_dir()
        {
            return Err(Error::Sysroot {
                path: root.clone(),
                reason: "no usr/bin inside; build it from the toolchain recipe first".into(),
            });
        }
        let mut missing: Vec<Missing> = TOOLS
            .iter()
            .filter(|(cmd, _)| self.find(cmd).is_none())
            .map(|(cmd, pkg)| Missing {
                what: (*cmd).to_string(),
                package: pkg,
            })
            .collect();
        let host_tools = match self {
            Toolchain::Host => HOST_TOOLS.to_vec(),
            Toolchain::Sysroot(_) => [HOST_TOOLS, SYSROOT_HOST_TOOLS].concat(),
        };
        for (cmd, pkg) in host_tools {
            if Toolchain::Host.find(cmd).is_none() && !missing.iter().any(|m| m.what == cmd) {
                let what = match self {
                    Toolchain::Host => cmd.to_string(),
                    Toolchain::Sysroot(_) => format!("{cmd} (on the host)"),
                };
                missing.push(Missing { what, package: pkg });
            }
        }
        // CONFIG_STATIC_LINK links the kernel against the static C library.
        if !self.has_static_libc() {
            missing.push(Missing {
                what: "libc.a (static C library)".into(),
                package: "libc6-dev",
            });
        }
        if missing.is_empty() {
            return Ok(());
        }
        let mut packages: Vec<String> = missing.iter().map(|m| m.package.to_string()).collect();
        packages.sort();
        packages.dedup();
        Err(Error::Toolchain { missing, packages })
    }

    /// Absolute path of a command (inside the sysroot for `Sysroot`).
    pub fn find(&self, cmd: &str) -> Option<PathBuf> {
        match self {
            Toolchain::Host => {
                let path = std::env::var_os("PATH")?;
                std::env::split_paths(&path)
                    .map(|d| d.join(cmd))
                    .find(|p| is_executable(p))
            }
            Toolchain::Sysroot(root) => SYSROOT_BIN
                .iter()
                .map(|d| root.join(d).join(cmd))
                .find(|p| is_executable(p)),
        }
    }

    fn has_static_libc(&self) -> bool {
        match self {
            Toolchain::Host => Command::new("gcc")
                .arg("-print-file-name=libc.a")
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                // gcc echoes the bare name when it finds no such file.
                .is_some_and(|p| Path::new(p.trim()).is_absolute()),
            Toolchain::Sysroot(root) => [
                "usr/lib/x86_64-linux-gnu/libc.a",
                "usr/lib/libc.a",
                "usr/lib64/libc.a",
            ]
            .iter()
            .any(|p| root.join(p).is_file()),
        }
    }

    /// Compiler and linker versions: a toolchain change must rebuild.
    pub fn identity(&self) -> String {
        let mut id = match self {
            Toolchain::Host => "host".to_string(),
            Toolchain::Sysroot(root) => format!("sysroot:{}", root.display()),
        };
        for tool in ["gcc", "ld"] {
            let version = match self {
                Toolchain::Host => first_line(Command::new(tool).arg("--version")),
                Toolchain::Sysroot(root) => first_line(
                    crate::run::enter_sysroot(root)
                        .arg("chroot")
                        .arg(root)
                        .arg(tool)
                        .arg("--version"),
                ),
            };
            id.push_str(&format!(
                "\n{tool}: {}",
                version.unwrap_or_else(|| "absent".into())
            ));
        }
        id
    }
}

fn first_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_sysroot_names_every_tool_and_package() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        let make = dir.path().join("usr/bin/make");
        std::fs::write(&make, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&make, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let err = Toolchain::Sysroot(dir.path().to_path_buf())
            .preflight()
            .unwrap_err();
        let Error::Toolchain { missing, packages } = &err else {
            panic!("{err}")
        };
        assert!(missing.iter().all(|m| m.what != "make"));
        assert!(
            missing
                .iter()
                .any(|m| m.what == "flex" && m.package == "flex")
        );
        assert!(missing.iter().any(|m| m.package == "libc6-dev"));
        assert_eq!(
            packages,
            &[
                "bc",
                "binutils",
                "bison",
                "dash",
                "flex",
                "gcc",
                "libc6-dev",
                "mawk",
                "perl"
            ]
        );
        let text = err.to_string();
        assert!(text.contains("apt-get install bc binutils bison"), "{text}");
    }

    #[test]
    fn sysroot_without_usr_bin_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = Toolchain::Sysroot(dir.path().to_path_buf())
            .preflight()
            .unwrap_err();
        assert!(err.to_string().contains("no usr/bin"), "{err}");
    }
}
