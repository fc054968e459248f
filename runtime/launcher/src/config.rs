//! Pure decisions: which environment reaches the guest, the `USMOL_*`
//! knobs, and the kernel command line.

use crate::LaunchError;
use std::path::Path;

/// Variables forwarded to the guest command when set on the host.
pub const ENV_ALLOW: &[&str] = &[
    "TERM",
    "COLORTERM",
    "LANG",
    "LANGUAGE",
    "TZ",
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "DOCKER_BUILDKIT",
    "BUILDKIT_PROGRESS",
    "NO_COLOR",
];

/// The guest command's environment from the host's: the allow-list, every
/// `LC_*` and `USMOL_*`, and the names listed in `USMOL_ENV` (comma
/// separated). Host order is kept.
pub fn guest_env(host: &[(String, String)]) -> Vec<(String, String)> {
    let extra: Vec<String> = host
        .iter()
        .find(|(k, _)| k == "USMOL_ENV")
        .map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    host.iter()
        .filter(|(k, _)| {
            ENV_ALLOW.contains(&k.as_str())
                || k.starts_with("LC_")
                || k.starts_with("USMOL_")
                || extra.iter().any(|e| e == k)
        })
        .cloned()
        .collect()
}

/// `USMOL_DOCKERD_ARGS` split like a shell would for simple cases:
/// whitespace separates, single or double quotes group.
pub fn split_args(text: &str) -> Result<Vec<String>, LaunchError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(LaunchError::Config {
            what: format!("USMOL_DOCKERD_ARGS={text:?}"),
            fix: "close the quote".into(),
        });
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// A boolean knob: 1/true/yes/on or 0/false/no/off.
pub fn flag(name: &str, value: Option<&str>, default: bool) -> Result<bool, LaunchError> {
    match value.map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
        Some(v) if ["0", "false", "no", "off", ""].contains(&v.as_str()) => Ok(false),
        Some(v) => Err(LaunchError::Config {
            what: format!("{name}={v:?}"),
            fix: "use 1 or 0".into(),
        }),
    }
}

/// How UML runs guest processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seccomp {
    On,
    Auto,
    Off,
}

impl Seccomp {
    pub fn parse(value: Option<&str>) -> Result<Self, LaunchError> {
        match value.map(str::trim) {
            None | Some("auto") | Some("") => Ok(Seccomp::Auto),
            Some("on") => Ok(Seccomp::On),
            Some("off") => Ok(Seccomp::Off),
            Some(v) => Err(LaunchError::Config {
                what: format!("USMOL_SECCOMP={v:?}"),
                fix: "use on, off or auto".into(),
            }),
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Seccomp::On => "on",
            Seccomp::Auto => "auto",
            Seccomp::Off => "off",
        }
    }
}

/// Everything the kernel command line depends on.
#[derive(Debug, Clone)]
pub struct KernelPlan<'a> {
    pub memory_mib: u64,
    /// `None`: do not pass `ncpus` (ptrace mode has no SMP).
    pub ncpus: Option<u32>,
    pub seccomp: Seccomp,
    pub root_cow: &'a Path,
    pub rootfs: &'a Path,
    pub docker_disk: &'a Path,
    pub hostfs_root: &'a Path,
    /// The volume links below `hostfs_root` (`v/<n>`): the kernel resolves
    /// them once at boot and confines every hostfs mount to `hostfs_root`
    /// and their targets (kernel patch 0003).
    pub volume_links: &'a [String],
    /// UML's umid/mconsole directory (default `~/.uml`, which needs $HOME).
    pub uml_dir: &'a Path,
    /// passt's vhost-user socket: the guest gets a virtio-net device.
    pub net_socket: Option<&'a Path>,
    pub debug: bool,
}

/// Host fds the UML process is given, and the console line each feeds.
pub mod fds {
    /// UML's own host messages and the kernel console (con0 output).
    pub const LOG: i32 = 1;
    /// Input of the stdio console (host stdin, or the launcher's relay pipe).
    pub const STDIN: i32 = 3;
    pub const STDOUT: i32 = 4;
    pub const STDERR: i32 = 5;
    /// Control lines launcher -> init.
    pub const CONTROL_IN: i32 = 6;
    /// Control lines init -> launcher.
    pub const CONTROL_OUT: i32 = 7;
}

/// Delay-loop iterations per jiffy, so the kernel skips calibrating them
/// (40-90 ms of a boot). The loop only times `udelay()` busy-waits, which
/// no UML driver relies on. The value is a loop of 6 G iterations a second
/// at CONFIG_HZ=100: on any slower host the waits last longer than asked,
/// not shorter.
pub const PRESET_LPJ: u64 = 60_000_000;

