//! ext4 image from a rootfs-style tarball: content, ownership, modes,
//! xattrs, links, devices, determinism. Needs e2fsprogs (mke2fs, debugfs,
//! e2fsck), not root.

use std::path::Path;
use std::process::Command;

use usmol_oci::{ExtraFile, make_ext4};

const EPOCH: u64 = 1_700_000_000;

fn add(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_mtime(EPOCH + 1000); // later than the epoch: must be clamped
    h.set_size(data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

fn link(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(EPOCH);
    h.set_size(0);
    b.append_link(&mut h, path, target).unwrap();
}

fn rootfs_tar(dir: &Path) -> std::path::PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b, "./", tar::EntryType::Directory, 0o755, 0, b"");
    add(&mut b, "usr/", tar::EntryType::Directory, 0o755, 0, b"");
    add(&mut b, "usr/bin/", tar::EntryType::Directory, 0o755, 0, b"");
    // security.capability as the rootfs crate writes it: a PAX record.
    let cap = [
        1u8, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    b.append_pax_extensions([("SCHILY.xattr.security.capability", &cap[..])])
        .unwrap();
    add(
        &mut b,
        "usr/bin/dockerd",
        tar::EntryType::Regular,
        0o755,
        0,
        &vec![7u8; 300_000],
    );
    add(
        &mut b,
        "usr/bin/su",
        tar::EntryType::Regular,
        0o4755,
        0,
        b"#!/bin/sh\n",
    );
    link(
        &mut b,
        "usr/bin/su-again",
        tar::EntryType::Link,
        "usr/bin/su",
    );
    add(&mut b, "home/", tar::EntryType::Directory, 0o755, 0, b"");
    add(
        &mut b,
        "home/user/",
        tar::EntryType::Directory,
        0o700,
        1000,
        b"",
    );
    add(
        &mut b,
        "home/user/with \"quote\" and space",
        tar::EntryType::Regular,
        0o600,
        1000,
        b"q",
    );
    link(&mut b, "bin", tar::EntryType::Symlink, "usr/bin");
    let long = format!("/{}", "x".repeat(100));
    link(&mut b, "long-link", tar::EntryType::Symlink, &long);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Char);
    h.set_mode(0o666);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(EPOCH);
    h.set_size(0);
    b.append_data(&mut h, "dev/null", &b""[..]).unwrap();
    add(&mut b, "tmp/", tar::EntryType::Directory, 0o1777, 0, b"");
    let p = dir.join("rootfs.tar");
    std::fs::write(&p, b.into_inner().unwrap()).unwrap();
    p
}

fn debugfs(img: &Path, cmd: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(cmd)
        .arg(img)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ext4_from_tarball_is_faithful_and_deterministic() {
    let d = tempfile::tempdir().unwrap();
    let tar = rootfs_tar(d.path());
    let init = d.path().join("init");
    std::fs::write(&init, b"\x7fELF fake init").unwrap();
    let extra = [ExtraFile {
        guest_path: "/usr/lib/usmol/init".into(),
        host_path: init.clone(),
        mode: 0o755,
    }];
    let a = d.path().join("a.ext4");
    let b = d.path().join("b.ext4");
    let sa = make_ext4(&tar, &extra, &[], &a, EPOCH).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let sb = make_ext4(&tar, &extra, &[], &b, EPOCH).unwrap();
    assert_eq!(sa, sb);
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "images differ"
    );
    eprintln!("ext4 summary: {sa:?}");

    // e2fsck already ran inside make_ext4; run it again as the test's own check.
    let fsck = Command::new("e2fsck").arg("-fn").arg(&a).output().unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );

    let dockerd = debugfs(&a, "stat /usr/bin/dockerd");
    assert!(dockerd.contains("Mode:  0755"), "{dockerd}");
    assert!(dockerd.contains("User:     0   Group:     0"), "{dockerd}");
    assert!(dockerd.contains("security.capability (20)"), "{dockerd}");
    assert!(dockerd.contains("Size: 300000"), "{dockerd}");
    assert!(
        dockerd.contains("mtime: 0x6553f100"),
        "mtime not clamped: {dockerd}"
    );

    let su = debugfs(&a, "stat /usr/bin/su");
    assert!(su.contains("Mode:  04755"), "{su}");
    assert!(su.contains("Links: 2"), "{su}");
    let user = debugfs(&a, "stat /home/user");
    assert!(user.contains("User:  1000"), "{user}");
    assert!(user.contains("Mode:  0700"), "{user}");
    let quoted = debugfs(&a, "cat \"/home/user/with \"\"quote\"\" and space\"");
    assert_eq!(quoted, "q");
    let null = debugfs(&a, "stat /dev/null");
    assert!(null.contains("Type: character special"), "{null}");
    assert!(null.contains("Device major/minor number: 01:03"), "{null}");
    let tmp = debugfs(&a, "stat /tmp");
    assert!(tmp.contains("Mode:  01777"), "{tmp}");
    assert!(debugfs(&a, "stat /bin").contains("Fast link dest: \"usr/bin\""));
    assert!(debugfs(&a, "stat /long-link").contains("Type: symlink"));
    assert_eq!(debugfs(&a, "cat /usr/lib/usmol/init"), "\x7fELF fake init");
    let init_stat = debugfs(&a, "stat /usr/lib/usmol/init");
    assert!(
        init_stat.contains("Mode:  0755") && init_stat.contains("User:     0"),
        "{init_stat}"
    );

    // No journal (read-only root) and a small image.
    let features = Command::new("dumpe2fs").arg("-h").arg(&a).output().unwrap();
    let features = String::from_utf8_lossy(&features.stdout);
    assert!(!features.contains("has_journal"), "{features}");
    assert!(std::fs::metadata(&a).unwrap().len() < 8 << 20);
}

