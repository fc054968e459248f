//! The declarative inputs of a build: recipes (`recipes/*.toml`) and the lock
//! files beside them (`recipes/*.lock`).
//!
//! Both are typed serde models with `deny_unknown_fields`, so a misspelt key
//! is an error that names the file, line and column instead of a silent no-op.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors while reading or writing a recipe or a lock file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A recipe: which Debian suite, which packages, and how to shape the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub distribution: Distribution,
    pub packages: Packages,
    #[serde(default)]
    pub rootfs: Rootfs,
}

/// Where packages come from. The mirror is deliberately optional: it is
/// configuration (flag, environment, recipe, host apt sources), never code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distribution {
    /// Suites searched in order, e.g. `["trixie"]` or
    /// `["trixie", "trixie-backports"]`. A package is taken from the first
    /// suite that has a version satisfying the constraints, unless `pin` says
    /// otherwise.
    pub suites: Vec<String>,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    #[serde(default = "default_architecture")]
    pub architecture: String,
    /// Mirror base URL (the directory holding `dists/` and `pool/`).
    #[serde(default)]
    pub mirror: Option<String>,
    /// Package name -> suite it must come from (e.g. a backport).
    #[serde(default)]
    pub pin: std::collections::BTreeMap<String, String>,
    /// Refuse a Release past its `Valid-Until` (the default). `false`, like
    /// apt's `Check-Valid-Until=no`, accepts one from a snapshot mirror; the
    /// signature and rollback checks still apply. Meant for tool trees the
    /// tests use, not for the shipped image.
    #[serde(default = "yes")]
    pub check_valid_until: bool,
}

fn yes() -> bool {
    true
}

fn default_components() -> Vec<String> {
    vec!["main".to_owned()]
}

fn default_architecture() -> String {
    "amd64".to_owned()
}

/// The package selection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    /// Packages asked for by name; their dependencies follow.
    pub include: Vec<String>,
    /// Also install the suite's `Essential: yes` set (minus `exclude`).
    #[serde(default)]
    pub essential: bool,
    /// Never installed; a dependency on one of these counts as satisfied.
    /// For packages only maintainer scripts need (adduser, debconf...).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Preferred providers when a dependency has alternatives or names a
    /// virtual package, e.g. `["libelogind0"]`.
    #[serde(default)]
    pub prefer: Vec<String>,
}

/// How the unpacked packages are shaped into the final tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rootfs {
    /// Glob patterns (absolute, `*` and `**`) of paths dropped at extraction.
    #[serde(default)]
    pub path_exclude: Vec<String>,
    /// Exceptions to `path_exclude` (e.g. copyright files).
    #[serde(default)]
    pub path_include: Vec<String>,
    /// Which iptables backend `update-alternatives` would have chosen.
    #[serde(default)]
    pub iptables: Option<IptablesBackend>,
    /// System groups to create beyond root's (e.g. `docker`).
    #[serde(default)]
    pub groups: Vec<Group>,
    /// System users to create beyond root.
    #[serde(default)]
    pub users: Vec<User>,
    /// Extra `update-alternatives` links: link path -> target path.
    #[serde(default)]
    pub alternatives: std::collections::BTreeMap<String, String>,
    /// Regular files written last to the root disk, in this order (absolute
    /// paths). The image layer and the plain tarball are compressed with a
    /// bounded window, so big files that share content compress much
    /// better when they sit next to each other.
    #[serde(default)]
    pub disk_tail: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IptablesBackend {
    Legacy,
    Nft,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default = "default_home")]
    pub home: String,
    #[serde(default = "default_shell")]
    pub shell: String,
}

fn default_home() -> String {
    "/nonexistent".to_owned()
}

fn default_shell() -> String {
    "/usr/sbin/nologin".to_owned()
}

/// The lock file beside a recipe: every package pinned, and the Release
/// files they were resolved from. A build with a lock never resolves anew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Format version of this file.
    pub version: u32,
    /// sha256 of the recipe the lock was resolved from; a mismatch means the
    /// recipe changed and the lock must be refreshed with `--update-lock`.
    pub recipe_sha256: String,
    #[serde(rename = "release")]
    pub releases: Vec<LockedRelease>,
    #[serde(rename = "package")]
    pub packages: Vec<LockedPackage>,
}

pub const LOCK_VERSION: u32 = 1;

/// A Release the lock was resolved against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedRelease {
    pub suite: String,
    pub codename: String,
    /// The `Date:` field, verbatim (RFC 2822); an InRelease older than this
    /// is refused as a rollback.
    pub date: String,
    /// sha256 of the InRelease file as fetched.
    pub inrelease_sha256: String,
}

/// One pinned package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Source package name (without version).
    pub source: String,
    pub source_version: String,
    /// Suite it was resolved from.
    pub suite: String,
    /// Path below the mirror root, e.g. `pool/main/t/tini/tini_0.19.0-1_amd64.deb`.
    pub filename: String,
    pub sha256: String,
    pub size: u64,
}