/// The kernel command line. Paths must not contain spaces or commas (the
/// private temp dir is chosen so; the artifact dir is checked).
pub fn kernel_args(p: &KernelPlan) -> Vec<String> {
    let mut a = vec![
        format!("mem={}M", p.memory_mib),
        format!("seccomp={}", p.seccomp.as_str()),
        format!("lpj={PRESET_LPJ}"),
    ];
    if let Some(n) = p.ncpus {
        a.push(format!("ncpus={n}"));
    }
    a.extend([
        format!("ubd0={},{}", p.root_cow.display(), p.rootfs.display()),
        format!("ubd1={}", p.docker_disk.display()),
        "root=/dev/ubda".into(),
        "rootfstype=ext4".into(),
        "rw".into(),
        format!("init={}", usmol_channel::INIT_PATH),
        format!("hostfs={}", p.hostfs_root.display()),
    ]);
    a.extend(
        p.volume_links
            .iter()
            .map(|link| format!("hostfs_volume={link}")),
    );
    if let Some(sock) = p.net_socket {
        // Virtio device id 1 is a network card.
        a.push(format!("virtio_uml.device={}:1", sock.display()));
    }
    a.extend([
        format!("uml_dir={}", p.uml_dir.display()),
        // Every console line off, then the ones we use.
        "con=null".into(),
        "ssl=null".into(),
        format!("con0=null,fd:{}", fds::LOG),
        format!("con1=fd:{},fd:{}", fds::STDIN, fds::STDOUT),
        format!("con2=null,fd:{}", fds::STDERR),
        format!("con3=fd:{},fd:{}", fds::CONTROL_IN, fds::CONTROL_OUT),
    ]);
    if p.debug {
        a.push("loglevel=7".into());
    } else {
        a.push("quiet".into());
    }
    a
}

/// Paths on the kernel command line cannot hold separators UML splits on.
pub fn check_kernel_path(path: &Path) -> Result<(), LaunchError> {
    let s = path.to_string_lossy();
    if s.contains([' ', ',', ':', '\n', '\t']) || !path.is_absolute() {
        return Err(LaunchError::Config {
            what: format!("path {s:?}"),
            fix: "the kernel command line cannot carry paths with spaces, commas or colons; move the artifact or set USMOL_TMPDIR / USMOL_DISK to a plain absolute path".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_allow_list_prefixes_and_explicit_names() {
        let host = kv(&[
            ("PATH", "/x"),
            ("HOME", "/h"),
            ("TERM", "xterm-256color"),
            ("LC_ALL", "C"),
            ("USMOL_DEBUG", "1"),
            ("SECRET", "s"),
            ("MY_TOKEN", "t"),
            ("USMOL_ENV", "MY_TOKEN, OTHER"),
            ("DOCKER_HOST", "tcp://x"),
        ]);
        let names: Vec<String> = guest_env(&host).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            vec!["TERM", "LC_ALL", "USMOL_DEBUG", "MY_TOKEN", "USMOL_ENV"]
        );
    }

    #[test]
    fn dockerd_args_split_with_quotes() {
        assert_eq!(
            split_args("  --debug --log-level=warn ").unwrap(),
            vec!["--debug", "--log-level=warn"]
        );
        assert_eq!(
            split_args("--label 'a b' \"\"").unwrap(),
            vec!["--label", "a b", ""]
        );
        assert!(split_args("'open").is_err());
        assert!(split_args("").unwrap().is_empty());
    }

    #[test]
    fn flags() {
        assert!(flag("X", Some("yes"), false).unwrap());
        assert!(!flag("X", Some("0"), true).unwrap());
        assert!(flag("X", None, true).unwrap());
        assert!(flag("X", Some("maybe"), true).is_err());
    }

    #[test]
    fn kernel_command_line() {
        let p = KernelPlan {
            memory_mib: 3072,
            ncpus: Some(2),
            seccomp: Seccomp::Auto,
            root_cow: Path::new("/tmp/u/root.cow"),
            rootfs: Path::new("/usmol/lib/rootfs.ext4"),
            docker_disk: Path::new("/var/lib/usmol/docker.ext4"),
            hostfs_root: Path::new("/tmp/u/hostfs"),
            volume_links: &[],
            uml_dir: Path::new("/tmp/u"),
            net_socket: None,
            debug: false,
        };
        let line = kernel_args(&p).join(" ");
        assert_eq!(
            line,
            "mem=3072M seccomp=auto lpj=60000000 ncpus=2 ubd0=/tmp/u/root.cow,/usmol/lib/rootfs.ext4 \
             ubd1=/var/lib/usmol/docker.ext4 root=/dev/ubda rootfstype=ext4 rw init=/usr/lib/usmol/init \
             hostfs=/tmp/u/hostfs uml_dir=/tmp/u con=null ssl=null con0=null,fd:1 con1=fd:3,fd:4 con2=null,fd:5 \
             con3=fd:6,fd:7 quiet"
        );
        let no_smp = KernelPlan {
            ncpus: None,
            debug: true,
            ..p
        };
        let line = kernel_args(&no_smp).join(" ");
        assert!(!line.contains("ncpus") && line.ends_with("loglevel=7"));
        let links = ["v/0".to_owned(), "v/1".to_owned()];
        let with_volumes = KernelPlan {
            volume_links: &links,
            ..p
        };
        let line = kernel_args(&with_volumes).join(" ");
        assert!(
            line.contains(
                "hostfs=/tmp/u/hostfs hostfs_volume=v/0 hostfs_volume=v/1 uml_dir=/tmp/u"
            ),
            "{line}"
        );
        let with_net = KernelPlan {
            net_socket: Some(Path::new("/tmp/u/passt.sock")),
            ..p
        };
        let line = kernel_args(&with_net).join(" ");
        assert!(
            line.contains("hostfs=/tmp/u/hostfs virtio_uml.device=/tmp/u/passt.sock:1 uml_dir="),
            "{line}"
        );
    }

    #[test]
    fn kernel_paths_are_checked() {
        assert!(check_kernel_path(Path::new("/a/b")).is_ok());
        assert!(check_kernel_path(Path::new("/a b")).is_err());
        assert!(check_kernel_path(Path::new("/a,b")).is_err());
        assert!(check_kernel_path(Path::new("rel")).is_err());
    }
}
