//! Kernel config fragments: parsing, merging onto a base `.config`, and
//! checking that every requested option survived `olddefconfig`.
//!
//! Kconfig silently drops an option whose dependencies are unmet, so a
//! fragment is a request, not a result: [`verify`] compares the resolved
//! config with the requests and [`explain`] names the `depends on` lines
//! of each dropped symbol with the current values of the symbols they use.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One `CONFIG_X=value` (or `# CONFIG_X is not set`) line of a fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Symbol name without the `CONFIG_` prefix.
    pub symbol: String,
    /// `y`, `n`, `m`, a number or a quoted string, as written in `.config`.
    pub value: String,
    pub origin: PathBuf,
    pub line: usize,
}

/// A requested option whose resolved value differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub request: Request,
    /// Resolved value; `n` when the symbol is unset or absent.
    pub actual: String,
    /// `depends on` expressions found in Kconfig, with the values of the
    /// symbols they mention, e.g. `VLAN_8021Q [=n]`.
    pub depends: Vec<String>,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CONFIG_{}={} (from {}:{}) resolved to {}",
            self.request.symbol,
            self.request.value,
            self.request.origin.display(),
            self.request.line,
            self.actual
        )?;
        if !self.depends.is_empty() {
            write!(f, "; depends on: {}", self.depends.join(" && "))?;
        }
        Ok(())
    }
}

/// The `*.config` files of `dir`, sorted by name (the merge order).
pub fn fragment_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io("config fragments", dir))? {
        let path = entry.map_err(Error::io("config fragments", dir))?.path();
        if path.extension().is_some_and(|e| e == "config") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::Fragment {
            path: dir.to_path_buf(),
            line: 0,
            reason: "no *.config fragments in this directory".into(),
        });
    }
    Ok(files)
}

/// Parses one fragment. Comments and blank lines are skipped; anything
/// else that is not an option assignment is an error, so a typo cannot
/// silently request nothing.
pub fn parse_fragment(path: &Path, text: &str) -> Result<Vec<Request>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let bad = |reason: String| Error::Fragment {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            if let Some(sym) = rest
                .trim()
                .strip_prefix("CONFIG_")
                .and_then(|r| r.strip_suffix(" is not set"))
            {
                check_symbol(sym).map_err(bad)?;
                out.push(request(sym, "n", path, i + 1));
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad(format!("expected CONFIG_NAME=value, got {line:?}")));
        };
        let Some(sym) = key.strip_prefix("CONFIG_") else {
            return Err(bad(format!("option {key:?} lacks the CONFIG_ prefix")));
        };
        check_symbol(sym).map_err(bad)?;
        if value.is_empty() {
            return Err(bad(format!("CONFIG_{sym} has an empty value")));
        }
        out.push(request(sym, value, path, i + 1));
    }
    Ok(out)
}

fn request(sym: &str, value: &str, path: &Path, line: usize) -> Request {
    Request {
        symbol: sym.to_string(),
        value: value.to_string(),
        origin: path.to_path_buf(),
        line,
    }
}

fn check_symbol(sym: &str) -> std::result::Result<(), String> {
    if !sym.is_empty()
        && sym
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(())
    } else {
        Err(format!("{sym:?} is not a Kconfig symbol name"))
    }
}

/// Reads and parses every fragment of `dir`; a symbol requested twice
/// with different values is an error naming both places.
pub fn read_fragments(dir: &Path) -> Result<Vec<Request>> {
    let mut all: Vec<Request> = Vec::new();
    for path in fragment_files(dir)? {
        let text = std::fs::read_to_string(&path).map_err(Error::io("config fragments", &path))?;
        for req in parse_fragment(&path, &text)? {
            if let Some(prev) = all.iter().find(|r| r.symbol == req.symbol) {
                if prev.value != req.value {
                    return Err(Error::Fragment {
                        path: req.origin.clone(),
                        line: req.line,
                        reason: format!(
                            "CONFIG_{}={} conflicts with {} at {}:{}",
                            req.symbol,
                            req.value,
                            prev.value,
                            prev.origin.display(),
                            prev.line
                        ),
                    });
                }
                continue;
            }
            all.push(req);
        }
    }
    Ok(all)
}

