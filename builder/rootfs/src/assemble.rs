//! What maintainer scripts would have done that the image needs, done from
//! data instead of by running them: merged-/usr links, accounts,
//! `update-alternatives` links, the CA bundle and a few /etc files.
//!
//! Not done on purpose: `/etc/ld.so.cache`. Debian's ld.so searches
//! `/lib/x86_64-linux-gnu` and `/usr/lib/x86_64-linux-gnu` (the multiarch
//! directories) and `/lib`, `/usr/lib` without a cache, which is where every
//! library of the image lives; a missing cache makes ld.so use exactly that
//! default search, whereas a stale or hand-made one could mislead it.

use std::collections::BTreeMap;

use usmol_recipe::{IptablesBackend, Rootfs};

use crate::extract::PathFilter;
use crate::tree::{Above, BlobStore, Inode, Key, Meta, Missing, Node, Owner, Tree, split};
use crate::{Error, Result};

fn assembly(message: impl Into<String>) -> Error {
    Error::Assembly {
        message: message.into(),
    }
}

/// Context for the assembly steps.
pub struct Assembler<'a> {
    pub tree: &'a mut Tree,
    pub blobs: &'a mut BlobStore,
    pub filter: &'a PathFilter,
    pub epoch: u64,
    pub warnings: &'a mut Vec<String>,
}

impl Assembler<'_> {
    fn key(&mut self, absolute: &str) -> Result<Key> {
        let parent_and_name: Vec<&str> = split(absolute).collect();
        let (name, parent) = parent_and_name
            .split_last()
            .ok_or_else(|| assembly(format!("cannot write {absolute}: it is the root")))?;
        let mut components = self
            .tree
            .resolve(
                &[],
                &parent.join("/"),
                true,
                Missing::Create { mtime: self.epoch },
                Above::Clamp,
            )
            .map_err(|e| assembly(format!("cannot place {absolute}: {e}")))?;
        if !components.is_empty() && self.tree.get(&components).is_none() {
            self.tree.put(
                Key::from_components(&components),
                Node::Dir(Meta::new(0o755, self.epoch)),
                Owner::Assembly,
            );
        }
        components.push((*name).to_owned());
        let key = Key::from_components(&components);
        if let Some(Node::Dir(_)) = self.tree.nodes.get(&key).map(|e| &e.node) {
            return Err(assembly(format!(
                "cannot write {absolute}: a package ships a directory there"
            )));
        }
        Ok(key)
    }

    /// Writes a regular file, replacing whatever non-directory was there.
    pub fn write_file(
        &mut self,
        absolute: &str,
        content: &[u8],
        mode: u32,
        gid: u32,
    ) -> Result<()> {
        let key = self.key(absolute)?;
        let (blob, size) = self.blobs.put_bytes(content).map_err(|source| Error::Io {
            path: self.blobs.dir().to_owned(),
            stage: "stage assembled file",
            source,
        })?;
        let mut meta = Meta::new(mode, self.epoch);
        meta.gid = gid;
        let id = self.tree.add_inode(Inode { blob, size, meta });
        self.tree.put(key, Node::File(id), Owner::Assembly);
        Ok(())
    }

    pub fn symlink(&mut self, absolute: &str, target: &str) -> Result<()> {
        let key = self.key(absolute)?;
        let node = Node::Symlink {
            target: target.to_owned(),
            meta: Meta::new(0o777, self.epoch),
        };
        self.tree.put(key, node, Owner::Assembly);
        Ok(())
    }

    /// A symlink where packages may ship an empty directory (as base-files
    /// does for /var/run): the postinst replaces it. A directory with
    /// contents is an error.
    pub fn replace_empty_dir_with_symlink(&mut self, absolute: &str, target: &str) -> Result<()> {
        let components: Vec<String> = split(absolute).map(str::to_owned).collect();
        let key = Key::from_components(&components);
        if let Some(Node::Dir(_)) = self.tree.nodes.get(&key).map(|e| &e.node) {
            let occupied = self.tree.nodes.keys().any(|k| {
                let c = k.components();
                c.len() > components.len() && c.starts_with(&components)
            });
            if occupied {
                return Err(assembly(format!(
                    "cannot link {absolute} to {target}: packages ship files below {absolute}"
                )));
            }
            self.tree.nodes.remove(&key);
        }
        self.symlink(absolute, target)
    }

    pub fn mkdir(&mut self, absolute: &str, mode: u32) -> Result<()> {
        if self.tree.exists(absolute) {
            return Ok(());
        }
        let key = self.key(absolute)?;
        self.tree
            .put(key, Node::Dir(Meta::new(mode, self.epoch)), Owner::Assembly);
        Ok(())
    }

    fn read(&mut self, absolute: &str) -> Result<Option<String>> {
        let Some(id) = self.tree.file_at(absolute) else {
            return Ok(None);
        };
        let bytes = self
            .blobs
            .read(self.tree.inodes[id].blob)
            .map_err(|source| Error::Io {
                path: self.blobs.dir().to_owned(),
                stage: "read staged file",
                source,
            })?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| assembly(format!("{absolute} is not UTF-8 text")))
    }
}