/// A recipe pinning one Debian *source* package that usmol builds itself
/// (e.g. `recipes/passt.toml`), rather than binary packages to install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRecipe {
    pub distribution: SourceDistribution,
    pub source: SourcePin,
}

/// Where the source package is listed: one suite's `Sources` index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceDistribution {
    pub suite: String,
    #[serde(default = "default_component")]
    pub component: String,
    /// Mirror base URL; configuration, as in [`Distribution::mirror`].
    #[serde(default)]
    pub mirror: Option<String>,
}

fn default_component() -> String {
    "main".to_owned()
}

/// The source package and the exact version wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcePin {
    pub package: String,
    /// Exact Debian version, e.g. `0.0~git20250503.587980c-2+deb13u1`.
    pub version: String,
}

/// The lock beside a [`SourceRecipe`]: the Release it was resolved against
/// and every file of the source package with its sha256 from `Sources`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceLock {
    pub version: u32,
    pub recipe_sha256: String,
    pub release: LockedRelease,
    pub source: LockedSource,
}

/// One resolved source package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedSource {
    pub package: String,
    pub version: String,
    /// Pool directory below the mirror root, e.g. `pool/main/p/passt`.
    pub directory: String,
    #[serde(rename = "file")]
    pub files: Vec<LockedSourceFile>,
}

/// A file of a source package (`.dsc`, `.orig.tar.*`, `.debian.tar.*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedSourceFile {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

impl SourceRecipe {
    pub fn load(path: &Path) -> Result<Self> {
        let text = read(path)?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let recipe: SourceRecipe = parse_toml(path, text)?;
        let invalid = |message: String| Error::Invalid {
            path: path.to_owned(),
            message,
        };
        for (field, value) in [
            ("distribution.suite", &recipe.distribution.suite),
            ("source.package", &recipe.source.package),
            ("source.version", &recipe.source.version),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(format!("{field} is empty")));
            }
        }
        Ok(recipe)
    }
}

impl SourceLock {
    pub fn load(path: &Path) -> Result<Self> {
        let text = read(path)?;
        let lock: SourceLock = parse_toml(path, &text)?;
        if lock.version != LOCK_VERSION {
            return Err(Error::Invalid {
                path: path.to_owned(),
                message: format!(
                    "lock format version {} is not supported (expected {LOCK_VERSION}); refresh it with --update-lock",
                    lock.version
                ),
            });
        }
        Ok(lock)
    }

