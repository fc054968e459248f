//! Which Debian mirror to talk to.
//!
//! The mirror is configuration, never code. It is taken, in this order, from
//! the `--mirror` flag, the `USMOL_MIRROR` environment variable, the recipe's
//! `distribution.mirror`, and finally the host's apt sources: the first `deb`
//! entry that points at a Debian archive (security archives and third-party
//! repositories are skipped), read from `/etc/apt/sources.list` and then
//! `/etc/apt/sources.list.d/*.list` and `*.sources` in name order, the order
//! apt itself uses.

use std::fmt;
use std::path::{Path, PathBuf};

use usmol_recipe::Recipe;

use crate::{Error, Result};

/// The environment variable naming the mirror.
pub const MIRROR_ENV: &str = "USMOL_MIRROR";

/// A mirror base URL (the directory holding `dists/` and `pool/`), without a
/// trailing slash, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub url: String,
    pub origin: MirrorOrigin,
}

/// Where the mirror URL was configured; shown in errors so a wrong mirror
/// can be traced to its setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorOrigin {
    Flag,
    Env,
    Recipe,
    AptSources(PathBuf),
}

impl fmt::Display for MirrorOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MirrorOrigin::Flag => f.write_str("--mirror"),
            MirrorOrigin::Env => write!(f, "${MIRROR_ENV}"),
            MirrorOrigin::Recipe => f.write_str("recipe distribution.mirror"),
            MirrorOrigin::AptSources(path) => write!(f, "apt source {}", path.display()),
        }
    }
}

impl Mirror {
    /// A mirror from a URL, validated: only http and https are fetched.
    pub fn new(url: &str, origin: MirrorOrigin) -> Result<Self> {
        let url = url.trim().trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.contains(char::is_whitespace)
        {
            return Err(Error::BadMirror {
                url: url.to_owned(),
                origin: origin.to_string(),
                message: "a mirror must be an http:// or https:// URL of the directory holding dists/ and pool/".into(),
            });
        }
        Ok(Mirror {
            url: url.to_owned(),
            origin,
        })
    }

    /// The URL of a path below the mirror root, e.g. `dists/trixie/InRelease`.
    pub fn join(&self, path: &str) -> String {
        format!("{}/{}", self.url, path.trim_start_matches('/'))
    }
}

/// Picks the mirror: flag, then `USMOL_MIRROR`, then the recipe, then the
/// host's apt sources below `/etc/apt`.
pub fn resolve_mirror(flag: Option<&str>, recipe: &Recipe) -> Result<Mirror> {
    let env = std::env::var(MIRROR_ENV).ok();
    resolve_mirror_from(flag, env.as_deref(), recipe, Path::new("/etc/apt"))
}

/// [`resolve_mirror`] with the environment value and the apt directory
/// passed in, so the order can be tested without touching the host.
pub fn resolve_mirror_from(
    flag: Option<&str>,
    env: Option<&str>,
    recipe: &Recipe,
    apt_dir: &Path,
) -> Result<Mirror> {
    resolve_configured(flag, env, recipe.distribution.mirror.as_deref(), apt_dir)
}

/// [`resolve_mirror`] for a recipe whose mirror setting is `recipe_mirror`
/// (a source recipe has no [`Recipe`]): same order.
pub fn resolve_mirror_for(flag: Option<&str>, recipe_mirror: Option<&str>) -> Result<Mirror> {
    let env = std::env::var(MIRROR_ENV).ok();
    resolve_configured(flag, env.as_deref(), recipe_mirror, Path::new("/etc/apt"))
}

fn resolve_configured(
    flag: Option<&str>,
    env: Option<&str>,
    recipe_mirror: Option<&str>,
    apt_dir: &Path,
) -> Result<Mirror> {
    if let Some(url) = flag {
        return Mirror::new(url, MirrorOrigin::Flag);
    }
    if let Some(url) = env.filter(|v| !v.trim().is_empty()) {
        return Mirror::new(url, MirrorOrigin::Env);
    }
    if let Some(url) = recipe_mirror {
        return Mirror::new(url, MirrorOrigin::Recipe);
    }
    let mut searched = Vec::new();
    for (path, entries) in read_apt_sources(apt_dir)? {
        if let Some(entry) = entries.iter().find(|e| e.is_debian_archive()) {
            return Mirror::new(&entry.uri, MirrorOrigin::AptSources(path));
        }
        searched.push(path.display().to_string());
    }
    Err(Error::NoMirror {
        detail: if searched.is_empty() {
            format!("no apt sources found below {}", apt_dir.display())
        } else {
            format!("no Debian archive entry in {}", searched.join(", "))
        },
    })
}

