//! Hostile layer corpus for `apply_layer`: every case must fail or be
//! contained, and nothing may appear outside the root.

use std::path::Path;

use usmol_oci::apply::Applier;
use usmol_oci::apply_layer;

/// One raw tar entry; names are written verbatim (the tar crate's builder
/// would refuse the hostile ones).
fn entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_size(data.len() as u64);
    h.set_mtime(0);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

fn finish(mut t: Vec<u8>) -> Vec<u8> {
    t.extend_from_slice(&[0u8; 1024]);
    t
}

use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as S};

struct Sandbox {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn sandbox() -> Sandbox {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"original").unwrap();
    Sandbox {
        _tmp: tmp,
        root,
        outside,
    }
}

fn assert_outside_untouched(s: &Sandbox) {
    let names: Vec<_> = std::fs::read_dir(&s.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["victim"], "something was written outside the root");
    assert_eq!(
        std::fs::read(s.outside.join("victim")).unwrap(),
        b"original"
    );
}

#[test]
fn dotdot_paths_are_refused() {
    for name in [
        "../outside/pwned",
        "a/../../outside/pwned",
        "/../outside/pwned",
    ] {
        let s = sandbox();
        let mut t = Vec::new();
        entry(&mut t, name, F, "", b"x");
        let err = apply_layer(&s.root, &finish(t)[..]).unwrap_err();
        assert!(err.to_string().contains("refused"), "{name}: {err}");
        assert_outside_untouched(&s);
    }
}

#[test]
fn absolute_paths_stay_inside() {
    let s = sandbox();
    let mut t = Vec::new();
    entry(&mut t, "/etc/passwd", F, "", b"root");
    apply_layer(&s.root, &finish(t)[..]).unwrap();
    assert_eq!(std::fs::read(s.root.join("etc/passwd")).unwrap(), b"root");
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let s = sandbox();
    let mut t = Vec::new();
    entry(&mut t, "evil", S, s.outside.to_str().unwrap(), b"");
    entry(&mut t, "evil/pwned", F, "", b"x");
    let err = apply_layer(&s.root, &finish(t)[..]).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    assert_outside_untouched(&s);
}

#[test]
fn symlink_from_a_lower_layer_is_not_followed() {
    let s = sandbox();
    let mut a = Applier::new(&s.root);
    let mut t = Vec::new();
    entry(&mut t, "d", S, "../outside", b"");
    a.apply(&finish(t)[..]).unwrap();
    let mut t = Vec::new();
    entry(&mut t, "d/victim", F, "", b"pwned");
    assert!(a.apply(&finish(t)[..]).is_err());
    assert_outside_untouched(&s);
}