/// Merged /usr: `/bin`, `/sbin`, `/lib` (and `/lib64` on amd64) are links
/// into `/usr`, created before unpacking so that files shipped under `/bin`
/// land in `/usr/bin` whatever order packages come in. base-files ships
/// the same links; it replaces these with identical ones.
pub fn usrmerge(tree: &mut Tree, epoch: u64, lib64: bool) {
    let mut links = vec!["bin", "sbin", "lib"];
    if lib64 {
        links.push("lib64");
    }
    tree.put(
        Key("usr".into()),
        Node::Dir(Meta::new(0o755, epoch)),
        Owner::Assembly,
    );
    for link in links {
        tree.put(
            Key(format!("usr/{link}")),
            Node::Dir(Meta::new(0o755, epoch)),
            Owner::Assembly,
        );
        let node = Node::Symlink {
            target: format!("usr/{link}"),
            meta: Meta::new(0o777, epoch),
        };
        tree.put(Key(link.into()), node, Owner::Assembly);
    }
}

/// One `name:...` line of passwd or group.
struct Account {
    name: String,
    id: u32,
    line: String,
}

fn parse_accounts(text: &str, file: &str, fields: usize) -> Result<Vec<Account>> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let parts: Vec<&str> = line.split(':').collect();
        let id = parts.get(2).and_then(|id| id.parse().ok());
        match id {
            Some(id) if parts.len() == fields => out.push(Account {
                name: parts[0].to_owned(),
                id,
                line: line.to_owned(),
            }),
            _ => return Err(assembly(format!("{file}: malformed line {line:?}"))),
        }
    }
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.len() <= 32
}

fn add_account(
    list: &mut Vec<Account>,
    name: &str,
    id: u32,
    line: String,
    what: &str,
) -> Result<()> {
    if !valid_name(name) {
        return Err(assembly(format!(
            "rootfs.{what}s: {name:?} is not a valid name (lowercase letters, digits, '_' and '-', starting with a letter or '_')"
        )));
    }
    if let Some(clash) = list.iter().find(|a| a.name == name || a.id == id) {
        return Err(assembly(format!(
            "rootfs.{what}s: {name} ({id}) clashes with existing {what} {} ({}) from base-passwd; pick another name or id",
            clash.name, clash.id
        )));
    }
    list.push(Account {
        name: name.to_owned(),
        id,
        line,
    });
    Ok(())
}

