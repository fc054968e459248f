//! Which mounts of the outer container become guest volumes.
//!
//! Every bind mount or volume appears in the guest at the same path via
//! hostfs. The container's own root, the kernel pseudo-filesystems, /proc,
//! /sys, /dev and the files docker injects (/etc/hosts, ...) are skipped,
//! and so is any other mount of a single file (apptainer binds
//! /etc/localtime): hostfs mounts directories only.

/// One line of /proc/self/mountinfo, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: String,
    pub read_only: bool,
    pub fstype: String,
}

/// Undoes the octal escapes mountinfo uses for space, tab, newline, `\`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            // id parent major:minor root mount_point options [optional...] - fstype source super_options
            let sep = fields.iter().position(|f| *f == "-")?;
            if sep < 6 || fields.len() < sep + 2 {
                return None;
            }
            let read_only = fields[5].split(',').any(|o| o == "ro");
            Some(MountEntry {
                mount_point: unescape(fields[4]),
                read_only,
                fstype: fields[sep + 1].to_string(),
            })
        })
        .collect()
}

const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "mqueue",
    "securityfs",
    "debugfs",
    "tracefs",
    "bpf",
    "fusectl",
    "configfs",
    "binfmt_misc",
    "hugetlbfs",
    "autofs",
    "pstore",
    "efivarfs",
    "nsfs",
];
const SKIP_UNDER: &[&str] = &["/proc", "/sys", "/dev"];
const SKIP_EXACT: &[&str] = &[
    "/",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/etc/mtab",
];

fn is_under(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The mounts to share with the guest, parents before children. `own` are
/// paths the launcher uses itself (its state dir, its private temp dir).
pub fn volumes(entries: &[MountEntry], own: &[&str]) -> Vec<MountEntry> {
    let mut out: Vec<MountEntry> = Vec::new();
    for e in entries {
        if PSEUDO_FS.contains(&e.fstype.as_str())
            || SKIP_EXACT.contains(&e.mount_point.as_str())
            || SKIP_UNDER.iter().any(|d| is_under(&e.mount_point, d))
            || own.iter().any(|d| is_under(&e.mount_point, d))
            || !e.mount_point.starts_with('/')
            || is_file_mount(&e.mount_point)
        {
            continue;
        }
        // A later mount on the same point hides the earlier one.
        out.retain(|o| o.mount_point != e.mount_point);
        out.push(e.clone());
    }
    out
}

/// A mount point that exists and is not a directory: a bind-mounted file,
/// which a hostfs mount (always a directory) cannot carry into the guest.
fn is_file_mount(mount_point: &str) -> bool {
    std::fs::metadata(mount_point).is_ok_and(|m| !m.is_dir())
}

/// Whether `path` is itself a mount point.
pub fn is_mount_point(entries: &[MountEntry], path: &str) -> bool {
    entries.iter().any(|e| e.mount_point == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = "\
1040 980 0:78 / / rw,relatime master:450 - overlay overlay rw,lowerdir=/x,upperdir=/y,workdir=/z
1041 1040 0:81 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1042 1040 0:82 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1043 1042 0:83 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
1044 1040 0:84 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
1045 1044 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup ro
1046 1042 0:80 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
1047 1042 0:85 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
1048 1040 254:1 /var/lib/docker/containers/abc/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda1 rw
1049 1040 254:1 /var/lib/docker/containers/abc/hostname /etc/hostname rw,relatime - ext4 /dev/vda1 rw
1050 1040 254:1 /var/lib/docker/containers/abc/hosts /etc/hosts rw,relatime - ext4 /dev/vda1 rw
1051 1040 254:1 /home/u/src /src ro,relatime - ext4 /dev/vda1 rw
1052 1040 254:1 /var/lib/docker/volumes/v/_data /data\\040dir rw,relatime - ext4 /dev/vda1 rw
1053 1040 254:1 /var/lib/docker/volumes/s/_data /var/lib/usmol rw,relatime - ext4 /dev/vda1 rw
1054 1051 254:1 /home/u/cache /src/cache rw,relatime shared:5 - ext4 /dev/vda1 rw
1055 1040 0:90 / /tmp rw,nosuid,nodev - tmpfs tmpfs rw
";

    #[test]
    fn parses_fields_and_escapes() {
        let e = parse(DOCKER);
        assert_eq!(e.len(), 16);
        assert_eq!(
            e[12],
            MountEntry {
                mount_point: "/data dir".into(),
                read_only: false,
                fstype: "ext4".into()
            }
        );
        assert!(e[11].read_only);
        assert_eq!(
            e[14].mount_point, "/src/cache",
            "optional fields before '-' are skipped"
        );
    }

    #[test]
    fn selects_only_user_volumes() {
        let v = volumes(&parse(DOCKER), &["/var/lib/usmol"]);
        let points: Vec<(&str, bool)> = v
            .iter()
            .map(|e| (e.mount_point.as_str(), e.read_only))
            .collect();
        assert_eq!(
            points,
            vec![
                ("/src", true),
                ("/data dir", false),
                ("/src/cache", false),
                ("/tmp", false)
            ]
        );
    }

    #[test]
    fn private_dirs_and_their_children_are_skipped() {
        let v = volumes(&parse(DOCKER), &["/tmp"]);
        assert!(!v.iter().any(|e| e.mount_point == "/tmp"));
        assert!(is_under("/tmp/x", "/tmp") && !is_under("/tmpx", "/tmp"));
    }

    #[test]
    fn single_file_mounts_are_skipped() {
        let dir = std::env::temp_dir().join(format!("usmol-mountinfo-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("localtime"), b"TZif").unwrap();
        let d = dir.to_str().unwrap();
        let text =
            format!("1 0 0:1 / {d}/localtime ro - ext4 x rw\n2 0 0:1 / {d}/sub rw - ext4 x rw\n");
        let v = volumes(&parse(&text), &[]);
        std::fs::remove_dir_all(&dir).unwrap();
        let points: Vec<&str> = v.iter().map(|e| e.mount_point.as_str()).collect();
        assert_eq!(points, vec![format!("{d}/sub")]);
    }

    #[test]
    fn remount_on_same_point_keeps_the_last() {
        let text = "1 0 0:1 / /a rw - ext4 x rw\n2 0 0:1 / /a ro - ext4 x rw\n";
        let v = volumes(&parse(text), &[]);
        assert_eq!(v.len(), 1);
        assert!(v[0].read_only);
    }

    #[test]
    fn malformed_lines_are_ignored() {
        assert!(parse("garbage\n1 2 3\n").is_empty());
        assert_eq!(unescape("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape("end\\04"), "end\\04");
    }

    #[test]
    fn mount_point_lookup() {
        let e = parse(DOCKER);
        assert!(is_mount_point(&e, "/var/lib/usmol"));
        assert!(!is_mount_point(&e, "/var/lib"));
    }
}
