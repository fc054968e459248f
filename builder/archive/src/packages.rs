//! Binary package indexes (`Packages`) and the dependency relations in them.

use std::fmt;

use debversion::Version;

use crate::{Error, Result};

/// A version comparison operator of a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<<" => Op::Lt,
            "<=" | "<" => Op::Le, // `<` and `>` are obsolete spellings of <= and >=.
            "=" => Op::Eq,
            ">=" | ">" => Op::Ge,
            ">>" => Op::Gt,
            _ => return None,
        })
    }

    pub fn matches(self, have: &Version, want: &Version) -> bool {
        match self {
            Op::Lt => have < want,
            Op::Le => have <= want,
            Op::Eq => have == want,
            Op::Ge => have >= want,
            Op::Gt => have > want,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Lt => "<<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">>",
        })
    }
}

/// One relation: `name[:arch] [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub name: String,
    /// Architecture qualifier: `any`, `native` or an architecture name.
    pub arch: Option<String>,
    pub constraint: Option<(Op, Version)>,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(a) = &self.arch {
            write!(f, ":{a}")?;
        }
        if let Some((op, v)) = &self.constraint {
            write!(f, " ({op} {v})")?;
        }
        Ok(())
    }
}

/// `a | b (>= 1)`: any one alternative satisfies it.
pub type Alternatives = Vec<Relation>;

/// Displays alternatives as written in a control file.
pub fn display_alternatives(alts: &[Relation]) -> String {
    alts.iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn parse_version(s: &str) -> std::result::Result<Version, String> {
    s.trim()
        .parse::<Version>()
        .map_err(|e| format!("bad version {s:?}: {e:?}"))
}

/// Parses one relation, e.g. `libc6 (>= 2.34)` or `python3:any`.
pub fn parse_relation(text: &str) -> std::result::Result<Relation, String> {
    let text = text.trim();
    let (head, constraint) = match text.find('(') {
        Some(open) => {
            let close = text[open..]
                .find(')')
                .ok_or_else(|| format!("unclosed '(' in {text:?}"))?
                + open;
            let inner = text[open + 1..close].trim();
            let split = inner
                .find(|c: char| !matches!(c, '<' | '>' | '='))
                .unwrap_or(inner.len());
            let op = Op::parse(inner[..split].trim())
                .ok_or_else(|| format!("bad operator in {text:?}"))?;
            (
                text[..open].trim(),
                Some((op, parse_version(&inner[split..])?)),
            )
        }
        // Arch restrictions `[...]` and build profiles `<...>` only occur in
        // source relations; they are cut off here if present.
        None => (text.split(['[', '<']).next().unwrap_or(text).trim(), None),
    };
    let (name, arch) = match head.split_once(':') {
        Some((n, a)) => (n.trim(), Some(a.trim().to_owned())),
        None => (head, None),
    };
    if name.is_empty() {
        return Err(format!("empty package name in {text:?}"));
    }
    Ok(Relation {
        name: name.to_owned(),
        arch,
        constraint,
    })
}

/// Parses a comma-separated list of `|` alternatives.
pub fn parse_relations(text: &str) -> std::result::Result<Vec<Alternatives>, String> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|group| group.split('|').map(parse_relation).collect())
        .collect()
}

/// A binary package from an index.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: Version,
    pub version_raw: String,
    pub architecture: String,
    pub multi_arch: Option<String>,
    pub source: String,
    pub source_version: String,
    pub essential: bool,
    /// Rank of the `Priority` field: 0 required, 1 important, 2 standard,
    /// 3 optional, 4 extra or missing. Used to choose among providers the
    /// way an installer would (`mawk` over `gawk` for `awk`).
    pub priority: u8,
    pub pre_depends: Vec<Alternatives>,
    pub depends: Vec<Alternatives>,
    /// Virtual names provided, optionally with `(= version)`.
    pub provides: Vec<(String, Option<Version>)>,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    /// The recipe suite whose index listed it.
    pub suite: String,
}

