//! Guest networking from the outer side: passt in vhost-user mode, shipped
//! as `lib/passt`, serves the guest's virtio-net device. It turns guest
//! traffic into ordinary sockets of the outer container (no privileges, no
//! tap device), forwards the ports of `USMOL_PUBLISH` into the guest, and
//! carries the docker API relay behind `USMOL_DOCKER_SOCKET`.
//!
//! passt runs in the foreground with `--one-off`: it quits when the kernel
//! disconnects, and a parent-death signal stops it if the launcher itself
//! is killed.

use crate::LaunchError;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `USMOL_NETWORK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// passt's virtio-net device; the default.
    Passt,
    /// Loopback only.
    None,
}

impl Mode {
    pub fn parse(value: Option<&str>) -> Result<Self, LaunchError> {
        match value.map(str::trim) {
            None | Some("") | Some("passt") => Ok(Mode::Passt),
            Some("none") => Ok(Mode::None),
            Some(v) => Err(LaunchError::Config {
                what: format!("USMOL_NETWORK={v:?}"),
                fix: "use passt (the default) or none".into(),
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One `USMOL_PUBLISH` entry: outer port (on `address`, else every
/// address) forwarded to a guest port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub address: Option<std::net::IpAddr>,
    pub outer: u16,
    pub guest: u16,
    pub proto: Proto,
}

impl Publish {
    /// passt's `-t`/`-u` argument pair.
    pub fn passt_args(&self) -> [String; 2] {
        let flag = match self.proto {
            Proto::Tcp => "-t",
            Proto::Udp => "-u",
        };
        let addr = match self.address {
            Some(a) => format!("{a}/"),
            None => String::new(),
        };
        [flag.into(), format!("{addr}{}:{}", self.outer, self.guest)]
    }
}

fn port(text: &str, item: &str) -> Result<u16, LaunchError> {
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(publish_error(
            item,
            &format!("{text:?} is not a port (1-65535)"),
        )),
    }
}

fn publish_error(item: &str, why: &str) -> LaunchError {
    LaunchError::Config {
        what: format!("USMOL_PUBLISH entry {item:?}: {why}"),
        fix: "write entries like docker's -p, separated by commas: 8080, 8080:80, 127.0.0.1:8080:80, [::1]:8080:80, 5353:53/udp".into(),
    }
}

/// Parses `USMOL_PUBLISH`: docker `-p` syntax, `[ADDR:]OUTER[:GUEST][/tcp|/udp]`,
/// entries separated by commas or whitespace.
pub fn parse_publish(text: &str) -> Result<Vec<Publish>, LaunchError> {
    let mut out = Vec::new();
    for item in text.split([',', ' ', '\t', '\n']).filter(|s| !s.is_empty()) {
        let (spec, proto) = match item.rsplit_once('/') {
            Some((s, "tcp")) => (s, Proto::Tcp),
            Some((s, "udp")) => (s, Proto::Udp),
            Some((_, p)) => return Err(publish_error(item, &format!("unknown protocol {p:?}"))),
            None => (item, Proto::Tcp),
        };
        let (address, ports) = if let Some(rest) = spec.strip_prefix('[') {
            let (a, ports) = rest
                .split_once("]:")
                .ok_or_else(|| publish_error(item, "an IPv6 address needs the form [ADDR]:PORT"))?;
            let a: Ipv6Addr = a
                .parse()
                .map_err(|_| publish_error(item, &format!("{a:?} is not an IPv6 address")))?;
            (Some(a.into()), ports)
        } else {
            let parts: Vec<&str> = spec.split(':').collect();
            match parts.len() {
                1 | 2 => (None, spec),
                3 => {
                    let a: Ipv4Addr = parts[0].parse().map_err(|_| {
                        publish_error(item, &format!("{:?} is not an IPv4 address", parts[0]))
                    })?;
                    (Some(a.into()), &spec[parts[0].len() + 1..])
                }
                _ => return Err(publish_error(item, "too many ':'")),
            }
        };
        let (outer, guest) = match ports.split_once(':') {
            Some((o, g)) => (port(o, item)?, port(g, item)?),
            None => {
                let p = port(ports, item)?;
                (p, p)
            }
        };
        out.push(Publish {
            address,
            outer,
            guest,
            proto,
        });
    }
    Ok(out)
}

/// `search` and `options` of a resolv.conf (the nameservers reach the
/// guest through passt's DHCP, which maps loopback resolvers).
pub fn resolv_search_options(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut search, mut options) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            // The last search/domain line wins, as in the resolver.
            Some("search") | Some("domain") => search = words.map(str::to_owned).collect(),
            Some("options") => options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    (search, options)
}

/// A running passt and its log.
pub struct Passt {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Passt {
    /// Starts `binary` serving `socket` and waits until the socket is
    /// there, so the kernel finds it when it probes the device.
    pub fn start(
        binary: &Path,
        socket: &Path,
        log: &Path,
        publish: &[Publish],
        debug: bool,
    ) -> Result<Self, LaunchError> {
        let fail = |detail: String| {
            LaunchError::Config {
            what: format!("starting passt ({}): {detail}", binary.display()),
            fix: "run with USMOL_DEBUG=1 for passt's log, or USMOL_NETWORK=none to run without a network".into(),
        }
        };
        let log_file =
            std::fs::File::create(log).map_err(|e| fail(format!("{}: {e}", log.display())))?;
        let mut cmd = Command::new(binary);
        cmd.arg("--vhost-user")
            .arg("--socket")
            .arg(socket)
            .args(["--foreground", "--one-off"])
            // IPv4 only: the guest has no IPv6 configuration, and a
            // forwarded [::]:port must refuse, not accept into nothing.
            .arg("--ipv4-only");
        if debug {
            cmd.arg("--debug");
        }
        for p in publish {
            cmd.args(p.passt_args());
        }
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| fail(e.to_string()))?)
            .stderr(log_file);
        // SAFETY: prctl and sigprocmask are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
        let mut passt = Passt {
            child,
            socket: socket.to_owned(),
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        // Probe by existence: a test connection would be passt's one
        // client under --one-off.
        loop {
            if let Ok(Some(status)) = passt.child.try_wait() {
                return Err(fail(format!("exited with {status}: {}", passt.log_tail(8))));
            }
            if socket.exists() {
                return Ok(passt);
            }
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "its socket {} did not appear within 10 s: {}",
                    socket.display(),
                    passt.log_tail(8)
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The last lines of passt's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join(" | ")
    }

    /// `Some(status)` once passt has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The outer end of the docker API relay: a unix socket at `path` whose
/// connections are joined, after the token line, to init's relay port
/// through passt's forward on 127.0.0.1:`port`.
pub struct ApiSocket {
    path: PathBuf,
}

impl ApiSocket {
    pub fn start(path: &Path, port: u16, token: String) -> Result<Self, LaunchError> {
        let fail = |detail: String| {
            LaunchError::Config {
            what: format!("USMOL_DOCKER_SOCKET={}: {detail}", path.display()),
            fix: "name a path in a writable directory (a volume shared with the outer side), not an existing file".into(),
        }
        };
        if !path.is_absolute() {
            return Err(fail("not an absolute path".into()));
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                // A socket left by an earlier run that was killed.
                if UnixStream::connect(path).is_ok() {
                    return Err(fail("another process is serving it".into()));
                }
                std::fs::remove_file(path)
                    .map_err(|e| fail(format!("removing the stale socket: {e}")))?;
            }
            Ok(_) => return Err(fail("exists and is not a socket".into())),
            Err(_) => {}
        }
        let listener = UnixListener::bind(path).map_err(|e| fail(e.to_string()))?;
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let token = token.clone();
                std::thread::spawn(move || relay(conn, port, &token));
            }
        });
        Ok(ApiSocket {
            path: path.to_owned(),
        })
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn relay(client: UnixStream, port: u16, token: &str) {
    let Ok(mut guest) = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))) else {
        return;
    };
    if guest.write_all(format!("{token}\n").as_bytes()).is_err() {
        return;
    }
    let _ = guest.set_nodelay(true);
    let (Ok(mut guest_r), Ok(mut client_w)) = (guest.try_clone(), client.try_clone()) else {
        return;
    };
    let mut client_r = client;
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_r, &mut guest);
        let _ = guest.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut guest_r, &mut client_w);
    let _ = client_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// A free TCP port on 127.0.0.1 for passt's forward of the API relay.
pub fn free_loopback_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(Mode::parse(None).unwrap(), Mode::Passt);
        assert_eq!(Mode::parse(Some("none")).unwrap(), Mode::None);
        let e = Mode::parse(Some("slirp")).unwrap_err().to_string();
        assert!(
            e.contains("USMOL_NETWORK=\"slirp\"") && e.contains("passt"),
            "{e}"
        );
    }

    #[test]
    fn publish_entries_follow_docker_syntax() {
        let p =
            parse_publish("8080, 8443:443 127.0.0.1:9000:90,[::1]:7000:70 5353:53/udp").unwrap();
        let args: Vec<String> = p.iter().flat_map(|p| p.passt_args()).collect();
        assert_eq!(
            args,
            [
                "-t",
                "8080:8080",
                "-t",
                "8443:443",
                "-t",
                "127.0.0.1/9000:90",
                "-t",
                "::1/7000:70",
                "-u",
                "5353:53"
            ]
        );
        assert!(parse_publish("").unwrap().is_empty());
    }

    #[test]
    fn bad_publish_entries_are_named() {
        for (bad, why) in [
            ("80:0", "not a port"),
            ("http", "not a port"),
            ("1.2.3:80:80", "not an IPv4 address"),
            ("80/sctp", "unknown protocol"),
            ("[::1:80", "IPv6"),
            ("a:b:c:d", "too many"),
            ("70000", "not a port"),
        ] {
            let e = parse_publish(&format!("8080,{bad}"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains(why),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn resolv_conf_search_and_options() {
        let (s, o) = resolv_search_options(
            "# generated\nnameserver 127.0.0.11\ndomain old.example\nsearch a.example b.example\noptions ndots:0\noptions edns0\n",
        );
        assert_eq!(s, ["a.example", "b.example"]);
        assert_eq!(o, ["ndots:0", "edns0"]);
        assert_eq!(resolv_search_options(""), (vec![], vec![]));
    }
}