/// Values of a `.config`: `CONFIG_X=v` lines and `# CONFIG_X is not set`
/// (as `n`). Keys are symbols without the prefix.
pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        if let Some(sym) = line
            .strip_prefix("# CONFIG_")
            .and_then(|r| r.strip_suffix(" is not set"))
        {
            map.insert(sym.to_string(), "n".to_string());
        } else if let Some((k, v)) = line.strip_prefix("CONFIG_").and_then(|l| l.split_once('=')) {
            map.insert(k.to_string(), v.to_string());
        }
    }
    map
}

/// `base` with every requested symbol's line replaced by the request,
/// appended at the end (olddefconfig then reorders and resolves).
pub fn merge(base: &str, requests: &[Request]) -> String {
    let requested: std::collections::BTreeSet<&str> =
        requests.iter().map(|r| r.symbol.as_str()).collect();
    let mut out = String::with_capacity(base.len() + requests.len() * 32);
    for line in base.lines() {
        let sym = line
            .strip_prefix("# CONFIG_")
            .and_then(|r| r.strip_suffix(" is not set"))
            .or_else(|| {
                line.strip_prefix("CONFIG_")
                    .and_then(|l| l.split_once('='))
                    .map(|(k, _)| k)
            });
        if sym.is_some_and(|s| requested.contains(s)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    for r in requests {
        if r.value == "n" {
            out.push_str(&format!("# CONFIG_{} is not set\n", r.symbol));
        } else {
            out.push_str(&format!("CONFIG_{}={}\n", r.symbol, r.value));
        }
    }
    out
}

/// Requests whose resolved value differs. An absent symbol counts as `n`
/// (Kconfig omits symbols whose menu is disabled).
pub fn verify(resolved: &BTreeMap<String, String>, requests: &[Request]) -> Vec<Dropped> {
    requests
        .iter()
        .filter_map(|r| {
            let actual = resolved
                .get(&r.symbol)
                .cloned()
                .unwrap_or_else(|| "n".into());
            (actual != r.value).then(|| Dropped {
                request: r.clone(),
                actual,
                depends: Vec::new(),
            })
        })
        .collect()
}

/// Fills in [`Dropped::depends`] from the Kconfig files under `src`.
pub fn explain(src: &Path, resolved: &BTreeMap<String, String>, dropped: &mut [Dropped]) {
    if dropped.is_empty() {
        return;
    }
    let mut kconfigs = Vec::new();
    collect_kconfigs(src, &mut kconfigs);
    kconfigs.sort();
    let texts: Vec<String> = kconfigs
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    for d in dropped {
        for text in &texts {
            for expr in depends_of(text, &d.request.symbol) {
                d.depends.push(annotate(&expr, resolved));
            }
        }
    }
}

fn collect_kconfigs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            // Build output and VCS dirs hold no Kconfig worth reading.
            if !matches!(
                entry.file_name().to_str(),
                Some(".git" | "Documentation" | "tools")
            ) {
                collect_kconfigs(&path, out);
            }
        } else if entry.file_name().to_string_lossy().starts_with("Kconfig") {
            out.push(path);
        }
    }
}

/// The `depends on` expressions of `config SYMBOL` / `menuconfig SYMBOL`
/// blocks in one Kconfig text.
pub fn depends_of(text: &str, symbol: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let t = line.trim();
        let mut words = t.split_whitespace();
        let first = words.next().unwrap_or("");
        if matches!(first, "config" | "menuconfig") {
            inside = words.next() == Some(symbol);
            continue;
        }
        // Any other top-level entry ends the block being read.
        if !line.starts_with([' ', '\t'])
            && matches!(
                first,
                "choice" | "endchoice" | "menu" | "endmenu" | "if" | "endif" | "source" | "comment"
            )
        {
            inside = false;
            continue;
        }
        if inside && let Some(expr) = t.strip_prefix("depends on") {
            out.push(expr.trim().to_string());
        }
    }
    out
}