/// Parses a Packages index; `url` names it in errors, `suite` is recorded
/// on each package.
pub fn parse_packages(url: &str, suite: &str, text: &str) -> Result<Vec<Package>> {
    let mut out = Vec::new();
    for stanza in crate::deb822::parse(text) {
        let err = |message: String| Error::Index {
            url: url.to_owned(),
            message,
        };
        let name = stanza
            .get("Package")
            .ok_or_else(|| err("stanza without Package field".into()))?;
        let need = |field: &str| {
            stanza
                .get(field)
                .ok_or_else(|| err(format!("package {name}: no {field} field")))
        };
        let version_raw = need("Version")?;
        let version =
            parse_version(version_raw).map_err(|m| err(format!("package {name}: {m}")))?;
        let (source, source_version) = match stanza.get("Source") {
            Some(s) => match s.split_once('(') {
                Some((n, v)) => (n.trim(), v.trim_end_matches(')').trim()),
                None => (s, version_raw),
            },
            None => (name, version_raw),
        };
        let relations = |field: &str| -> Result<Vec<Alternatives>> {
            stanza
                .get(field)
                .map(parse_relations)
                .transpose()
                .map_err(|m| err(format!("package {name} {field}: {m}")))
                .map(Option::unwrap_or_default)
        };
        let provides = relations("Provides")?
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r.name,
                    r.constraint.filter(|(op, _)| *op == Op::Eq).map(|(_, v)| v),
                )
            })
            .collect();
        out.push(Package {
            name: name.to_owned(),
            version,
            version_raw: version_raw.to_owned(),
            architecture: need("Architecture")?.to_owned(),
            multi_arch: stanza.get("Multi-Arch").map(str::to_owned),
            source: source.to_owned(),
            source_version: source_version.to_owned(),
            essential: stanza.get("Essential").is_some_and(|v| v == "yes"),
            priority: match stanza.get("Priority") {
                Some("required") => 0,
                Some("important") => 1,
                Some("standard") => 2,
                Some("optional") => 3,
                _ => 4,
            },
            pre_depends: relations("Pre-Depends")?,
            depends: relations("Depends")?,
            provides,
            filename: need("Filename")?.to_owned(),
            size: need("Size")?
                .parse()
                .map_err(|_| err(format!("package {name}: bad Size")))?,
            sha256: need("SHA256")?.to_ascii_lowercase(),
            suite: suite.to_owned(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_parse() {
        let r = parse_relations("libc6 (>= 2.34), a | b:any (<< 3~), python3:any, c (>2)").unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0][0].to_string(), "libc6 (>= 2.34)");
        assert_eq!(display_alternatives(&r[1]), "a | b:any (<< 3~)");
        assert_eq!(r[2][0].arch.as_deref(), Some("any"));
        assert_eq!(r[3][0].constraint.as_ref().unwrap().0, Op::Ge);
        assert!(parse_relations("x (>= )").is_err());
    }

    #[test]
    fn packages_parse_with_source_version_and_provides() {
        let text = "Package: libfoo1\nSource: foo (1.0-1)\nVersion: 1.0-1+b1\nArchitecture: amd64\n\
Provides: libfoo (= 1.0), foo-virtual\nDepends: libc6 (>= 2.34)\nFilename: pool/main/f/foo/libfoo1.deb\nSize: 10\nSHA256: AB\n";
        let p = &parse_packages("u", "trixie", text).unwrap()[0];
        assert_eq!(
            (p.source.as_str(), p.source_version.as_str()),
            ("foo", "1.0-1")
        );
        assert_eq!(p.provides[0].1.as_ref().unwrap().to_string(), "1.0");
        assert_eq!(p.provides[1], ("foo-virtual".to_owned(), None));
        assert_eq!(p.sha256, "ab");
        let bad = text.replace("Size: 10\n", "");
        assert!(
            parse_packages("u", "trixie", &bad)
                .unwrap_err()
                .to_string()
                .contains("no Size")
        );
    }
}