/// /etc/passwd, group, shadow, gshadow from base-passwd's master files plus
/// the recipe's groups and users, in that order.
pub fn accounts(a: &mut Assembler<'_>, cfg: &Rootfs) -> Result<()> {
    const PASSWD_MASTER: &str = "/usr/share/base-passwd/passwd.master";
    const GROUP_MASTER: &str = "/usr/share/base-passwd/group.master";
    let passwd_text = a
        .read(PASSWD_MASTER)?
        .unwrap_or_else(|| "root:x:0:0:root:/root:/bin/sh\n".to_owned());
    let group_text = a
        .read(GROUP_MASTER)?
        .unwrap_or_else(|| "root:x:0:\n".to_owned());
    let mut users = parse_accounts(&passwd_text, PASSWD_MASTER, 7)?;
    let mut groups = parse_accounts(&group_text, GROUP_MASTER, 4)?;
    for g in &cfg.groups {
        for member in &g.members {
            if !valid_name(member) {
                return Err(assembly(format!(
                    "rootfs.groups.{}: member {member:?} is not a valid name",
                    g.name
                )));
            }
        }
        let line = format!("{}:x:{}:{}", g.name, g.gid, g.members.join(","));
        add_account(&mut groups, &g.name, g.gid, line, "group")?;
    }
    for u in &cfg.users {
        if !groups.iter().any(|g| g.id == u.gid) {
            return Err(assembly(format!(
                "rootfs.users.{}: gid {} names no group; add it to rootfs.groups",
                u.name, u.gid
            )));
        }
        for field in [&u.home, &u.shell] {
            if field.contains([':', '\n']) {
                return Err(assembly(format!(
                    "rootfs.users.{}: {field:?} may not contain ':' or newlines",
                    u.name
                )));
            }
        }
        let line = format!("{}:x:{}:{}::{}:{}", u.name, u.uid, u.gid, u.home, u.shell);
        add_account(&mut users, &u.name, u.uid, line, "user")?;
    }
    // Days since 1970 for the "last changed" field, from the build epoch
    // rather than the clock so that the file is reproducible.
    let days = a.epoch / 86_400;
    let shadow_gid = groups
        .iter()
        .find(|g| g.name == "shadow")
        .map_or(0, |g| g.id);
    let join = |lines: Vec<String>| lines.into_iter().map(|l| l + "\n").collect::<String>();
    let passwd = join(users.iter().map(|u| u.line.clone()).collect());
    let group = join(groups.iter().map(|g| g.line.clone()).collect());
    let shadow = join(
        users
            .iter()
            .map(|u| format!("{}:*:{days}:0:99999:7:::", u.name))
            .collect(),
    );
    let gshadow = join(
        groups
            .iter()
            .map(|g| format!("{}:*::{}", g.name, g.line.rsplit(':').next().unwrap_or("")))
            .collect(),
    );
    a.write_file("/etc/passwd", passwd.as_bytes(), 0o644, 0)?;
    a.write_file("/etc/group", group.as_bytes(), 0o644, 0)?;
    a.write_file("/etc/shadow", shadow.as_bytes(), 0o640, shadow_gid)?;
    a.write_file("/etc/gshadow", gshadow.as_bytes(), 0o640, shadow_gid)?;
    Ok(())
}

/// One `update-alternatives --install` call found in a postinst.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub link: String,
    pub name: String,
    pub path: String,
    pub priority: i64,
    /// (link, name, path)
    pub slaves: Vec<(String, String, String)>,
}

/// Finds `update-alternatives --install` calls in a maintainer script.
/// Calls whose arguments use shell expansion cannot be evaluated without a
/// shell and are returned as warnings instead.
pub fn parse_alternatives(script: &str) -> (Vec<Registration>, Vec<String>) {
    let joined = script.replace("\\\n", " ");
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    for line in joined.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let Some(start) = tokens.iter().position(|t| *t == "update-alternatives") else {
            continue;
        };
        let args: Vec<&str> = tokens[start + 1..]
            .iter()
            .take_while(|t| {
                !matches!(**t, "||" | "&&" | ";" | "|")
                    && !t.starts_with('>')
                    && !t.starts_with("2>")
            })
            .map(|t| t.trim_matches(|c| c == '"' || c == '\''))
            .collect();
        let Some(install) = args.iter().position(|t| *t == "--install") else {
            continue;
        };
        if args.iter().any(|t| t.contains(['$', '`'])) {
            unreadable.push(line.to_owned());
            continue;
        }
        let rest = &args[install + 1..];
        let (Some(link), Some(name), Some(path), Some(priority)) =
            (rest.first(), rest.get(1), rest.get(2), rest.get(3))
        else {
            unreadable.push(line.to_owned());
            continue;
        };
        let Ok(priority) = priority.parse() else {
            unreadable.push(line.to_owned());
            continue;
        };
        let mut registration = Registration {
            link: (*link).to_owned(),
            name: (*name).to_owned(),
            path: (*path).to_owned(),
            priority,
            slaves: Vec::new(),
        };
        let mut i = 4;
        while i < rest.len() {
            if rest[i] == "--slave" && rest.len() >= i + 4 {
                registration.slaves.push((
                    rest[i + 1].to_owned(),
                    rest[i + 2].to_owned(),
                    rest[i + 3].to_owned(),
                ));
                i += 4;
            } else {
                i += 1;
            }
        }
        found.push(registration);
    }
    (found, unreadable)
}

