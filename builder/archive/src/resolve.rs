//! Dependency resolution: from the recipe's package names to the closed set
//! of binary packages to install.
//!
//! The resolver is greedy and deterministic, like a first pass of apt: it
//! walks requirements breadth-first (the recipe's names before any of their
//! dependencies), and for each unsatisfied requirement picks one package:
//! a `packages.prefer` entry if one qualifies, otherwise the first
//! alternative that can be satisfied, real packages before providers of a
//! virtual name (providers ordered by suite, then `Priority`, then name). A real name is taken from its pinned suite if pinned,
//! otherwise from the first suite (in recipe order) that has a satisfying
//! version, highest version within that suite. It does not backtrack: a
//! requirement that the chosen set cannot meet is an error naming the chain
//! of packages that led to it. Conflicts/Breaks are not evaluated (nothing
//! runs dpkg here; the set is unpacked, not configured).

use std::collections::{BTreeMap, HashMap, VecDeque};

use usmol_recipe::Recipe;

use crate::packages::{Alternatives, Package, Relation, display_alternatives, parse_relation};
use crate::{Error, Result};

/// All packages of the recipe's suites, indexed by name and by provided name.
#[derive(Debug, Clone)]
pub struct Universe {
    packages: Vec<Package>,
    by_name: HashMap<String, Vec<usize>>,
    providers: HashMap<String, Vec<usize>>,
    suites: Vec<String>,
    arch: String,
}

impl Universe {
    /// Builds the universe; packages of other architectures than `arch` and
    /// `all` are dropped.
    pub fn new(packages: Vec<Package>, suites: &[String], arch: &str) -> Self {
        let packages: Vec<Package> = packages
            .into_iter()
            .filter(|p| p.architecture == arch || p.architecture == "all")
            .collect();
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        let mut providers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, p) in packages.iter().enumerate() {
            by_name.entry(p.name.clone()).or_default().push(i);
            for (v, _) in &p.provides {
                providers.entry(v.clone()).or_default().push(i);
            }
        }
        Universe {
            packages,
            by_name,
            providers,
            suites: suites.to_vec(),
            arch: arch.to_owned(),
        }
    }

    pub fn len(&self) -> usize {
        self.packages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packages.is_empty()
    }

    fn suite_rank(&self, suite: &str) -> usize {
        self.suites
            .iter()
            .position(|s| s == suite)
            .unwrap_or(usize::MAX)
    }

    /// Whether an architecture qualifier can be met by this single-arch set.
    fn arch_ok(&self, rel: &Relation) -> bool {
        match rel.arch.as_deref() {
            None | Some("any") | Some("native") | Some("all") => true,
            Some(a) => a == self.arch,
        }
    }

    fn version_ok(&self, idx: usize, rel: &Relation) -> bool {
        match &rel.constraint {
            None => true,
            Some((op, want)) => op.matches(&self.packages[idx].version, want),
        }
    }

    /// Whether package `idx` provides `rel` (versioned provides satisfy
    /// versioned relations; unversioned ones only unversioned relations).
    fn provides_ok(&self, idx: usize, rel: &Relation) -> bool {
        self.packages[idx].provides.iter().any(|(name, version)| {
            name == &rel.name
                && match (&rel.constraint, version) {
                    (None, _) => true,
                    (Some((op, want)), Some(have)) => op.matches(have, want),
                    (Some(_), None) => false,
                }
        })
    }

    /// Real candidates for `rel` in preference order: pinned suite only if
    /// pinned, else suite order, then highest version.
    fn real_candidates(&self, rel: &Relation, pin: &BTreeMap<String, String>) -> Vec<usize> {
        let mut c: Vec<usize> = self
            .by_name
            .get(&rel.name)
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|&i| self.version_ok(i, rel))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(suite) = pin.get(&rel.name) {
            c.retain(|&i| &self.packages[i].suite == suite);
        }
        c.sort_by(|&a, &b| {
            let (pa, pb) = (&self.packages[a], &self.packages[b]);
            self.suite_rank(&pa.suite)
                .cmp(&self.suite_rank(&pb.suite))
                .then_with(|| pb.version.cmp(&pa.version))
                .then_with(|| a.cmp(&b))
        });
        c
    }

    fn provider_candidates(&self, rel: &Relation, pin: &BTreeMap<String, String>) -> Vec<usize> {
        let mut c: Vec<usize> = self
            .providers
            .get(&rel.name)
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|&i| self.provides_ok(i, rel))
                    .collect()
            })
            .unwrap_or_default();
        c.retain(|&i| {
            pin.get(&self.packages[i].name)
                .is_none_or(|s| &self.packages[i].suite == s)
        });
        c.sort_by(|&a, &b| {
            let (pa, pb) = (&self.packages[a], &self.packages[b]);
            self.suite_rank(&pa.suite)
                .cmp(&self.suite_rank(&pb.suite))
                .then_with(|| pa.priority.cmp(&pb.priority))
                .then_with(|| pa.name.cmp(&pb.name))
                .then_with(|| pb.version.cmp(&pa.version))
                .then_with(|| a.cmp(&b))
        });
        c
    }
}

