//! End-to-end tests of `build_rootfs` on packages built here, in code:
//! a hostile corpus, assembly cases and reproducibility. No network, and
//! no root needed (as root the directory output also gets ownership).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use usmol_recipe::{Group, IptablesBackend, Rootfs, User};
use usmol_rootfs::{DebInput, Error, Outputs, Summary, build_rootfs};

const EPOCH: u64 = 1_700_000_000;

/// A well-formed `security.capability` value (v2, cap_net_raw permitted
/// and effective); the kernel refuses malformed ones when run as root.
const CAP: &[u8] = &[1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// One entry of a hand-made data.tar. Paths are written into the header
/// verbatim, so hostile names the `tar` crate would refuse can be made.
#[derive(Clone)]
enum E {
    Dir(&'static str),
    File(&'static str, &'static [u8]),
    /// path, content, mode, uid, gid, xattrs
    Full(
        &'static str,
        &'static [u8],
        u32,
        u64,
        u64,
        Vec<(&'static str, &'static [u8])>,
    ),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    Char(&'static str),
    Fifo(&'static str),
}

fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3;
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        out.extend(format!("{len} {k}=").as_bytes());
        out.extend(*v);
        out.push(b'\n');
    }
    out
}

fn raw_header(path: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_800_000_000); // newer than EPOCH: must be clamped
    h
}

fn with_link(mut h: tar::Header, target: &str) -> tar::Header {
    h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
    h
}

fn data_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut append = |mut h: tar::Header, data: &[u8]| {
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    for e in entries {
        match e {
            E::Dir(p) => append(raw_header(p, tar::EntryType::Directory, 0, 0o755), &[]),
            E::File(p, c) => append(
                raw_header(p, tar::EntryType::Regular, c.len() as u64, 0o644),
                c,
            ),
            E::Full(p, c, mode, uid, gid, xattrs) => {
                if !xattrs.is_empty() {
                    let records: Vec<(String, &[u8])> = xattrs
                        .iter()
                        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
                        .collect();
                    let records: Vec<(&str, &[u8])> =
                        records.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                    let body = pax(&records);
                    append(
                        raw_header(
                            "PaxHeader",
                            tar::EntryType::XHeader,
                            body.len() as u64,
                            0o644,
                        ),
                        &body,
                    );
                }
                let mut h = raw_header(p, tar::EntryType::Regular, c.len() as u64, *mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                append(h, c)
            }
            E::Symlink(p, t) => append(
                with_link(raw_header(p, tar::EntryType::Symlink, 0, 0o777), t),
                &[],
            ),
            E::Hardlink(p, t) => append(
                with_link(raw_header(p, tar::EntryType::Link, 0, 0o644), t),
                &[],
            ),
            E::Char(p) => append(raw_header(p, tar::EntryType::Char, 0, 0o600), &[]),
            E::Fifo(p) => append(raw_header(p, tar::EntryType::Fifo, 0, 0o600), &[]),
        }
    }
    b.into_inner().unwrap()
}

#[derive(Clone, Copy)]
enum Compression {
    None,
    Xz,
    Zstd,
    Gzip,
}

fn compress(data: &[u8], c: Compression) -> (Vec<u8>, &'static str) {
    match c {
        Compression::None => (data.to_vec(), ""),
        Compression::Xz => {
            let mut w = liblzma::write::XzEncoder::new(Vec::new(), 6);
            w.write_all(data).unwrap();
            (w.finish().unwrap(), ".xz")
        }
        Compression::Zstd => (zstd::encode_all(data, 3).unwrap(), ".zst"),
        Compression::Gzip => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            w.write_all(data).unwrap();
            (w.finish().unwrap(), ".gz")
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `<dir>/<name>.deb` (ar: debian-binary, control.tar, data.tar).
fn deb(dir: &Path, name: &str, entries: &[E], postinst: Option<&str>, c: Compression) -> DebInput {
    let mut control = tar::Builder::new(Vec::new());
    let mut add = |path: &str, body: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o755);
        control.append_data(&mut h, path, body).unwrap();
    };
    add(
        "./control",
        format!("Package: {name}\nVersion: 1.0\nArchitecture: amd64\n").as_bytes(),
    );
    if let Some(script) = postinst {
        add("./postinst", script.as_bytes());
    }
    let control = control.into_inner().unwrap();
    let (control, csuffix) = compress(&control, c);
    let (data, dsuffix) = compress(&data_tar(entries), c);
    let mut ar = ar::Builder::new(Vec::new());
    for (id, body) in [
        ("debian-binary".to_owned(), b"2.0\n".to_vec()),
        (format!("control.tar{csuffix}"), control),
        (format!("data.tar{dsuffix}"), data),
    ] {
        let header = ar::Header::new(id.into_bytes(), body.len() as u64);
        ar.append(&header, &body[..]).unwrap();
    }
    let bytes = ar.into_inner().unwrap();
    let path = dir.join(format!("{name}_1.0_amd64.deb"));
    std::fs::write(&path, &bytes).unwrap();
    DebInput {
        name: name.into(),
        version: "1.0".into(),
        architecture: "amd64".into(),
        source: name.into(),
        source_version: "1.0".into(),
        sha256: sha256_hex(&bytes),
        path,
    }
}

struct Built {
    summary: Summary,
    out: Outputs,
    _tmp: tempfile::TempDir,
}

fn build_with(debs: &[DebInput], cfg: &Rootfs, dir: bool) -> Result<Built, Error> {
    let tmp = tempfile::tempdir().unwrap();
    let out = Outputs {
        dir: dir.then(|| tmp.path().join("tree")),
        tarball: tmp.path().join("out/rootfs.tar"),
        manifest: tmp.path().join("out/manifest.json"),
    };
    let summary = build_rootfs(debs, cfg, EPOCH, &out)?;
    Ok(Built {
        summary,
        out,
        _tmp: tmp,
    })
}

fn build(debs: &[DebInput], cfg: &Rootfs) -> Built {
    build_with(debs, cfg, true).unwrap_or_else(|e| panic!("build failed: {e}"))
}

/// A tarball entry as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct T {
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    link: Option<String>,
    content: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn read_tar(path: &Path) -> Vec<(String, T)> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut xattrs = BTreeMap::new();
        if let Some(pax) = entry.pax_extensions().unwrap() {
            for ext in pax {
                let ext = ext.unwrap();
                if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(name.to_owned(), ext.value_bytes().to_vec());
                }
            }
        }
        let h = entry.header().clone();
        assert_eq!(h.username_bytes(), Some(&b""[..]));
        assert_eq!(h.groupname_bytes(), Some(&b""[..]));
        // Directories carry a trailing '/'; keys here do not.
        let path = String::from_utf8(entry.path_bytes().into_owned())
            .unwrap()
            .trim_end_matches('/')
            .to_owned();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap());
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Regular => 'f',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            other => panic!("unexpected {other:?}"),
        };
        out.push((
            path,
            T {
                kind,
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                mtime: h.mtime().unwrap(),
                link,
                content,
                xattrs,
            },
        ));
    }
    out
}