/// A chosen link: `link` -> `/etc/alternatives/<name>` -> `path`.
struct Link {
    link: String,
    name: String,
    path: String,
}

/// Creates the `update-alternatives` links: the highest-priority existing
/// choice of every registered alternative, then `rootfs.iptables`, then
/// `rootfs.alternatives`. Returns link -> final target.
pub fn alternatives(
    a: &mut Assembler<'_>,
    cfg: &Rootfs,
    registrations: &[(String, Registration)],
) -> Result<BTreeMap<String, String>> {
    // name -> choices (later registrations of the same path replace earlier).
    let mut groups: BTreeMap<String, Vec<Registration>> = BTreeMap::new();
    for (_, r) in registrations {
        let choices = groups.entry(r.name.clone()).or_default();
        choices.retain(|c| c.path != r.path);
        choices.push(r.clone());
    }
    let mut selected: BTreeMap<String, Registration> = BTreeMap::new();
    for (name, choices) in &groups {
        let mut existing: Vec<&Registration> =
            choices.iter().filter(|c| a.tree.exists(&c.path)).collect();
        existing.sort_by(|x, y| {
            y.priority
                .cmp(&x.priority)
                .then_with(|| x.path.cmp(&y.path))
        });
        match existing.first() {
            Some(best) => {
                selected.insert(name.clone(), (*best).clone());
            }
            None => a.warnings.push(format!(
                "alternative {name}: no choice is in the tree (excluded or missing), no link made"
            )),
        }
    }

    if let Some(backend) = cfg.iptables {
        let suffix = match backend {
            IptablesBackend::Legacy => "-legacy",
            IptablesBackend::Nft => "-nft",
        };
        if !groups.contains_key("iptables") {
            return Err(assembly(
                "rootfs.iptables is set but no package registers the iptables alternative; add iptables to packages.include",
            ));
        }
        for name in ["iptables", "ip6tables", "arptables", "ebtables"] {
            let Some(choices) = groups.get(name) else {
                continue;
            };
            let want = format!("/usr/sbin/{name}{suffix}");
            match choices.iter().find(|c| c.path == want) {
                Some(choice) => {
                    if !a.tree.exists(&want) {
                        return Err(assembly(format!(
                            "rootfs.iptables selects {want}, which is not in the tree (excluded by rootfs.path_exclude?)"
                        )));
                    }
                    selected.insert(name.to_owned(), choice.clone());
                }
                None if matches!(name, "iptables" | "ip6tables") => {
                    return Err(assembly(format!(
                        "rootfs.iptables: the {name} alternative has no {want} choice"
                    )));
                }
                // arptables/ebtables have no legacy variant in the iptables
                // package; they keep their automatic choice.
                None => {}
            }
        }
    }

    let mut links: Vec<Link> = Vec::new();
    for (name, choice) in &selected {
        links.push(Link {
            link: choice.link.clone(),
            name: name.clone(),
            path: choice.path.clone(),
        });
        for (link, slave, path) in &choice.slaves {
            // update-alternatives drops slaves whose file is absent.
            if a.tree.exists(path) {
                links.push(Link {
                    link: link.clone(),
                    name: slave.clone(),
                    path: path.clone(),
                });
            }
        }
    }

    for (link, target) in &cfg.alternatives {
        if !link.starts_with('/') || !target.starts_with('/') {
            return Err(assembly(format!(
                "rootfs.alternatives: {link:?} = {target:?}: both must be absolute paths"
            )));
        }
        if !a.tree.exists(target) {
            return Err(assembly(format!(
                "rootfs.alternatives: {link} -> {target}: {target} is not in the tree"
            )));
        }
        let name = links
            .iter()
            .find(|l| &l.link == link)
            .map(|l| l.name.clone())
            .or_else(|| {
                groups
                    .values()
                    .flatten()
                    .find(|r| &r.link == link)
                    .map(|r| r.name.clone())
            })
            .unwrap_or_else(|| link.rsplit('/').next().unwrap_or(link).to_owned());
        // A new master choice replaces the whole group, slaves included.
        if let Some(choice) = groups
            .get(&name)
            .and_then(|cs| cs.iter().find(|c| &c.path == target))
        {
            links.retain(|l| l.link != *link && !choice_owns(&selected, &name, &l.link));
            links.push(Link {
                link: link.clone(),
                name: name.clone(),
                path: target.clone(),
            });
            for (slink, sname, spath) in &choice.slaves {
                if a.tree.exists(spath) {
                    links.push(Link {
                        link: slink.clone(),
                        name: sname.clone(),
                        path: spath.clone(),
                    });
                }
            }
        } else {
            links.retain(|l| l.link != *link);
            links.push(Link {
                link: link.clone(),
                name,
                path: target.clone(),
            });
        }
    }

    a.mkdir("/etc/alternatives", 0o755)?;
    let mut made = BTreeMap::new();
    links.sort_by(|x, y| x.link.cmp(&y.link));
    for link in links {
        if a.filter.excludes(&link.link) {
            continue;
        }
        if let Some(entry) = a.tree.get_path(&link.link)
            && !matches!(entry.node, Node::Symlink { .. })
        {
            a.warnings.push(format!(
                "alternative {}: {} is a real file from a package, not replaced by a link",
                link.name, link.link
            ));
            continue;
        }
        let alt = format!("/etc/alternatives/{}", link.name);
        a.symlink(&alt, &link.path)?;
        a.symlink(&link.link, &alt)?;
        made.insert(link.link, link.path);
    }
    let dangling: Vec<String> = made
        .iter()
        .filter(|(link, _)| a.tree.file_at(link).is_none() && !a.tree.exists(link))
        .map(|(link, target)| format!("{link} -> {target}"))
        .collect();
    if !dangling.is_empty() {
        return Err(assembly(format!(
            "dangling alternatives links: {}",
            dangling.join(", ")
        )));
    }
    Ok(made)
}