/// The resolver's working state.
struct State<'u> {
    u: &'u Universe,
    recipe: &'u Recipe,
    /// name -> (package index, chain that chose it)
    selected: BTreeMap<String, (usize, Vec<String>)>,
    queue: VecDeque<(Alternatives, Vec<String>)>,
}

impl State<'_> {
    fn excluded(&self, name: &str) -> bool {
        self.recipe.packages.exclude.iter().any(|e| e == name)
    }

    fn satisfied(&self, rel: &Relation) -> bool {
        if self.excluded(&rel.name) {
            return true;
        }
        if !self.u.arch_ok(rel) {
            return false;
        }
        if self
            .selected
            .get(&rel.name)
            .is_some_and(|(i, _)| self.u.version_ok(*i, rel))
        {
            return true;
        }
        self.selected
            .values()
            .any(|(i, _)| self.u.provides_ok(*i, rel))
    }

    /// Candidate packages for a requirement, in preference order.
    fn options(&self, alts: &[Relation]) -> Vec<usize> {
        let pin = &self.recipe.distribution.pin;
        let mut options = Vec::new();
        for rel in alts.iter().filter(|r| self.u.arch_ok(r)) {
            for i in self
                .u
                .real_candidates(rel, pin)
                .into_iter()
                .chain(self.u.provider_candidates(rel, pin))
            {
                let name = &self.u.packages[i].name;
                // Another version of an already chosen package cannot join the set.
                let clash = self.selected.get(name).is_some_and(|(s, _)| *s != i);
                if !self.excluded(name) && !clash && !options.contains(&i) {
                    options.push(i);
                }
            }
        }
        for preferred in &self.recipe.packages.prefer {
            if let Some(&i) = options
                .iter()
                .find(|&&i| &self.u.packages[i].name == preferred)
            {
                return vec![i];
            }
        }
        options
    }

    fn explain(&self, alts: &[Relation]) -> String {
        let mut reasons = Vec::new();
        for rel in alts {
            let real = self.u.by_name.get(&rel.name);
            let provided = self.u.providers.get(&rel.name);
            if real.is_none() && provided.is_none() {
                reasons.push(format!(
                    "{} is not in suites {} ({}/{})",
                    rel.name,
                    self.u.suites.join(", "),
                    self.recipe.distribution.components.join(","),
                    self.u.arch
                ));
                continue;
            }
            if !self.u.arch_ok(rel) {
                reasons.push(format!("{rel}: only {} is resolved", self.u.arch));
                continue;
            }
            let mut have: Vec<String> = real
                .into_iter()
                .flatten()
                .map(|&i| {
                    format!(
                        "{} in {}",
                        self.u.packages[i].version_raw, self.u.packages[i].suite
                    )
                })
                .collect();
            have.extend(provided.into_iter().flatten().map(|&i| {
                format!(
                    "provided by {} {}",
                    self.u.packages[i].name, self.u.packages[i].version_raw
                )
            }));
            if let Some((i, chain)) = self.selected.get(&rel.name) {
                have.push(format!(
                    "{} {} already chosen for {}",
                    rel.name,
                    self.u.packages[*i].version_raw,
                    if chain.is_empty() {
                        "the recipe".to_owned()
                    } else {
                        chain.join(" -> ")
                    }
                ));
            }
            if let Some(suite) = self.recipe.distribution.pin.get(&rel.name) {
                have.push(format!("pinned to {suite}"));
            }
            reasons.push(format!(
                "no version of {} satisfies it (have: {})",
                rel.name,
                have.join("; ")
            ));
        }
        reasons.join("; ")
    }

    fn select(&mut self, i: usize, chain: Vec<String>) {
        let p = &self.u.packages[i];
        let mut next = chain.clone();
        next.push(p.name.clone());
        for alts in p.pre_depends.iter().chain(&p.depends) {
            self.queue.push_back((alts.clone(), next.clone()));
        }
        self.selected.insert(p.name.clone(), (i, chain));
    }

    fn run(&mut self) -> Result<()> {
        while let Some((alts, chain)) = self.queue.pop_front() {
            if alts.iter().any(|r| self.satisfied(r)) {
                continue;
            }
            match self.options(&alts).first() {
                Some(&i) => self.select(i, chain),
                None => {
                    let mut path = chain.clone();
                    path.push(display_alternatives(&alts));
                    return Err(Error::Resolve {
                        chain: path.join(" -> "),
                        reason: self.explain(&alts),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Resolves the recipe's `packages` against `universe`; the result is
/// sorted by name.
pub fn resolve(universe: &Universe, recipe: &Recipe) -> Result<Vec<Package>> {
    let mut state = State {
        u: universe,
        recipe,
        selected: BTreeMap::new(),
        queue: VecDeque::new(),
    };
    for name in &recipe.packages.include {
        let rel = parse_relation(name).map_err(|reason| Error::Resolve {
            chain: name.clone(),
            reason,
        })?;
        if state.excluded(&rel.name) {
            return Err(Error::Resolve {
                chain: name.clone(),
                reason: "it is both in packages.include and packages.exclude; remove it from one"
                    .into(),
            });
        }
        state.queue.push_back((vec![rel], Vec::new()));
    }
    if recipe.packages.essential {
        let mut names: Vec<&String> = universe
            .by_name
            .iter()
            .filter(|(_, idx)| idx.iter().any(|&i| universe.packages[i].essential))
            .map(|(n, _)| n)
            .collect();
        names.sort();
        for name in names {
            let rel = Relation {
                name: name.clone(),
                arch: None,
                constraint: None,
            };
            state
                .queue
                .push_back((vec![rel], vec!["(essential)".to_owned()]));
        }
    }
    state.run()?;
    Ok(state
        .selected
        .into_values()
        .map(|(i, _)| universe.packages[i].clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::parse_packages;
    use std::path::Path;

    fn universe(trixie: &str, backports: &str) -> Universe {
        let mut pkgs = parse_packages("t", "trixie", trixie).unwrap();
        pkgs.extend(parse_packages("b", "trixie-backports", backports).unwrap());
        Universe::new(pkgs, &["trixie".into(), "trixie-backports".into()], "amd64")
    }

    fn stanza(name: &str, version: &str, extra: &str) -> String {
        let arch = if extra.contains("Architecture:") {
            ""
        } else {
            "Architecture: amd64\n"
        };
        format!(
            "Package: {name}\nVersion: {version}\n{arch}{extra}Filename: pool/{name}_{version}.deb\nSize: 1\nSHA256: 00\n\n"
        )
    }

    fn recipe(packages: &str, pin: &str) -> Recipe {
        let text = format!(
            "[distribution]\nsuites = [\"trixie\", \"trixie-backports\"]\n[distribution.pin]\n{pin}\n[packages]\n{packages}\n"
        );
        Recipe::parse(Path::new("r.toml"), &text).unwrap()
    }

    fn names(u: &Universe, r: &Recipe) -> Vec<String> {
        resolve(u, r)
            .unwrap()
            .iter()
            .map(|p| format!("{}={}@{}", p.name, p.version_raw, p.suite))
            .collect()
    }

    #[test]
    fn alternatives_virtuals_versions_and_prefer() {
        let t = [
            stanza(
                "app",
                "1",
                "Depends: missing | libb (>= 2), mail-transport-agent, libv (>= 3)\n",
            ),
            stanza("libb", "1", ""),
            stanza("libb", "2", "Pre-Depends: libc\n"),
            stanza("libc", "1", "Architecture: all\n"),
            stanza("exim", "1", "Provides: mail-transport-agent\n"),
            stanza("postfix", "1", "Provides: mail-transport-agent\n"),
            stanza("gawk", "1", "Provides: awk\nPriority: optional\n"),
            stanza("mawk", "1", "Provides: awk\nPriority: required\n"),
            stanza("libv-impl", "1", "Provides: libv (= 3.1)\n"),
            stanza("libv-old", "1", "Provides: libv (= 2)\n"),
            stanza("libv-unversioned", "1", "Provides: libv\n"),
            stanza("other", "1", "Architecture: i386\n"),
        ]
        .concat();
        let u = universe(&t, "");
        assert_eq!(
            names(&u, &recipe("include = [\"app\"]", "")),
            [
                "app=1@trixie",
                "exim=1@trixie",
                "libb=2@trixie",
                "libc=1@trixie",
                "libv-impl=1@trixie"
            ]
        );
        let preferred = names(
            &u,
            &recipe("include = [\"app\"]\nprefer = [\"postfix\"]", ""),
        );
        assert!(
            preferred.contains(&"postfix=1@trixie".to_owned())
                && !preferred.iter().any(|p| p.starts_with("exim"))
        );
        let err = resolve(&u, &recipe("include = [\"other\"]", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("other is not in suites"), "{err}");
        // Among providers, the higher Priority wins over the name order.
        assert_eq!(
            names(&u, &recipe("include = [\"awk\"]", "")),
            ["mawk=1@trixie"]
        );
    }

    #[test]
    fn suite_order_pin_and_backport_deps() {
        let t = [
            stanza("tool", "1", "Depends: lib\n"),
            stanza("lib", "1", ""),
        ]
        .concat();
        let b = [
            stanza("tool", "2", "Depends: lib (>= 1)\n"),
            stanza("lib", "2", ""),
        ]
        .concat();
        let u = universe(&t, &b);
        assert_eq!(
            names(&u, &recipe("include = [\"tool\"]", "")),
            ["lib=1@trixie", "tool=1@trixie"]
        );
        // Pinned to backports: its dependency still comes from the first suite.
        assert_eq!(
            names(
                &u,
                &recipe("include = [\"tool\"]", "tool = \"trixie-backports\"")
            ),
            ["lib=1@trixie", "tool=2@trixie-backports"]
        );
        // A version only the second suite has is taken from there.
        assert_eq!(
            names(&u, &recipe("include = [\"lib (>= 2)\"]", "")),
            ["lib=2@trixie-backports"]
        );
    }

    #[test]
    fn exclude_and_essential() {
        let t = [
            stanza(
                "base",
                "1",
                "Essential: yes\nPre-Depends: debconf (>= 1) | debconf-2.0\n",
            ),
            stanza("debconf", "1", "Provides: debconf-2.0\n"),
            stanza("app", "1", "Depends: adduser\n"),
            stanza("adduser", "1", ""),
        ]
        .concat();
        let u = universe(&t, "");
        let r = recipe(
            "include = [\"app\"]\nessential = true\nexclude = [\"adduser\", \"debconf\", \"debconf-2.0\"]",
            "",
        );
        assert_eq!(names(&u, &r), ["app=1@trixie", "base=1@trixie"]);
        let r = recipe("include = [\"app\"]\nexclude = [\"app\"]", "");
        assert!(
            resolve(&u, &r)
                .unwrap_err()
                .to_string()
                .contains("packages.exclude")
        );
    }

    #[test]
    fn unsatisfiable_names_the_chain() {
        let t = [
            stanza("docker.io", "1", "Depends: containerd\n"),
            stanza("containerd", "1", "Depends: libfoo (>= 2)\n"),
            stanza("libfoo", "1", ""),
        ]
        .concat();
        let u = universe(&t, "");
        let err = resolve(&u, &recipe("include = [\"docker.io\"]", ""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("docker.io -> containerd -> libfoo (>= 2)"),
            "{err}"
        );
        assert!(
            err.contains("no version of libfoo satisfies it (have: 1 in trixie)"),
            "{err}"
        );
        let err = resolve(&u, &recipe("include = [\"nosuch\"]", ""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nosuch is not in suites trixie, trixie-backports"),
            "{err}"
        );
    }

    #[test]
    fn cycles_terminate_and_arch_qualifiers() {
        let t = [
            stanza("a", "1", "Depends: b:any\n"),
            stanza("b", "1", "Depends: a (= 1), c:amd64\n"),
            stanza("c", "1", "Architecture: all\nDepends: a:native\n"),
            stanza("d", "1", "Depends: c:i386\n"),
        ]
        .concat();
        let u = universe(&t, "");
        assert_eq!(
            names(&u, &recipe("include = [\"a\"]", "")),
            ["a=1@trixie", "b=1@trixie", "c=1@trixie"]
        );
        let err = resolve(&u, &recipe("include = [\"d\"]", ""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("d -> c:i386") && err.contains("only amd64"),
            "{err}"
        );
    }

    #[test]
    fn a_chosen_version_is_not_replaced() {
        let t = [
            stanza("x", "1", "Depends: lib (<< 2)\n"),
            stanza("y", "1", "Depends: lib (>= 2)\n"),
            stanza("lib", "1", ""),
            stanza("lib", "2", ""),
        ]
        .concat();
        let u = universe(&t, "");
        let err = resolve(&u, &recipe("include = [\"x\", \"y\"]", ""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("y -> lib (>= 2)") && err.contains("already chosen for x"),
            "{err}"
        );
    }
}