    /// Writes the lock atomically (temp file + rename), files sorted.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut lock = self.clone();
        lock.source.files.sort();
        let text = toml::to_string_pretty(&lock).map_err(|e| Error::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        write_atomically(path, &text)
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("lock.tmp");
    let write_err = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::write(&tmp, text).map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|span| line_column(text, span.start))
            .unwrap_or((0, 0));
        Error::Parse {
            path: path.to_owned(),
            line,
            column,
            message: e.message().to_owned(),
        }
    })
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl Recipe {
    /// Reads and validates a recipe file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = read(path)?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let recipe: Recipe = parse_toml(path, text)?;
        recipe.validate(path)?;
        Ok(recipe)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let invalid = |message: String| Error::Invalid {
            path: path.to_owned(),
            message,
        };
        if self.distribution.suites.is_empty() {
            return Err(invalid(
                "distribution.suites is empty: name at least one suite, e.g. [\"trixie\"]".into(),
            ));
        }
        if self.packages.include.is_empty() {
            return Err(invalid(
                "packages.include is empty: name the packages to install".into(),
            ));
        }
        for (package, suite) in &self.distribution.pin {
            if !self.distribution.suites.contains(suite) {
                return Err(invalid(format!(
                    "distribution.pin.{package} = {suite:?} names a suite missing from distribution.suites"
                )));
            }
        }
        for pattern in self
            .rootfs
            .path_exclude
            .iter()
            .chain(&self.rootfs.path_include)
        {
            if !pattern.starts_with('/') {
                return Err(invalid(format!(
                    "rootfs path pattern {pattern:?} must be absolute (start with '/')"
                )));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for path in &self.rootfs.disk_tail {
            if !path.starts_with('/') || path.contains('*') {
                return Err(invalid(format!(
                    "rootfs.disk_tail entry {path:?} must be an absolute path without globs"
                )));
            }
            if !seen.insert(path) {
                return Err(invalid(format!(
                    "rootfs.disk_tail names {path:?} twice; list each file once"
                )));
            }
        }
        Ok(())
    }
}

impl Lock {
    pub fn load(path: &Path) -> Result<Self> {
        let text = read(path)?;
        let lock: Lock = parse_toml(path, &text)?;
        if lock.version != LOCK_VERSION {
            return Err(Error::Invalid {
                path: path.to_owned(),
                message: format!(
                    "lock format version {} is not supported (expected {LOCK_VERSION}); refresh it with --update-lock",
                    lock.version
                ),
            });
        }
        Ok(lock)
    }

    /// Writes the lock atomically (temp file + rename), packages sorted.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut lock = self.clone();
        lock.packages.sort();
        let text = toml::to_string_pretty(&lock).map_err(|e| Error::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        write_atomically(path, &text)
    }

    /// The conventional lock path beside a recipe: `x.toml` -> `x.lock`.
    pub fn path_for(recipe: &Path) -> PathBuf {
        recipe.with_extension("lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[distribution]
suites = ["trixie"]

[packages]
include = ["tini"]
"#;

    #[test]
    fn minimal_recipe_parses_with_defaults() {
        let r = Recipe::parse(Path::new("r.toml"), MINIMAL).unwrap();
        assert_eq!(r.distribution.components, ["main"]);
        assert_eq!(r.distribution.architecture, "amd64");
        assert!(!r.packages.essential);
    }

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let text = format!("{MINIMAL}\n[rootfs]\npath_exlude = []\n");
        let err = Recipe::parse(Path::new("recipes/x.toml"), &text).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("recipes/x.toml:9:1: unknown field `path_exlude`"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_type_is_reported() {
        let text = MINIMAL.replace("[\"tini\"]", "\"tini\"");
        let msg = Recipe::parse(Path::new("r.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("r.toml:6:11: invalid type"), "{msg}");
    }

    #[test]
    fn relative_path_pattern_is_refused() {
        let text = format!("{MINIMAL}\n[rootfs]\npath_exclude = [\"usr/share/doc\"]\n");
        let msg = Recipe::parse(Path::new("r.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("must be absolute"), "{msg}");
    }

    #[test]
    fn disk_tail_wants_distinct_absolute_paths() {
        let parse = |list: &str| {
            let text = format!("{MINIMAL}\n[rootfs]\ndisk_tail = {list}\n");
            Recipe::parse(Path::new("r.toml"), &text).map_err(|e| e.to_string())
        };
        let ok = parse(r#"["/usr/bin/b", "/usr/bin/a"]"#).unwrap();
        assert_eq!(ok.rootfs.disk_tail, ["/usr/bin/b", "/usr/bin/a"]);
        let msg = parse(r#"["usr/bin/a"]"#).unwrap_err();
        assert!(msg.contains("disk_tail entry \"usr/bin/a\""), "{msg}");
        let msg = parse(r#"["/usr/bin/*"]"#).unwrap_err();
        assert!(msg.contains("without globs"), "{msg}");
        let msg = parse(r#"["/usr/bin/a", "/usr/bin/a"]"#).unwrap_err();
        assert!(msg.contains("twice"), "{msg}");
    }

    #[test]
    fn source_recipe_and_lock_round_trip() {
        let text = "[distribution]\nsuite = \"trixie\"\n\n[source]\npackage = \"passt\"\nversion = \"1-1\"\n";
        let r = SourceRecipe::parse(Path::new("p.toml"), text).unwrap();
        assert_eq!(r.distribution.component, "main");
        let err = SourceRecipe::parse(Path::new("p.toml"), &text.replace("version", "versoin"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("p.toml:6:1: unknown field `versoin`"),
            "{err}"
        );
        let err = SourceRecipe::parse(Path::new("p.toml"), &text.replace("\"1-1\"", "\"\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("source.version is empty"), "{err}");

        let dir = tempfile_dir("source-lock");
        let path = dir.join("p.lock");
        let lock = SourceLock {
            version: LOCK_VERSION,
            recipe_sha256: "00".into(),
            release: LockedRelease {
                suite: "trixie".into(),
                codename: "trixie".into(),
                date: "Sat, 21 Nov 2026 09:15:44 UTC".into(),
                inrelease_sha256: "11".into(),
            },
            source: LockedSource {
                package: "passt".into(),
                version: "1-1".into(),
                directory: "pool/main/p/passt".into(),
                files: vec![LockedSourceFile {
                    name: "passt_1-1.dsc".into(),
                    sha256: "22".into(),
                    size: 3,
                }],
            },
        };
        lock.save(&path).unwrap();
        assert_eq!(SourceLock::load(&path).unwrap(), lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("usmol-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn lock_round_trips() {
        let dir = std::env::temp_dir().join(format!("usmol-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.lock");
        let lock = Lock {
            version: LOCK_VERSION,
            recipe_sha256: "00".into(),
            releases: vec![LockedRelease {
                suite: "trixie".into(),
                codename: "trixie".into(),
                date: "Sat, 21 Nov 2026 09:15:44 UTC".into(),
                inrelease_sha256: "11".into(),
            }],
            packages: vec![LockedPackage {
                name: "tini".into(),
                version: "0.19.0-1".into(),
                architecture: "amd64".into(),
                source: "tini".into(),
                source_version: "0.19.0-1".into(),
                suite: "trixie".into(),
                filename: "pool/main/t/tini/tini_0.19.0-1_amd64.deb".into(),
                sha256: "22".into(),
                size: 1,
            }],
        };
        lock.save(&path).unwrap();
        assert_eq!(Lock::load(&path).unwrap(), lock);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
