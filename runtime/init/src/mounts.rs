//! The guest's filesystem plan: the base pseudo-filesystems, the cgroup2
//! delegation layout, the share and the volumes. Plans are plain data,
//! applied through [`Sys`].

use crate::InitError;
use crate::sys::Sys;
use usmol_channel::{GUEST_SHARE_MOUNT, SHARE_SUBDIR, Volume};

const NOSUID: u64 = libc::MS_NOSUID;
const NODEV: u64 = libc::MS_NODEV;
const NOEXEC: u64 = libc::MS_NOEXEC;

/// One mount of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub flags: u64,
    pub data: String,
    /// Already mounted by the kernel (devtmpfs with DEVTMPFS_MOUNT) is fine.
    pub busy_ok: bool,
}

fn m(source: &str, target: &str, fstype: &str, flags: u64, data: &str) -> Mount {
    Mount {
        source: source.into(),
        target: target.into(),
        fstype: fstype.into(),
        flags,
        data: data.into(),
        busy_ok: false,
    }
}

/// The pseudo-filesystems every boot needs, in order.
pub fn base_plan() -> Vec<Mount> {
    let mut dev = m("devtmpfs", "/dev", "devtmpfs", NOSUID, "mode=0755");
    dev.busy_ok = true;
    vec![
        m("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC, ""),
        m("sysfs", "/sys", "sysfs", NOSUID | NODEV | NOEXEC, ""),
        dev,
        m(
            "devpts",
            "/dev/pts",
            "devpts",
            NOSUID | NOEXEC,
            "gid=5,mode=620,ptmxmode=666",
        ),
        m("shm", "/dev/shm", "tmpfs", NOSUID | NODEV, "mode=1777"),
        m(
            "mqueue",
            "/dev/mqueue",
            "mqueue",
            NOSUID | NODEV | NOEXEC,
            "",
        ),
        m("tmpfs", "/run", "tmpfs", NOSUID | NODEV, "mode=0755"),
        m("tmpfs", "/tmp", "tmpfs", NOSUID | NODEV, "mode=1777"),
        m(
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            NOSUID | NODEV | NOEXEC,
            "nsdelegate",
        ),
    ]
}

/// Symlinks devtmpfs does not create but shells and docker expect.
pub const DEV_LINKS: [(&str, &str); 4] = [
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
];

/// The hostfs share (request and status files).
pub fn share_mount() -> Mount {
    m(
        "hostfs",
        GUEST_SHARE_MOUNT,
        "hostfs",
        NOSUID | NODEV,
        SHARE_SUBDIR,
    )
}

/// One hostfs mount per volume. The trailing slash makes the host resolve
/// the `v/<n>` symlink itself, so the guest sees the volume's directory.
pub fn volume_plan(volumes: &[Volume]) -> Vec<Mount> {
    volumes
        .iter()
        .map(|v| {
            let ro = if v.read_only { libc::MS_RDONLY } else { 0 };
            m(
                "hostfs",
                &v.guest_path,
                "hostfs",
                NODEV | ro,
                &format!("{}/", v.share_path),
            )
        })
        .collect()
}

/// Creates each mount point and mounts it.
pub fn apply(sys: &mut dyn Sys, plan: &[Mount]) -> Result<(), InitError> {
    for mnt in plan {
        sys.mkdir_all(&mnt.target, 0o755)
            .map_err(|e| InitError::Mount {
                what: format!("create mount point {}", mnt.target),
                source: e,
            })?;
        match sys.mount(&mnt.source, &mnt.target, &mnt.fstype, mnt.flags, &mnt.data) {
            Ok(()) => {}
            Err(e) if mnt.busy_ok && e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => {
                return Err(InitError::Mount {
                    what: format!(
                        "mount {} ({}, {:?}) on {}",
                        mnt.source, mnt.fstype, mnt.data, mnt.target
                    ),
                    source: e,
                });
            }
        }
    }
    Ok(())
}

/// cgroup v2 delegation: init moves itself into a leaf (`/init`) so the root
/// cgroup has no processes and can enable every controller for its
/// children (dockerd and containerd create their own groups below).
pub fn setup_cgroups(sys: &mut dyn Sys) -> Result<(), InitError> {
    let err = |what: &str, e| InitError::Cgroup {
        what: what.to_string(),
        source: e,
    };
    sys.mkdir_all("/sys/fs/cgroup/init", 0o755)
        .map_err(|e| err("create /sys/fs/cgroup/init", e))?;
    sys.write_file("/sys/fs/cgroup/init/cgroup.procs", "0")
        .map_err(|e| err("move init into /sys/fs/cgroup/init", e))?;
    let controllers = sys
        .read_file("/sys/fs/cgroup/cgroup.controllers")
        .map_err(|e| err("read /sys/fs/cgroup/cgroup.controllers", e))?;
    let enable = subtree_control_line(&controllers);
    if !enable.is_empty() {
        sys.write_file("/sys/fs/cgroup/cgroup.subtree_control", &enable)
            .map_err(|e| {
                err(
                    "enable controllers in /sys/fs/cgroup/cgroup.subtree_control",
                    e,
                )
            })?;
    }
    Ok(())
}

/// `cpu memory` -> `+cpu +memory`.
pub fn subtree_control_line(controllers: &str) -> String {
    controllers
        .split_whitespace()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::Recorder;

    #[test]
    fn base_plan_mounts_proc_first_and_cgroup2_last() {
        let plan = base_plan();
        assert_eq!(plan[0].target, "/proc");
        assert_eq!(plan.last().unwrap().fstype, "cgroup2");
        let pts = plan.iter().position(|p| p.target == "/dev/pts").unwrap();
        let dev = plan.iter().position(|p| p.target == "/dev").unwrap();
        assert!(dev < pts, "/dev/pts must come after /dev");
    }

    #[test]
    fn devtmpfs_already_mounted_is_not_an_error_but_other_busy_mounts_are() {
        let mut sys = Recorder {
            fail: vec!["devtmpfs /dev".into()],
            ..Default::default()
        };
        apply(&mut sys, &base_plan()).unwrap();
        let mut sys = Recorder {
            fail: vec!["mount proc".into()],
            ..Default::default()
        };
        let e = apply(&mut sys, &base_plan()).unwrap_err().to_string();
        assert!(e.contains("/proc"), "{e}");
    }

    #[test]
    fn volumes_are_hostfs_with_trailing_slash_and_ro_flag() {
        let plan = volume_plan(&[
            Volume {
                share_path: "v/0".into(),
                guest_path: "/data".into(),
                read_only: true,
            },
            Volume {
                share_path: "v/1".into(),
                guest_path: "/w x".into(),
                read_only: false,
            },
        ]);
        assert_eq!(plan[0].data, "v/0/");
        assert_ne!(plan[0].flags & libc::MS_RDONLY, 0);
        assert_eq!(plan[1].flags & libc::MS_RDONLY, 0);
        assert_eq!(plan[1].target, "/w x");
        let mut sys = Recorder::default();
        apply(&mut sys, &plan).unwrap();
        assert_eq!(sys.calls[0], "mkdir /data 755");
        assert!(sys.calls[1].starts_with("mount hostfs /data hostfs"));
    }

    #[test]
    fn cgroup_setup_moves_init_then_enables_all_controllers() {
        let mut sys = Recorder::default();
        sys.files.insert(
            "/sys/fs/cgroup/cgroup.controllers".into(),
            "cpuset cpu io memory pids\n".into(),
        );
        setup_cgroups(&mut sys).unwrap();
        let move_at = sys
            .calls
            .iter()
            .position(|c| c.starts_with("write /sys/fs/cgroup/init/cgroup.procs"))
            .unwrap();
        let enable_at = sys
            .calls
            .iter()
            .position(|c| c.contains("subtree_control"))
            .unwrap();
        assert!(move_at < enable_at);
        assert_eq!(
            sys.files["/sys/fs/cgroup/cgroup.subtree_control"],
            "+cpuset +cpu +io +memory +pids"
        );
    }

    #[test]
    fn no_controllers_means_no_write() {
        let mut sys = Recorder::default();
        sys.files
            .insert("/sys/fs/cgroup/cgroup.controllers".into(), "\n".into());
        setup_cgroups(&mut sys).unwrap();
        assert!(!sys.calls.iter().any(|c| c.contains("subtree_control")));
    }
}