/// `A && (B || !C)` -> `A [=y] && (B [=n] || !C [=n])`.
fn annotate(expr: &str, resolved: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.is_empty() {
            return;
        }
        out.push_str(word);
        let is_symbol = word.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
            && word
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if is_symbol {
            let v = resolved
                .get(word.as_str())
                .map(String::as_str)
                .unwrap_or("n");
            out.push_str(&format!(" [={v}]"));
        }
        word.clear();
    };
    for c in expr.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> PathBuf {
        PathBuf::from("frag.config")
    }

    #[test]
    fn parses_assignments_and_not_set() {
        let reqs = parse_fragment(
            &p(),
            "# why\nCONFIG_A=y\n\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\nCONFIG_N=8\n",
        )
        .unwrap();
        let got: Vec<_> = reqs
            .iter()
            .map(|r| (r.symbol.as_str(), r.value.as_str(), r.line))
            .collect();
        assert_eq!(
            got,
            [
                ("A", "y", 2),
                ("B", "n", 4),
                ("C", "\"x y\"", 5),
                ("N", "8", 6)
            ]
        );
    }

    #[test]
    fn rejects_garbage_with_line_number() {
        let err = parse_fragment(&p(), "CONFIG_A=y\nA=y\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("frag.config:2"), "{err}");
        let err = parse_fragment(&p(), "CONFIG_a=y\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a Kconfig symbol"), "{err}");
        assert!(parse_fragment(&p(), "CONFIG_A=\n").is_err());
        assert!(parse_fragment(&p(), "hello\n").is_err());
    }

    #[test]
    fn conflicting_requests_fail() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10-a.config"), "CONFIG_A=y\n").unwrap();
        std::fs::write(dir.path().join("20-b.config"), "CONFIG_A=y\nCONFIG_B=y\n").unwrap();
        assert_eq!(read_fragments(dir.path()).unwrap().len(), 2);
        std::fs::write(dir.path().join("30-c.config"), "# CONFIG_A is not set\n").unwrap();
        let err = read_fragments(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("30-c.config:1") && err.contains("10-a.config:1"),
            "{err}"
        );
    }

    #[test]
    fn merge_replaces_and_appends() {
        let base = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n# comment\n";
        let reqs = parse_fragment(&p(), "CONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=4\n").unwrap();
        assert_eq!(
            merge(base, &reqs),
            "CONFIG_A=y\n# comment\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=4\n"
        );
    }

    #[test]
    fn verify_reports_drops_and_absent_n_passes() {
        let resolved = parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=2\n");
        let reqs = parse_fragment(
            &p(),
            "CONFIG_A=y\nCONFIG_B=y\nCONFIG_N=8\nCONFIG_GONE=n\nCONFIG_X=y\n",
        )
        .unwrap();
        let dropped: Vec<_> = verify(&resolved, &reqs)
            .into_iter()
            .map(|d| (d.request.symbol, d.actual))
            .collect();
        assert_eq!(
            dropped,
            [
                ("B".into(), "n".into()),
                ("N".into(), "2".into()),
                ("X".into(), "n".into())
            ]
        );
    }

    #[test]
    fn explains_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net/bridge")).unwrap();
        std::fs::write(
            dir.path().join("net/bridge/Kconfig"),
            "config BRIDGE\n\ttristate \"b\"\n\tdepends on NET\n\n\
             config BRIDGE_VLAN_FILTERING\n\tbool \"v\"\n\tdepends on BRIDGE\n\tdepends on VLAN_8021Q\n\
             \thelp\n\t  text\n\nconfig OTHER\n\tdepends on FOO\n",
        )
        .unwrap();
        let resolved = parse_config("CONFIG_BRIDGE=y\n");
        let reqs = parse_fragment(&p(), "CONFIG_BRIDGE_VLAN_FILTERING=y\n").unwrap();
        let mut dropped = verify(&resolved, &reqs);
        explain(dir.path(), &resolved, &mut dropped);
        assert_eq!(dropped[0].depends, ["BRIDGE [=y]", "VLAN_8021Q [=n]"]);
        let shown = dropped[0].to_string();
        assert!(
            shown.contains("CONFIG_BRIDGE_VLAN_FILTERING=y (from frag.config:1) resolved to n"),
            "{shown}"
        );
        assert!(shown.contains("VLAN_8021Q [=n]"), "{shown}");
    }

    #[test]
    fn annotates_expressions() {
        let resolved = parse_config("CONFIG_A=y\n");
        assert_eq!(
            annotate("A && (B || !C) && m", &resolved),
            "A [=y] && (B [=n] || !C [=n]) && m"
        );
    }
}