#[test]
fn file_over_a_symlink_replaces_the_link() {
    let s = sandbox();
    let mut t = Vec::new();
    entry(
        &mut t,
        "link",
        S,
        s.outside.join("victim").to_str().unwrap(),
        b"",
    );
    entry(&mut t, "link", F, "", b"replaced");
    apply_layer(&s.root, &finish(t)[..]).unwrap();
    assert_eq!(std::fs::read(s.root.join("link")).unwrap(), b"replaced");
    assert!(
        !std::fs::symlink_metadata(s.root.join("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_outside_untouched(&s);
}

#[test]
fn dir_replaced_by_symlink_then_written_is_refused() {
    let s = sandbox();
    let mut t = Vec::new();
    entry(&mut t, "d/", D, "", b"");
    entry(&mut t, "d", S, s.outside.to_str().unwrap(), b"");
    entry(&mut t, "d/pwned", F, "", b"x");
    assert!(apply_layer(&s.root, &finish(t)[..]).is_err());
    assert_outside_untouched(&s);
}

#[test]
fn hardlinks_cannot_reach_outside() {
    for target in ["../outside/victim", "/../outside/victim"] {
        let s = sandbox();
        let mut t = Vec::new();
        entry(&mut t, "h", H, target, b"");
        assert!(apply_layer(&s.root, &finish(t)[..]).is_err(), "{target}");
        assert_outside_untouched(&s);
    }
    // An absolute target is resolved inside the root, where it does not exist.
    let s = sandbox();
    let mut t = Vec::new();
    entry(
        &mut t,
        "h",
        H,
        s.outside.join("victim").to_str().unwrap(),
        b"",
    );
    assert!(apply_layer(&s.root, &finish(t)[..]).is_err());
    assert_outside_untouched(&s);
}

#[test]
fn hardlink_through_a_symlink_is_refused() {
    let s = sandbox();
    let mut t = Vec::new();
    entry(&mut t, "l", S, s.outside.to_str().unwrap(), b"");
    entry(&mut t, "h", H, "l/victim", b"");
    assert!(apply_layer(&s.root, &finish(t)[..]).is_err());
    // A hard link to a symlink itself is refused too.
    let mut t = Vec::new();
    entry(
        &mut t,
        "l2",
        S,
        s.outside.join("victim").to_str().unwrap(),
        b"",
    );
    entry(&mut t, "h2", H, "l2", b"");
    assert!(apply_layer(&s.root, &finish(t)[..]).is_err());
    assert_outside_untouched(&s);
}

#[test]
fn whiteouts_cannot_escape() {
    for name in [".wh..", "a/.wh..", ".wh.", "../.wh.outside"] {
        let s = sandbox();
        let mut t = Vec::new();
        entry(&mut t, name, F, "", b"");
        assert!(apply_layer(&s.root, &finish(t)[..]).is_err(), "{name}");
        assert!(s.root.exists());
        assert_outside_untouched(&s);
    }
    // A whiteout below a symlink would delete outside: refused.
    let s = sandbox();
    let mut a = Applier::new(&s.root);
    let mut t = Vec::new();
    entry(&mut t, "l", S, s.outside.to_str().unwrap(), b"");
    a.apply(&finish(t)[..]).unwrap();
    let mut t = Vec::new();
    entry(&mut t, "l/.wh.victim", F, "", b"");
    assert!(a.apply(&finish(t)[..]).is_err());
    let mut t = Vec::new();
    entry(&mut t, "l/.wh..wh..opq", F, "", b"");
    assert!(a.apply(&finish(t)[..]).is_err());
    assert_outside_untouched(&s);
}

#[test]
fn whiteout_of_a_symlink_removes_the_link_only() {
    let s = sandbox();
    let mut a = Applier::new(&s.root);
    let mut t = Vec::new();
    entry(&mut t, "l", S, s.outside.to_str().unwrap(), b"");
    a.apply(&finish(t)[..]).unwrap();
    let mut t = Vec::new();
    entry(&mut t, ".wh.l", F, "", b"");
    a.apply(&finish(t)[..]).unwrap();
    assert!(std::fs::symlink_metadata(s.root.join("l")).is_err());
    assert_outside_untouched(&s);
}

#[test]
fn whiteouts_and_opaque_dirs_follow_the_spec() {
    let s = sandbox();
    let mut a = Applier::new(&s.root);
    let mut t = Vec::new();
    entry(&mut t, "a/", D, "", b"");
    entry(&mut t, "a/old", F, "", b"1");
    entry(&mut t, "a/sub/", D, "", b"");
    entry(&mut t, "a/sub/deep", F, "", b"1");
    entry(&mut t, "b/", D, "", b"");
    entry(&mut t, "b/gone", F, "", b"1");
    entry(&mut t, "b/kept", F, "", b"1");
    entry(&mut t, "c", F, "", b"1");
    a.apply(&finish(t)[..]).unwrap();

    let mut t = Vec::new();
    // Opaque: lower content of `a` disappears, this layer's stays (order in
    // the tar must not matter).
    entry(&mut t, "a/new", F, "", b"2");
    entry(&mut t, "a/.wh..wh..opq", F, "", b"");
    entry(&mut t, "b/.wh.gone", F, "", b"");
    // Same-layer whiteout does not hide an entry of the same layer.
    entry(&mut t, "d", F, "", b"2");
    entry(&mut t, ".wh.d", F, "", b"");
    // Whiteout of a missing entry is harmless.
    entry(&mut t, ".wh.nothing", F, "", b"");
    a.apply(&finish(t)[..]).unwrap();
    a.finish().unwrap();

    let list = |p: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list(&s.root.join("a")), ["new"]);
    assert_eq!(list(&s.root.join("b")), ["kept"]);
    assert_eq!(list(&s.root), ["a", "b", "c", "d"]);
}

#[test]
fn devices_are_refused_with_a_clear_message() {
    let s = sandbox();
    let mut t = Vec::new();
    entry(&mut t, "dev/null", tar::EntryType::Char, "", b"");
    let err = apply_layer(&s.root, &finish(t)[..]).unwrap_err();
    assert!(err.to_string().contains("device"), "{err}");
}

#[test]
fn setuid_bits_are_dropped_and_readonly_dirs_still_filled() {
    use std::os::unix::fs::PermissionsExt;
    let s = sandbox();
    let mut t = Vec::new();
    let mut h = tar::Header::new_gnu();
    h.set_path("ro/").unwrap();
    h.set_entry_type(D);
    h.set_mode(0o555);
    h.set_size(0);
    h.set_cksum();
    t.extend_from_slice(h.as_bytes());
    let mut h = tar::Header::new_gnu();
    h.set_path("ro/suid").unwrap();
    h.set_entry_type(F);
    h.set_mode(0o4755);
    h.set_size(0);
    h.set_cksum();
    t.extend_from_slice(h.as_bytes());
    apply_layer(&s.root, &finish(t)[..]).unwrap();
    let m = std::fs::metadata(s.root.join("ro/suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(m & 0o7777, 0o755);
    let d = std::fs::metadata(s.root.join("ro"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(d & 0o7777, 0o555);
    std::fs::set_permissions(s.root.join("ro"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn repeated_and_misplaced_whiteouts_are_harmless() {
    let s = sandbox();
    let mut a = Applier::new(&s.root);
    let mut t = Vec::new();
    entry(&mut t, "a/", D, "", b"");
    entry(&mut t, "a/x", F, "", b"1");
    entry(&mut t, "f", F, "", b"1");
    a.apply(&finish(t)[..]).unwrap();
    let mut t = Vec::new();
    // Twice the same whiteout, twice the opaque marker, a whiteout below a
    // regular file, a whiteout of something that never existed.
    entry(&mut t, "a/.wh.x", F, "", b"");
    entry(&mut t, "a/.wh.x", F, "", b"");
    entry(&mut t, "a/.wh..wh..opq", F, "", b"");
    entry(&mut t, "a/.wh..wh..opq", F, "", b"");
    entry(&mut t, ".wh.never", F, "", b"");
    a.apply(&finish(t)[..]).unwrap();
    let mut t = Vec::new();
    entry(&mut t, "f/.wh.x", F, "", b"");
    let err = a.apply(&finish(t)[..]).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
    a.finish().unwrap();
    assert_eq!(std::fs::read_dir(s.root.join("a")).unwrap().count(), 0);
    assert_eq!(std::fs::read(s.root.join("f")).unwrap(), b"1");
    assert_outside_untouched(&s);
}

#[test]
fn duplicate_entries_replace_without_following() {
    let s = sandbox();
    let mut t = Vec::new();
    entry(&mut t, "x", F, "", b"one");
    entry(&mut t, "x/", D, "", b"");
    entry(&mut t, "x/in", F, "", b"in");
    entry(&mut t, "x", F, "", b"two");
    entry(&mut t, "y", S, s.outside.to_str().unwrap(), b"");
    entry(&mut t, "y/", D, "", b"");
    apply_layer(&s.root, &finish(t)[..]).unwrap();
    assert_eq!(std::fs::read(s.root.join("x")).unwrap(), b"two");
    assert!(
        std::fs::symlink_metadata(s.root.join("y"))
            .unwrap()
            .is_dir()
    );
    assert_outside_untouched(&s);
}

#[test]
fn block_devices_and_fifos_are_refused() {
    for kind in [tar::EntryType::Block, tar::EntryType::Fifo] {
        let s = sandbox();
        let mut t = Vec::new();
        entry(&mut t, "dev/x", kind, "", b"");
        let err = apply_layer(&s.root, &finish(t)[..]).unwrap_err();
        assert!(err.to_string().contains("device"), "{kind:?}: {err}");
        assert!(!s.root.join("dev/x").exists());
    }
}