#[test]
fn different_content_gives_a_different_uuid() {
    let d = tempfile::tempdir().unwrap();
    let tar = rootfs_tar(d.path());
    let a = make_ext4(&tar, &[], &[], &d.path().join("a"), EPOCH).unwrap();
    let f = d.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    let extra = [ExtraFile {
        guest_path: "/etc/x".into(),
        host_path: f,
        mode: 0o644,
    }];
    let b = make_ext4(&tar, &extra, &[], &d.path().join("b"), EPOCH).unwrap();
    assert_ne!(a.uuid, b.uuid);
}

#[test]
fn tarball_with_dotdot_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut raw = Vec::new();
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..10].copy_from_slice(b"a/../../x\0");
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_cksum();
    raw.extend_from_slice(h.as_bytes());
    raw.extend_from_slice(&[0u8; 1024]);
    let p = d.path().join("bad.tar");
    std::fs::write(&p, raw).unwrap();
    let err = make_ext4(&p, &[], &[], &d.path().join("out"), EPOCH).unwrap_err();
    assert!(err.to_string().contains(".."), "{err}");
    assert!(!d.path().join("out").exists());
}

/// First physical block of `path` in `img`.
fn first_block(img: &Path, path: &str) -> u64 {
    let out = debugfs(img, &format!("bmap {path} 0"));
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("bmap {path}: {out:?}"))
}

#[test]
fn tail_files_end_the_disk_in_the_listed_order() {
    let d = tempfile::tempdir().unwrap();
    let tar = rootfs_tar(d.path());
    let big = d.path().join("big");
    std::fs::write(&big, vec![3u8; 200_000]).unwrap();
    let extra = [ExtraFile {
        guest_path: "/usr/lib/usmol/init".into(),
        host_path: big,
        mode: 0o755,
    }];
    let tail = [
        "/usr/lib/usmol/init".to_owned(),
        "/usr/bin/dockerd".to_owned(),
    ];
    let img = d.path().join("tail.ext4");
    make_ext4(&tar, &extra, &tail, &img, EPOCH).unwrap();
    let init = first_block(&img, "/usr/lib/usmol/init");
    let dockerd = first_block(&img, "/usr/bin/dockerd");
    // In sorted order dockerd comes before su; with the tail, the listed
    // files follow every other file.
    let other = first_block(&img, "\"/home/user/with \"\"quote\"\" and space\"");
    let su = first_block(&img, "/usr/bin/su");
    assert!(
        other < init && su < init,
        "other {other}, su {su}, init {init}"
    );
    assert!(init < dockerd, "init {init}, dockerd {dockerd}");
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn a_tail_entry_missing_from_the_tarball_is_named() {
    let d = tempfile::tempdir().unwrap();
    let tar = rootfs_tar(d.path());
    let out = d.path().join("out");
    for bad in ["/usr/bin/podman", "/usr/bin", "/bin"] {
        let err = make_ext4(&tar, &[], &[bad.to_owned()], &out, EPOCH).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("disk_tail names {bad},")), "{msg}");
        assert!(!out.exists());
    }
}