/// One `deb` line or deb822 stanza, flattened to one URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
}

/// Debian's release names and aliases; a source whose suites are all outside
/// this list (`nodistro`, `cloud-sdk-bookworm`...) is some other vendor's.
const DEBIAN_SUITES: &[&str] = &[
    "sid",
    "unstable",
    "experimental",
    "rc-buggy",
    "testing",
    "stable",
    "oldstable",
    "oldoldstable",
    "buzz",
    "rex",
    "bo",
    "hamm",
    "slink",
    "potato",
    "woody",
    "sarge",
    "etch",
    "lenny",
    "squeeze",
    "wheezy",
    "jessie",
    "stretch",
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
];

impl AptSource {
    /// A Debian archive entry: a Debian suite (or a URL ending in `/debian`)
    /// that is not the security archive, which holds only a few packages.
    pub fn is_debian_archive(&self) -> bool {
        let security = self.uri.contains("security")
            || self
                .suites
                .iter()
                .any(|s| s.ends_with("-security") || s.ends_with("/updates"));
        let debian_suite = self.suites.iter().any(|s| {
            let base = s.split(['-', '/']).next().unwrap_or(s);
            DEBIAN_SUITES.contains(&base)
        });
        let debian_path = self.uri.trim_end_matches('/').ends_with("/debian");
        !security && (debian_suite || debian_path) && self.uri.starts_with("http")
    }
}

/// The host's apt source files in apt's order, each with its `deb` entries.
fn read_apt_sources(apt_dir: &Path) -> Result<Vec<(PathBuf, Vec<AptSource>)>> {
    let mut files = Vec::new();
    let main = apt_dir.join("sources.list");
    if main.is_file() {
        files.push(main);
    }
    let dir = apt_dir.join("sources.list.d");
    if let Ok(read_dir) = std::fs::read_dir(&dir) {
        let mut names: Vec<PathBuf> = read_dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            // Only these two suffixes count: apt ignores `*.disabled` and friends.
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("list" | "sources")
                )
            })
            .collect();
        names.sort();
        files.extend(names);
    }
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            stage: "reading apt sources",
            source,
        })?;
        let entries = if path.extension().is_some_and(|e| e == "sources") {
            parse_deb822_sources(&text)
        } else {
            parse_sources_list(&text)
        };
        out.push((path, entries));
    }
    Ok(out)
}

/// Parses the one-line format: `deb [opt=val ...] URI suite [component...]`.
pub fn parse_sources_list(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            let Some(end) = rest.find(']') else { continue };
            rest = &rest[end + 1..];
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(AptSource {
            uri: uri.trim_end_matches('/').to_owned(),
            suites: vec![suite.to_owned()],
            components: words.map(str::to_owned).collect(),
        });
    }
    out
}