fn choice_owns(selected: &BTreeMap<String, Registration>, name: &str, link: &str) -> bool {
    selected
        .get(name)
        .is_some_and(|c| c.link == link || c.slaves.iter().any(|(l, _, _)| l == link))
}

/// The CA bundle `update-ca-certificates` would write, for TLS to
/// registries: certificates named in /etc/ca-certificates.conf (or all of
/// /usr/share/ca-certificates when it is absent, as the debconf default
/// does), concatenated in that order, plus one `<name>.pem` link each.
/// OpenSSL's `<hash>.0` links are not made; Go (dockerd, containerd) and
/// OpenSSL's default verify path both read the bundle.
pub fn ca_certificates(a: &mut Assembler<'_>) -> Result<()> {
    let prefix = "usr/share/ca-certificates/";
    let available: Vec<String> = a
        .tree
        .nodes
        .iter()
        .filter(|(k, e)| {
            k.0.starts_with(prefix) && k.0.ends_with(".crt") && matches!(e.node, Node::File(_))
        })
        .map(|(k, _)| k.0[prefix.len()..].to_owned())
        .collect();
    if available.is_empty() {
        return Ok(());
    }
    let selected: Vec<String> = match a.read("/etc/ca-certificates.conf")? {
        Some(conf) => conf
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
            .map(str::to_owned)
            .collect(),
        None => {
            let mut conf =
                String::from("# Generated at image build: every certificate is enabled.\n");
            for c in &available {
                conf.push_str(c);
                conf.push('\n');
            }
            a.write_file("/etc/ca-certificates.conf", conf.as_bytes(), 0o644, 0)?;
            available.clone()
        }
    };
    let mut bundle = Vec::new();
    for cert in &selected {
        let path = format!("/{prefix}{cert}");
        let Some(text) = a.read(&path)? else {
            a.warnings.push(format!(
                "/etc/ca-certificates.conf names {cert}, which is not in the tree"
            ));
            continue;
        };
        bundle.extend_from_slice(text.as_bytes());
        if !text.ends_with('\n') {
            bundle.push(b'\n');
        }
        let base = cert.rsplit('/').next().unwrap_or(cert);
        let pem = format!("/etc/ssl/certs/{}.pem", base.trim_end_matches(".crt"));
        a.symlink(&pem, &path)?;
    }
    a.write_file("/etc/ssl/certs/ca-certificates.crt", &bundle, 0o644, 0)?;
    Ok(())
}