fn tar_map(b: &Built) -> BTreeMap<String, T> {
    read_tar(&b.out.tarball).into_iter().collect()
}

fn refused(result: Result<Built, Error>, needle: &str) -> String {
    match result {
        Ok(_) => panic!("build succeeded, expected an error containing {needle:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(needle), "{msg}");
            msg
        }
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ---- hostile corpus --------------------------------------------------

#[test]
fn dotdot_path_is_refused_and_nothing_escapes() {
    let d = tmp();
    let p = deb(
        d.path(),
        "evil",
        &[E::Dir("./"), E::File("./../../escaped", b"x")],
        None,
        Compression::Xz,
    );
    let msg = refused(build_with(&[p], &Rootfs::default(), true), "'..'");
    assert!(msg.contains("evil"), "names the package: {msg}");
    assert!(!d.path().join("escaped").exists());
}

#[test]
fn absolute_paths_land_inside_the_root() {
    let d = tmp();
    let p = deb(
        d.path(),
        "abs",
        &[E::File("/etc/abs-file", b"in")],
        None,
        Compression::None,
    );
    let b = build(&[p], &Rootfs::default());
    assert_eq!(tar_map(&b)["etc/abs-file"].content, b"in");
}

#[test]
fn symlink_escaping_above_root_then_file_below_is_refused() {
    let d = tmp();
    let p = deb(
        d.path(),
        "evil",
        &[
            E::Symlink("./usr/x", "../../../../.."),
            E::File("./usr/x/tmp/pwned", b"x"),
        ],
        None,
        Compression::Zstd,
    );
    refused(
        build_with(&[p], &Rootfs::default(), true),
        "climbs above the root",
    );
}

#[test]
fn absolute_symlink_to_a_host_path_is_confined_to_the_root() {
    let d = tmp();
    let host_target = d.path().join("host");
    std::fs::create_dir(&host_target).unwrap();
    let target: &'static str = Box::leak(host_target.to_str().unwrap().to_owned().into_boxed_str());
    let p = deb(
        d.path(),
        "evil",
        &[E::Symlink("./out", target), E::File("./out/pwned", b"x")],
        None,
        Compression::Gzip,
    );
    let b = build(&[p], &Rootfs::default());
    assert!(
        !host_target.join("pwned").exists(),
        "wrote through a symlink onto the host"
    );
    let inside = format!("{}/pwned", target.trim_start_matches('/'));
    assert_eq!(tar_map(&b)[&inside].content, b"x");
    let tree = b.out.dir.as_ref().unwrap();
    assert!(tree.join(&inside).is_file());
    assert!(
        std::fs::symlink_metadata(tree.join("out"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn directory_is_not_replaced_by_a_later_symlink() {
    let d = tmp();
    let a = deb(
        d.path(),
        "a",
        &[E::Dir("./usr/share/x/"), E::File("./usr/share/x/f", b"f")],
        None,
        Compression::Xz,
    );
    let b = deb(
        d.path(),
        "b",
        &[
            E::Symlink("./usr/share/x", "/etc"),
            E::File("./usr/share/x/g", b"g"),
        ],
        None,
        Compression::Xz,
    );
    let built = build(&[a, b], &Rootfs::default());
    let t = tar_map(&built);
    assert_eq!(t["usr/share/x"].kind, 'd');
    assert_eq!(t["usr/share/x/g"].content, b"g");
    assert!(!t.contains_key("etc/g"));
    assert!(
        built
            .summary
            .warnings
            .iter()
            .any(|w| w.contains("kept directory /usr/share/x"))
    );
}

#[test]
fn file_replacing_a_directory_is_refused() {
    let d = tmp();
    let p = deb(
        d.path(),
        "evil",
        &[E::Dir("./etc/x/"), E::File("./etc/x", b"f")],
        None,
        Compression::None,
    );
    refused(
        build_with(&[p], &Rootfs::default(), false),
        "would replace directory /etc/x",
    );
}

#[test]
fn file_replaces_a_symlink_instead_of_writing_through_it() {
    let d = tmp();
    let a = deb(
        d.path(),
        "a",
        &[
            E::File("./etc/target", b"keep"),
            E::Symlink("./etc/link", "target"),
        ],
        None,
        Compression::None,
    );
    let b = deb(
        d.path(),
        "b",
        &[E::File("./etc/link", b"new")],
        None,
        Compression::None,
    );
    let built = build(&[a, b], &Rootfs::default());
    let t = tar_map(&built);
    assert_eq!(t["etc/target"].content, b"keep");
    assert_eq!(
        (t["etc/link"].kind, t["etc/link"].content.as_slice()),
        ('f', &b"new"[..])
    );
    assert!(
        built
            .summary
            .warnings
            .iter()
            .any(|w| w == "b overwrites /etc/link from a")
    );
}

#[test]
fn hardlink_outside_or_to_a_symlink_is_refused() {
    let d = tmp();
    let out = deb(
        d.path(),
        "h1",
        &[E::Hardlink("./x", "../../etc/passwd")],
        None,
        Compression::None,
    );
    refused(build_with(&[out], &Rootfs::default(), false), "'..'");
    let to_link = deb(
        d.path(),
        "h2",
        &[E::Symlink("./l", "/etc/passwd"), E::Hardlink("./x", "./l")],
        None,
        Compression::None,
    );
    refused(
        build_with(&[to_link], &Rootfs::default(), false),
        "not a regular file",
    );
    let missing = deb(
        d.path(),
        "h3",
        &[E::Hardlink("./x", "./nothing")],
        None,
        Compression::None,
    );
    refused(
        build_with(&[missing], &Rootfs::default(), false),
        "hardlink target",
    );
}

#[test]
fn hardlinks_are_kept_as_hardlinks() {
    let d = tmp();
    let p = deb(
        d.path(),
        "h",
        &[
            E::File("./usr/bin/b", b"same"),
            E::Hardlink("./usr/bin/a", "./usr/bin/b"),
        ],
        None,
        Compression::None,
    );
    let built = build(&[p], &Rootfs::default());
    let t = tar_map(&built);
    // "a" sorts first, so it carries the content and "b" links to it.
    assert_eq!(t["usr/bin/a"].content, b"same");
    assert_eq!(
        (t["usr/bin/b"].kind, t["usr/bin/b"].link.as_deref()),
        ('h', Some("usr/bin/a"))
    );
    use std::os::unix::fs::MetadataExt;
    let tree = built.out.dir.as_ref().unwrap();
    let ino = |p: &str| std::fs::metadata(tree.join(p)).unwrap().ino();
    assert_eq!(ino("usr/bin/a"), ino("usr/bin/b"));
}

#[test]
fn device_nodes_are_refused_unless_excluded() {
    let d = tmp();
    let p = deb(
        d.path(),
        "dev",
        &[E::Char("./dev/null"), E::Fifo("./run/fifo")],
        None,
        Compression::None,
    );
    let msg = refused(
        build_with(std::slice::from_ref(&p), &Rootfs::default(), false),
        "device nodes",
    );
    assert!(
        msg.contains("package dev") && msg.contains("./dev/null"),
        "{msg}"
    );
    let cfg = Rootfs {
        path_exclude: vec!["/dev/**".into(), "/run/fifo".into()],
        ..Rootfs::default()
    };
    let t = tar_map(&build(&[p], &cfg));
    assert!(!t.contains_key("dev/null") && !t.contains_key("run/fifo"));
}

#[test]
fn duplicate_entries_later_wins() {
    let d = tmp();
    let p = deb(
        d.path(),
        "dup",
        &[E::File("./f", b"first"), E::File("./f", b"second")],
        None,
        Compression::None,
    );
    assert_eq!(
        tar_map(&build(&[p], &Rootfs::default()))["f"].content,
        b"second"
    );
}

#[test]
fn symlink_loops_are_refused() {
    let d = tmp();
    let p = deb(
        d.path(),
        "loop",
        &[
            E::Symlink("./a", "b"),
            E::Symlink("./b", "a"),
            E::File("./a/f", b"x"),
        ],
        None,
        Compression::None,
    );
    refused(
        build_with(&[p], &Rootfs::default(), false),
        "too many levels",
    );
}

#[test]
fn corrupt_deb_is_refused_by_checksum() {
    let d = tmp();
    let mut p = deb(
        d.path(),
        "c",
        &[E::File("./f", b"x")],
        None,
        Compression::None,
    );
    p.sha256 = "00".repeat(32);
    refused(build_with(&[p], &Rootfs::default(), false), "sha256 is");
}

#[test]
fn not_a_deb_is_refused() {
    let d = tmp();
    let path = d.path().join("junk.deb");
    std::fs::write(&path, b"!<arch>\n").unwrap();
    let p = DebInput {
        name: "junk".into(),
        version: "1".into(),
        architecture: "amd64".into(),
        source: "junk".into(),
        source_version: "1".into(),
        sha256: sha256_hex(b"!<arch>\n"),
        path,
    };
    refused(
        build_with(&[p], &Rootfs::default(), false),
        "no data.tar member",
    );
}

// ---- metadata without root ------------------------------------------

#[test]
fn ownership_setuid_and_xattrs_survive_into_the_tarball() {
    let d = tmp();
    let cap = CAP;
    let p = deb(
        d.path(),
        "own",
        &[
            E::Full("./usr/bin/suid", b"s", 0o4755, 0, 0, vec![]),
            E::Full(
                "./usr/bin/ping",
                b"p",
                0o755,
                0,
                0,
                vec![("security.capability", cap)],
            ),
            E::Full("./var/lib/thing", b"t", 0o2750, 1000, 42, vec![]),
        ],
        None,
        Compression::Xz,
    );
    let built = build(&[p], &Rootfs::default());
    let t = tar_map(&built);
    assert_eq!(t["usr/bin/suid"].mode, 0o4755);
    assert_eq!(t["usr/bin/ping"].xattrs["security.capability"], cap);
    let thing = &t["var/lib/thing"];
    assert_eq!((thing.mode, thing.uid, thing.gid), (0o2750, 1000, 42));
    // Every mtime is clamped to the epoch.
    assert!(t.values().all(|e| e.mtime == EPOCH));
    // Parents come before children.
    let order: Vec<String> = read_tar(&built.out.tarball)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    for (i, p) in order.iter().enumerate() {
        let parent = Path::new(p).parent().unwrap().to_str().unwrap().to_owned();
        if !parent.is_empty() {
            assert!(order[..i].contains(&parent), "{p} before its parent");
        }
    }
    use std::os::unix::fs::PermissionsExt;
    let tree = built.out.dir.as_ref().unwrap();
    let mode = std::fs::metadata(tree.join("usr/bin/suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o4755);
}

// ---- layout and assembly --------------------------------------------

fn base_passwd(dir: &Path) -> DebInput {
    deb(
        dir,
        "base-passwd",
        &[
            E::File(
                "./usr/share/base-passwd/passwd.master",
                b"root:*:0:0:root:/root:/bin/sh\ndaemon:*:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
            ),
            E::File(
                "./usr/share/base-passwd/group.master",
                b"root:*:0:\ndaemon:*:1:\nshadow:*:42:\n",
            ),
        ],
        None,
        Compression::Xz,
    )
}

fn text(t: &BTreeMap<String, T>, path: &str) -> String {
    String::from_utf8(t[path].content.clone()).unwrap()
}

#[test]
fn usrmerge_links_and_files_shipped_under_bin() {
    let d = tmp();
    let p = deb(
        d.path(),
        "old",
        &[
            E::Dir("./bin/"),
            E::File("./bin/tool", b"t"),
            E::File("./lib64/ld.so", b"l"),
        ],
        None,
        Compression::None,
    );
    let built = build(&[p], &Rootfs::default());
    let t = tar_map(&built);
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        assert_eq!(
            (t[link].kind, t[link].link.as_deref()),
            ('l', Some(target)),
            "{link}"
        );
    }
    assert_eq!(t["usr/bin/tool"].content, b"t");
    assert_eq!(t["usr/lib64/ld.so"].content, b"l");
    assert!(built.out.dir.as_ref().unwrap().join("bin/tool").is_file());
}

#[test]
fn accounts_from_base_passwd_and_recipe() {
    let d = tmp();
    let cfg = Rootfs {
        groups: vec![Group {
            name: "docker".into(),
            gid: 999,
            members: vec!["svc".into()],
        }],
        users: vec![User {
            name: "svc".into(),
            uid: 998,
            gid: 999,
            home: "/nonexistent".into(),
            shell: "/usr/sbin/nologin".into(),
        }],
        ..Rootfs::default()
    };
    let t = tar_map(&build(&[base_passwd(d.path())], &cfg));
    assert_eq!(
        text(&t, "etc/passwd"),
        "root:*:0:0:root:/root:/bin/sh\ndaemon:*:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nsvc:x:998:999::/nonexistent:/usr/sbin/nologin\n"
    );
    assert_eq!(
        text(&t, "etc/group"),
        "root:*:0:\ndaemon:*:1:\nshadow:*:42:\ndocker:x:999:svc\n"
    );
    let days = EPOCH / 86400;
    assert_eq!(
        text(&t, "etc/shadow"),
        format!(
            "root:*:{days}:0:99999:7:::\ndaemon:*:{days}:0:99999:7:::\nsvc:*:{days}:0:99999:7:::\n"
        )
    );
    assert_eq!((t["etc/shadow"].mode, t["etc/shadow"].gid), (0o640, 42));
    assert!(text(&t, "etc/gshadow").ends_with("docker:*::svc\n"));
}

#[test]
fn minimal_accounts_without_base_passwd_and_clashes_refused() {
    let d = tmp();
    let p = deb(
        d.path(),
        "x",
        &[E::File("./f", b"")],
        None,
        Compression::None,
    );
    let t = tar_map(&build(std::slice::from_ref(&p), &Rootfs::default()));
    assert_eq!(text(&t, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
    assert_eq!(text(&t, "etc/group"), "root:x:0:\n");
    let clash = Rootfs {
        groups: vec![Group {
            name: "docker".into(),
            gid: 0,
            members: vec![],
        }],
        ..Rootfs::default()
    };
    refused(
        build_with(&[p], &clash, false),
        "clashes with existing group root",
    );
}

#[test]
fn etc_files_are_present() {
    let d = tmp();
    let p = deb(
        d.path(),
        "base-files",
        &[
            E::File("./usr/lib/os-release", b"ID=debian\n"),
            E::Symlink("./etc/os-release", "../usr/lib/os-release"),
            E::Dir("./var/run/"),
        ],
        None,
        Compression::None,
    );
    let t = tar_map(&build(&[p], &Rootfs::default()));
    assert_eq!(t["var/run"].link.as_deref(), Some("/run"));
    assert_eq!(t["var/lock"].link.as_deref(), Some("/run/lock"));
    assert_eq!(
        (t["etc/machine-id"].kind, t["etc/machine-id"].content.len()),
        ('f', 0)
    );
    assert_eq!(
        t["etc/os-release"].link.as_deref(),
        Some("../usr/lib/os-release")
    );
    for f in ["etc/hostname", "etc/hosts", "etc/resolv.conf"] {
        assert!(!t[f].content.is_empty(), "{f}");
    }
    assert!(!t.contains_key("etc/ld.so.cache"));
}

const IPTABLES_POSTINST: &str = "#!/bin/sh\nset -e\n\
if [ \"$1\" = \"configure\" ]; then\n\
\tupdate-alternatives \\\n\t  --install /usr/sbin/iptables iptables /usr/sbin/iptables-legacy 10 \\\n\t  --slave /usr/sbin/iptables-save iptables-save /usr/sbin/iptables-legacy-save\n\
\tupdate-alternatives \\\n\t  --install /usr/sbin/iptables iptables /usr/sbin/iptables-nft 20 \\\n\t  --slave /usr/sbin/iptables-save iptables-save /usr/sbin/iptables-nft-save\n\
\tupdate-alternatives --install /usr/sbin/ebtables ebtables /usr/sbin/ebtables-nft 20\n\
fi\n";

fn iptables(dir: &Path) -> DebInput {
    deb(
        dir,
        "iptables",
        &[
            E::File("./usr/sbin/xtables-legacy-multi", b"l"),
            E::Symlink("./usr/sbin/iptables-legacy", "xtables-legacy-multi"),
            E::Symlink("./usr/sbin/iptables-legacy-save", "xtables-legacy-multi"),
            E::File("./usr/sbin/xtables-nft-multi", b"n"),
            E::Symlink("./usr/sbin/iptables-nft", "xtables-nft-multi"),
            E::Symlink("./usr/sbin/iptables-nft-save", "xtables-nft-multi"),
            E::Symlink("./usr/sbin/ebtables-nft", "xtables-nft-multi"),
        ],
        Some(IPTABLES_POSTINST),
        Compression::Xz,
    )
}

#[test]
fn alternatives_follow_priority_then_the_recipe() {
    let d = tmp();
    let auto = build(&[iptables(d.path())], &Rootfs::default());
    assert_eq!(
        auto.summary.alternatives["/usr/sbin/iptables"],
        "/usr/sbin/iptables-nft"
    );
    let t = tar_map(&auto);
    assert_eq!(
        t["usr/sbin/iptables"].link.as_deref(),
        Some("/etc/alternatives/iptables")
    );
    assert_eq!(
        t["etc/alternatives/iptables"].link.as_deref(),
        Some("/usr/sbin/iptables-nft")
    );

    let legacy = Rootfs {
        iptables: Some(IptablesBackend::Legacy),
        ..Rootfs::default()
    };
    let built = build(&[iptables(d.path())], &legacy);
    let alts = &built.summary.alternatives;
    assert_eq!(alts["/usr/sbin/iptables"], "/usr/sbin/iptables-legacy");
    assert_eq!(
        alts["/usr/sbin/iptables-save"],
        "/usr/sbin/iptables-legacy-save"
    );
    // No legacy ebtables in this package: it keeps its only choice.
    assert_eq!(alts["/usr/sbin/ebtables"], "/usr/sbin/ebtables-nft");
    // Absolute links are read one hop at a time: on the host they would
    // lead out of the tree.
    let tree = built.out.dir.as_ref().unwrap();
    let hop = |p: &str| {
        std::fs::read_link(tree.join(p))
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(hop("usr/sbin/iptables"), "/etc/alternatives/iptables");
    assert_eq!(
        hop("etc/alternatives/iptables"),
        "/usr/sbin/iptables-legacy"
    );
    assert_eq!(
        std::fs::read(tree.join("usr/sbin/iptables-legacy")).unwrap(),
        b"l"
    );
}

#[test]
fn recipe_alternatives_override_and_dangling_is_an_error() {
    let d = tmp();
    let tools = deb(
        d.path(),
        "tools",
        &[E::File("./usr/bin/vim.tiny", b"v")],
        None,
        Compression::None,
    );
    let cfg = Rootfs {
        alternatives: [("/usr/bin/editor".to_owned(), "/usr/bin/vim.tiny".to_owned())].into(),
        ..Rootfs::default()
    };
    let built = build(std::slice::from_ref(&tools), &cfg);
    let t = tar_map(&built);
    assert_eq!(
        t["usr/bin/editor"].link.as_deref(),
        Some("/etc/alternatives/editor")
    );
    assert_eq!(
        t["etc/alternatives/editor"].link.as_deref(),
        Some("/usr/bin/vim.tiny")
    );

    let dangling = Rootfs {
        alternatives: [("/usr/bin/editor".to_owned(), "/usr/bin/nano".to_owned())].into(),
        ..Rootfs::default()
    };
    refused(
        build_with(std::slice::from_ref(&tools), &dangling, false),
        "/usr/bin/nano is not in the tree",
    );
    let no_iptables = Rootfs {
        iptables: Some(IptablesBackend::Nft),
        ..Rootfs::default()
    };
    refused(
        build_with(&[tools], &no_iptables, false),
        "no package registers the iptables alternative",
    );
}

#[test]
fn excludes_with_include_exceptions_leave_no_empty_parents() {
    let d = tmp();
    let p = deb(
        d.path(),
        "docs",
        &[
            E::Dir("./usr/share/doc/docs/"),
            E::File("./usr/share/doc/docs/changelog.gz", b"c"),
            E::File("./usr/share/doc/docs/copyright", b"(c)"),
            E::Dir("./usr/share/man/man1/"),
            E::File("./usr/share/man/man1/x.1.gz", b"m"),
            E::File("./etc/rc2.d/S01x", b"r"),
            E::File("./etc/keep", b"k"),
        ],
        None,
        Compression::None,
    );
    let cfg = Rootfs {
        path_exclude: vec![
            "/usr/share/doc/**".into(),
            "/usr/share/man/**".into(),
            "/etc/rc?.d/**".into(),
        ],
        path_include: vec!["/usr/share/doc/*/copyright".into()],
        ..Rootfs::default()
    };
    let t = tar_map(&build(&[p], &cfg));
    assert_eq!(t["usr/share/doc/docs/copyright"].content, b"(c)");
    assert!(!t.contains_key("usr/share/doc/docs/changelog.gz"));
    assert!(!t.contains_key("usr/share/man/man1"));
    assert!(!t.contains_key("etc/rc2.d/S01x"));
    assert!(t.contains_key("etc/keep"));
}

#[test]
fn manifest_lists_packages_sorted() {
    let d = tmp();
    let b = deb(
        d.path(),
        "zeta",
        &[E::File("./z", b"")],
        None,
        Compression::None,
    );
    let a = deb(
        d.path(),
        "alpha",
        &[E::File("./a", b"")],
        None,
        Compression::Gzip,
    );
    let built = build(&[b.clone(), a.clone()], &Rootfs::default());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&built.out.manifest).unwrap()).unwrap();
    let names: Vec<&str> = json["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "zeta"]);
    assert_eq!(json["packages"][0]["sha256"], a.sha256);
    assert_eq!(json["packages"][1]["source_version"], "1.0");
}

#[test]
fn existing_non_empty_output_dir_is_not_clobbered() {
    let d = tmp();
    let p = deb(
        d.path(),
        "x",
        &[E::File("./f", b"")],
        None,
        Compression::None,
    );
    let out_dir = d.path().join("tree");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::write(out_dir.join("precious"), b"p").unwrap();
    let out = Outputs {
        dir: Some(out_dir.clone()),
        tarball: d.path().join("r.tar"),
        manifest: d.path().join("m.json"),
    };
    let err = build_rootfs(&[p], &Rootfs::default(), EPOCH, &out)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("must be absent or an empty directory"),
        "{err}"
    );
    assert!(out_dir.join("precious").exists());
    let leftovers: Vec<PathBuf> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".usmol")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

// ---- reproducibility ------------------------------------------------

#[test]
fn same_input_gives_byte_identical_output_under_other_dirs_umask_and_order() {
    let d = tmp();
    let debs = vec![
        base_passwd(d.path()),
        iptables(d.path()),
        deb(
            d.path(),
            "misc",
            &[
                E::Full(
                    "./usr/bin/suid",
                    b"s",
                    0o4755,
                    0,
                    0,
                    vec![("security.capability", CAP)],
                ),
                E::File("./usr/bin/b", b"same"),
                E::Hardlink("./usr/bin/a", "./usr/bin/b"),
                E::Symlink("./usr/bin/c", "b"),
            ],
            None,
            Compression::Zstd,
        ),
    ];
    let cfg = Rootfs {
        iptables: Some(IptablesBackend::Legacy),
        groups: vec![Group {
            name: "docker".into(),
            gid: 999,
            members: vec![],
        }],
        ..Rootfs::default()
    };
    let first = build(&debs, &cfg);
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let mut reversed = debs.clone();
    reversed.reverse();
    let second = build(&reversed, &cfg);
    rustix::process::umask(old);
    assert_eq!(first.summary.tarball_sha256, second.summary.tarball_sha256);
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert_eq!(
        sha256_hex(&bytes(&first.out.tarball)),
        first.summary.tarball_sha256
    );
    assert!(bytes(&first.out.tarball) == bytes(&second.out.tarball));
    assert!(bytes(&first.out.manifest) == bytes(&second.out.manifest));
    assert_ne!(first.out.tarball, second.out.tarball);
}

#[test]
fn absolute_hardlink_targets_resolve_inside_and_whiteout_names_are_plain_files() {
    let d = tmp();
    // The absolute target names the root's own /etc/passwd-like file, never
    // the host's; a `.wh.` name means nothing to dpkg and is kept as is.
    let p = deb(
        d.path(),
        "abs",
        &[
            E::File("./etc/shadowish", b"inside"),
            E::Hardlink("./etc/h", "/etc/shadowish"),
            E::File("./etc/.wh.shadowish", b""),
            E::File("./etc/.wh..wh..opq", b""),
        ],
        None,
        Compression::None,
    );
    let t = tar_map(&build(&[p], &Rootfs::default()));
    let file = |k: &str| t[k].kind;
    assert_eq!(
        t["etc/h"].content.len() + t["etc/shadowish"].content.len(),
        6
    );
    assert!(file("etc/h") == 'h' || file("etc/shadowish") == 'h');
    assert_eq!(file("etc/.wh.shadowish"), 'f');
    assert_eq!(file("etc/.wh..wh..opq"), 'f');
    let missing = deb(
        d.path(),
        "abs2",
        &[E::Hardlink("./x", "/etc/passwd")],
        None,
        Compression::None,
    );
    refused(
        build_with(&[missing], &Rootfs::default(), false),
        "hardlink target",
    );
}