/// Parses the deb822 format (`Types:`, `URIs:`, `Suites:`, `Components:`,
/// `Enabled:`), one entry per URI of each enabled `deb` stanza.
pub fn parse_deb822_sources(text: &str) -> Vec<AptSource> {
    // Comment lines are dropped first: in apt's deb822 they may sit inside a stanza.
    let cleaned: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut out = Vec::new();
    for stanza in crate::deb822::parse(&cleaned) {
        let words = |field: &str| -> Vec<String> {
            stanza
                .get(field)
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        if !words("Types").iter().any(|t| t == "deb") {
            continue;
        }
        if stanza
            .get("Enabled")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("no"))
        {
            continue;
        }
        for uri in words("URIs") {
            out.push(AptSource {
                uri: uri.trim_end_matches('/').to_owned(),
                suites: words("Suites"),
                components: words("Components"),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(mirror: Option<&str>) -> Recipe {
        let mut text = String::from("[distribution]\nsuites = [\"trixie\"]\n");
        if let Some(m) = mirror {
            text.push_str(&format!("mirror = \"{m}\"\n"));
        }
        text.push_str("[packages]\ninclude = [\"tini\"]\n");
        Recipe::parse(Path::new("r.toml"), &text).unwrap()
    }

    /// A stand-in mirror address for parser input, never contacted:
    /// loopback address `127.0.0.<n>` with `scheme`.
    fn at(scheme: &str, n: u8) -> String {
        format!("{scheme}://{}", std::net::Ipv4Addr::new(127, 0, 0, n))
    }

    fn http(n: u8) -> String {
        at("http", n)
    }

    fn list() -> String {
        format!(
            "\
# deb {h10}/debian trixie main
deb-src {h1}/debian trixie main
deb {s11}/apt cloud-sdk-bookworm main
deb {h1}/debian-security trixie-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] {h1}/debian/ trixie main contrib
deb {h2}/debian trixie main
",
            h1 = http(1),
            h10 = http(10),
            h2 = http(2),
            s11 = at("https", 11)
        )
    }

    fn sources() -> String {
        format!(
            "\
Types: deb
URIs: {h12}/debian
Suites: trixie
Components: main
Enabled: no

Types: deb deb-src
# a comment inside a stanza
URIs: {h1}/debian {h3}/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {h1}/debian-security
Suites: bookworm-security
Components: main
",
            h1 = http(1),
            h12 = http(12),
            h3 = http(3)
        )
    }

    #[test]
    fn one_line_format_skips_sources_comments_vendors_and_security() {
        let entries = parse_sources_list(&list());
        let first = entries.iter().find(|e| e.is_debian_archive()).unwrap();
        assert_eq!(first.uri, format!("{}/debian", http(1)));
        assert_eq!(first.suites, ["trixie"]);
        assert_eq!(first.components, ["main", "contrib"]);
        assert_eq!(entries.len(), 4);
    }

    #[test]
    fn deb822_format_skips_disabled_stanzas_and_security() {
        let entries = parse_deb822_sources(&sources());
        assert_eq!(entries.len(), 3, "{entries:?}");
        let first = entries.iter().find(|e| e.is_debian_archive()).unwrap();
        assert_eq!(first.uri, format!("{}/debian", http(1)));
        assert_eq!(first.suites, ["bookworm", "bookworm-updates"]);
        assert!(!entries[2].is_debian_archive());
    }

    #[test]
    fn third_party_repositories_are_not_debian() {
        let vendor = AptSource {
            uri: format!("{}/node_20.x", at("https", 11)),
            suites: vec!["nodistro".into()],
            components: vec!["main".into()],
        };
        assert!(!vendor.is_debian_archive());
    }

    fn apt_dir(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "usmol-apt-{}-{}",
            std::process::id(),
            files.iter().map(|f| f.0.len()).sum::<usize>() + files.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sources.list.d")).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn order_is_flag_env_recipe_apt() {
        let dir = apt_dir(&[("sources.list.d/debian.sources", &sources())]);
        let r = recipe(Some(format!("{}/debian", http(4)).as_str()));
        let m = resolve_mirror_from(
            Some(format!("{}/debian/", http(5)).as_str()),
            Some(format!("{}/debian", http(6)).as_str()),
            &r,
            &dir,
        )
        .unwrap();
        assert_eq!(
            (m.url.as_str(), m.origin),
            (format!("{}/debian", http(5)).as_str(), MirrorOrigin::Flag)
        );
        let m = resolve_mirror_from(None, Some(format!("{}/debian", http(6)).as_str()), &r, &dir)
            .unwrap();
        assert_eq!(m.origin, MirrorOrigin::Env);
        let m = resolve_mirror_from(None, None, &r, &dir).unwrap();
        assert_eq!(
            (m.url.as_str(), m.origin),
            (format!("{}/debian", http(4)).as_str(), MirrorOrigin::Recipe)
        );
        let m = resolve_mirror_from(None, None, &recipe(None), &dir).unwrap();
        assert_eq!(m.url, format!("{}/debian", http(1)));
        assert_eq!(
            m.origin,
            MirrorOrigin::AptSources(dir.join("sources.list.d/debian.sources"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn disabled_files_are_ignored_and_missing_mirror_names_the_settings() {
        let dir = apt_dir(&[
            ("sources.list.d/debian.sources.disabled", &sources()),
            (
                "sources.list.d/vendor.list",
                &format!("deb {}/apt cloud-sdk-bookworm main\n", at("https", 11)),
            ),
        ]);
        let msg = resolve_mirror_from(None, None, &recipe(None), &dir)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("--mirror") && msg.contains("USMOL_MIRROR"),
            "{msg}"
        );
        assert!(msg.contains("vendor.list"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sources_list_comes_before_sources_list_d() {
        let dir = apt_dir(&[
            (
                "sources.list",
                &format!("deb {}/debian trixie main\n", http(7)),
            ),
            (
                "sources.list.d/a.list",
                &format!("deb {}/debian trixie main\n", http(3)),
            ),
        ]);
        let m = resolve_mirror_from(None, None, &recipe(None), &dir).unwrap();
        assert_eq!(m.url, format!("{}/debian", http(7)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn non_http_mirror_is_refused() {
        let err = resolve_mirror_from(
            Some(format!("{}/debian", at("ftp", 8)).as_str()),
            None,
            &recipe(None),
            Path::new("/nonexistent"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--mirror"), "{err}");
    }
}