/// Small /etc files the image expects.
pub fn etc_files(a: &mut Assembler<'_>) -> Result<()> {
    // Empty: systemd-style "uninitialised"; nothing in the guest generates
    // one, and a fixed id would be shared by every instance of the image.
    a.write_file("/etc/machine-id", b"", 0o444, 0)?;
    a.write_file("/etc/hostname", b"usmol\n", 0o644, 0)?;
    a.write_file(
        "/etc/hosts",
        b"127.0.0.1\tlocalhost\n127.0.1.1\tusmol\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
        0o644,
        0,
    )?;
    a.write_file(
        "/etc/resolv.conf",
        b"# Placeholder: usmol-init writes the resolver configuration at boot.\n",
        0o644,
        0,
    )?;
    // base-files' postinst: /var/run and /var/lock point into the /run
    // tmpfs. Clients such as the docker CLI look for /var/run/docker.sock.
    a.replace_empty_dir_with_symlink("/var/run", "/run")?;
    a.replace_empty_dir_with_symlink("/var/lock", "/run/lock")?;
    if a.tree.get_path("/etc/os-release").is_none() && a.tree.exists("/usr/lib/os-release") {
        a.symlink("/etc/os-release", "../usr/lib/os-release")?;
    }
    // openssl's postinst: its configuration directory is reached via
    // /usr/lib/ssl.
    if a.tree.get_path("/usr/lib/ssl").is_none() && a.tree.exists("/etc/ssl") {
        a.symlink("/usr/lib/ssl", "/etc/ssl")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iptables_style_calls() {
        let script = "if [ \"$1\" = configure ]; then\n\tupdate-alternatives \\\n\t  --install /usr/sbin/iptables iptables /usr/sbin/iptables-legacy 10 \\\n\t  --slave /usr/sbin/iptables-save iptables-save /usr/sbin/iptables-legacy-save\nfi\n# update-alternatives --install /x x /y 1\n";
        let (found, unreadable) = parse_alternatives(script);
        assert!(unreadable.is_empty());
        assert_eq!(
            found,
            [Registration {
                link: "/usr/sbin/iptables".into(),
                name: "iptables".into(),
                path: "/usr/sbin/iptables-legacy".into(),
                priority: 10,
                slaves: vec![(
                    "/usr/sbin/iptables-save".into(),
                    "iptables-save".into(),
                    "/usr/sbin/iptables-legacy-save".into()
                )],
            }]
        );
    }

    #[test]
    fn shell_variables_are_reported_not_guessed() {
        let (found, unreadable) =
            parse_alternatives("update-alternatives --install /usr/bin/x x $P 5 || true\n");
        assert!(found.is_empty());
        assert_eq!(unreadable.len(), 1);
    }

    #[test]
    fn trailing_or_true_is_not_an_argument() {
        let (found, _) =
            parse_alternatives("update-alternatives --install /a a /b 10 \\\n  || true\n");
        assert_eq!(found.len(), 1);
        assert!(found[0].slaves.is_empty());
    }
}
