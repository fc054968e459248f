//! Guest networking: `eth0` is the virtio-net device the launcher's passt
//! serves. Init asks passt for the configuration with DHCP (passt mirrors
//! or synthesises it; DHCP is the one interface that says what it chose),
//! applies it with ioctls (no iproute2 process: every exec costs
//! milliseconds in UML), writes `/etc/resolv.conf`, and optionally runs the
//! docker API relay the launcher's socket forwards to.
//!
//! The DHCP client is a few dozen lines over a UDP socket bound to the
//! device; the crates that implement DHCP bring DNS stacks and RNGs that a
//! static PID 1 has no use for.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

/// What the DHCP server (passt) assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub mtu: Option<u16>,
    pub domain: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network interface {iface}: {what}: {source}")]
    Interface {
        iface: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("DHCP on {iface}: no {want} from passt after {tries} tries")]
    NoAnswer {
        iface: String,
        want: &'static str,
        tries: u32,
    },
    #[error("DHCP on {iface}: passt refused the request (NAK)")]
    Refused { iface: String },
    #[error("writing {path}: {source}")]
    Resolv {
        path: String,
        source: std::io::Error,
    },
}

const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;
const OPT_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_DNS: u8 = 6;
const OPT_DOMAIN: u8 = 15;
const OPT_MTU: u8 = 26;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_MSG_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMS: u8 = 55;
const OPT_END: u8 = 255;
const OPT_PAD: u8 = 0;

/// A BOOTREQUEST with the broadcast flag set, so the answer reaches a
/// socket on an interface that has no address yet.
pub fn encode_request(
    xid: u32,
    mac: [u8; 6],
    kind: u8,
    offer: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10..12].copy_from_slice(&0x8000u16.to_be_bytes());
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&[OPT_MSG_TYPE, 1, kind]);
    if let Some((address, server)) = offer {
        p.extend_from_slice(&[OPT_REQUESTED_IP, 4]);
        p.extend_from_slice(&address.octets());
        p.extend_from_slice(&[OPT_SERVER_ID, 4]);
        p.extend_from_slice(&server.octets());
    }
    p.extend_from_slice(&[
        OPT_PARAMS, 5, OPT_MASK, OPT_ROUTER, OPT_DNS, OPT_DOMAIN, OPT_MTU,
    ]);
    p.push(OPT_END);
    // Some servers ignore BOOTP messages shorter than 300 bytes.
    p.resize(p.len().max(300), 0);
    p
}

/// A parsed BOOTREPLY for our transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: u8,
    pub server: Option<Ipv4Addr>,
    pub lease: Lease,
}

fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    (b.len() >= 4).then(|| Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

/// Parses a reply; `None` for anything that is not a well-formed answer to
/// `xid` (other traffic on port 68 is simply ignored).
pub fn decode_reply(xid: u32, p: &[u8]) -> Option<Reply> {
    if p.len() < 240 || p[0] != 2 || p[4..8] != xid.to_be_bytes() || p[236..240] != MAGIC {
        return None;
    }
    let mut lease = Lease {
        address: ipv4(&p[16..20])?,
        prefix_len: 24,
        router: None,
        dns: Vec::new(),
        mtu: None,
        domain: None,
    };
    let (mut kind, mut server) = (0u8, None);
    let mut i = 240;
    while i < p.len() {
        let code = p[i];
        if code == OPT_END {
            break;
        }
        if code == OPT_PAD {
            i += 1;
            continue;
        }
        let len = *p.get(i + 1)? as usize;
        let v = p.get(i + 2..i + 2 + len)?;
        match code {
            OPT_MSG_TYPE if len == 1 => kind = v[0],
            OPT_MASK => {
                lease.prefix_len = u32::from_be_bytes(v.try_into().ok()?).count_ones() as u8
            }
            OPT_ROUTER => lease.router = ipv4(v),
            OPT_DNS => lease.dns = v.chunks_exact(4).filter_map(ipv4).collect(),
            OPT_MTU if len == 2 => lease.mtu = Some(u16::from_be_bytes([v[0], v[1]])),
            OPT_DOMAIN => {
                lease.domain = std::str::from_utf8(v)
                    .ok()
                    .map(|s| s.trim_end_matches('\0').to_owned())
            }
            OPT_SERVER_ID => server = ipv4(v),
            _ => {}
        }
        i += 2 + len;
    }
    Some(Reply {
        kind,
        server,
        lease,
    })
}

/// `/etc/resolv.conf` for the lease plus the outer side's search list and
/// options.
pub fn resolv_conf(lease: &Lease, search: &[String], options: &[String]) -> String {
    let mut out = String::from("# written by usmol init from passt's DHCP answer\n");
    for ns in &lease.dns {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    let mut domains: Vec<&str> = search.iter().map(String::as_str).collect();
    if domains.is_empty()
        && let Some(d) = lease.domain.as_deref().filter(|d| !d.is_empty())
    {
        domains.push(d);
    }
    if !domains.is_empty() {
        out.push_str(&format!("search {}\n", domains.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// An `AF_INET` datagram socket for interface ioctls.
struct IoctlSocket(i32);

impl IoctlSocket {
    fn new() -> std::io::Result<Self> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    fn ifreq(iface: &str) -> libc::ifreq {
        // SAFETY: ifreq is plain data; all-zero is valid.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (i, b) in iface.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
            ifr.ifr_name[i] = b as libc::c_char;
        }
        ifr
    }

    fn ioctl<T>(&self, req: libc::c_ulong, arg: &mut T) -> std::io::Result<()> {
        // SAFETY: arg points to the struct the request expects.
        if unsafe { libc::ioctl(self.0, req, arg as *mut T) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for IoctlSocket {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.0) };
    }
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn if_err<'a>(iface: &'a str, what: &'static str) -> impl FnOnce(std::io::Error) -> NetError + 'a {
    move |source| NetError::Interface {
        iface: iface.into(),
        what,
        source,
    }
}

fn link_up_and_mac(iface: &str) -> Result<[u8; 6], NetError> {
    let s = IoctlSocket::new().map_err(if_err(iface, "socket"))?;
    let mut ifr = IoctlSocket::ifreq(iface);
    s.ioctl(libc::SIOCGIFFLAGS, &mut ifr).map_err(if_err(
        iface,
        "reading flags (is the virtio-net device there?)",
    ))?;
    // SAFETY: the union member SIOCGIFFLAGS filled.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    s.ioctl(libc::SIOCSIFFLAGS, &mut ifr)
        .map_err(if_err(iface, "setting it up"))?;
    let mut ifr = IoctlSocket::ifreq(iface);
    s.ioctl(libc::SIOCGIFHWADDR, &mut ifr)
        .map_err(if_err(iface, "reading its MAC address"))?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member.
    let data = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

fn apply(iface: &str, lease: &Lease) -> Result<(), NetError> {
    let s = IoctlSocket::new().map_err(if_err(iface, "socket"))?;
    if let Some(mtu) = lease.mtu {
        let mut ifr = IoctlSocket::ifreq(iface);
        ifr.ifr_ifru.ifru_mtu = mtu as libc::c_int;
        s.ioctl(libc::SIOCSIFMTU, &mut ifr)
            .map_err(if_err(iface, "setting the MTU"))?;
    }
    let mut ifr = IoctlSocket::ifreq(iface);
    ifr.ifr_ifru.ifru_addr = sockaddr(lease.address);
    s.ioctl(libc::SIOCSIFADDR, &mut ifr)
        .map_err(if_err(iface, "setting the address"))?;
    let mask = if lease.prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(lease.prefix_len.min(32)))
    };
    let mut ifr = IoctlSocket::ifreq(iface);
    ifr.ifr_ifru.ifru_netmask = sockaddr(Ipv4Addr::from(mask));
    s.ioctl(libc::SIOCSIFNETMASK, &mut ifr)
        .map_err(if_err(iface, "setting the netmask"))?;
    if let Some(gw) = lease.router {
        let mut name: Vec<u8> = iface.bytes().chain([0]).collect();
        // SAFETY: rtentry is plain data; all-zero is valid.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        rt.rt_dev = name.as_mut_ptr() as *mut libc::c_char;
        s.ioctl(libc::SIOCADDRT, &mut rt)
            .map_err(if_err(iface, "adding the default route"))?;
    }
    Ok(())
}

fn dhcp_socket(iface: &str) -> std::io::Result<UdpSocket> {
    // Bound to the device so the broadcast leaves through it although it
    // has no address yet.
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT))?;
    sock.set_broadcast(true)?;
    let name = iface.as_bytes();
    // SAFETY: name is a valid buffer of the given length.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr() as *const libc::c_void,
            name.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    Ok(sock)
}

fn exchange(
    sock: &UdpSocket,
    iface: &str,
    packet: &[u8],
    xid: u32,
    want: &'static str,
    accept: impl Fn(&Reply) -> bool,
) -> Result<Reply, NetError> {
    const TRIES: u32 = 6;
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT);
    let mut buf = [0u8; 1500];
    for _ in 0..TRIES {
        sock.send_to(packet, to)
            .map_err(if_err(iface, "sending a DHCP request"))?;
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        while std::time::Instant::now() < deadline {
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(if_err(iface, "receiving a DHCP answer")(e)),
            };
            if let Some(r) = decode_reply(xid, &buf[..n]) {
                if r.kind == NAK {
                    return Err(NetError::Refused {
                        iface: iface.into(),
                    });
                }
                if accept(&r) {
                    return Ok(r);
                }
            }
        }
    }
    Err(NetError::NoAnswer {
        iface: iface.into(),
        want,
        tries: TRIES,
    })
}

/// Brings `iface` up and configures it from passt's DHCP answer; writes
/// `resolv_path`.
pub fn configure(
    iface: &str,
    search: &[String],
    options: &[String],
    resolv_path: &str,
) -> Result<Lease, NetError> {
    let mac = link_up_and_mac(iface)?;
    let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ std::process::id();
    let sock = dhcp_socket(iface).map_err(if_err(iface, "opening the DHCP socket"))?;
    let offer = exchange(
        &sock,
        iface,
        &encode_request(xid, mac, DISCOVER, None),
        xid,
        "offer",
        |r| r.kind == OFFER,
    )?;
    let server = offer
        .server
        .or(offer.lease.router)
        .unwrap_or(Ipv4Addr::BROADCAST);
    let ack = exchange(
        &sock,
        iface,
        &encode_request(xid, mac, REQUEST, Some((offer.lease.address, server))),
        xid,
        "acknowledgement",
        |r| r.kind == ACK,
    )?;
    drop(sock);
    apply(iface, &ack.lease)?;
    let text = resolv_conf(&ack.lease, search, options);
    // The image may ship resolv.conf as a symlink; replace it with a file.
    let _ = std::fs::remove_file(resolv_path);
    std::fs::write(resolv_path, text).map_err(|source| NetError::Resolv {
        path: resolv_path.into(),
        source,
    })?;
    Ok(ack.lease)
}

/// Constant-time comparison, so the relay leaks nothing about the token
/// through timing.
pub fn token_matches(given: &[u8], token: &[u8]) -> bool {
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Reads the first line (at most `max` bytes, without the newline).
fn read_line(stream: &mut TcpStream, max: usize) -> Option<Vec<u8>> {
    let mut line = Vec::with_capacity(max);
    let mut byte = [0u8; 1];
    while line.len() <= max {
        match stream.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => return Some(line),
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    None
}

/// Copies both directions until each side ends, then closes.
pub fn splice(a: TcpStream, b: std::os::unix::net::UnixStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let (mut a, mut b) = (a, b);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut a2, &mut b2);
        let _ = b2.shutdown(std::net::Shutdown::Write);
    });
    let _ = std::io::copy(&mut b, &mut a);
    let _ = a.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

/// The docker API relay: each connection must send `token` and a newline
/// within two seconds, then it is joined to `docker_sock`. Runs until the
/// guest powers off.
pub fn spawn_api_relay(token: String, docker_sock: &'static str) -> std::io::Result<()> {
    let listener = TcpListener::bind(SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        usmol_channel::API_RELAY_PORT,
    ))?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let token = token.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let ok = read_line(&mut conn, token.len())
                    .is_some_and(|given| token_matches(&given, token.as_bytes()));
                if !ok {
                    let _ = conn.write_all(b"usmol: wrong or missing token\n");
                    return;
                }
                let _ = conn.set_read_timeout(None);
                match std::os::unix::net::UnixStream::connect(docker_sock) {
                    Ok(d) => splice(conn, d),
                    Err(e) => {
                        crate::log(&format!("api relay: {docker_sock}: {e}"));
                    }
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(xid: u32, kind: u8, opts: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 236];
        p[0] = 2;
        p[4..8].copy_from_slice(&xid.to_be_bytes());
        p[16..20].copy_from_slice(&[192, 0, 2, 2]);
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&[OPT_MSG_TYPE, 1, kind]);
        p.extend_from_slice(opts);
        p.push(OPT_END);
        p
    }

    #[test]
    fn request_layout() {
        let p = encode_request(
            0x01020304,
            [1, 2, 3, 4, 5, 6],
            REQUEST,
            Some(([192, 0, 2, 2].into(), [192, 0, 2, 1].into())),
        );
        assert_eq!(p.len(), 300);
        assert_eq!(&p[..3], &[1, 1, 6]);
        assert_eq!(&p[4..8], &[1, 2, 3, 4]);
        assert_eq!(&p[10..12], &[0x80, 0]);
        assert_eq!(&p[28..34], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(&p[236..240], &MAGIC);
        assert_eq!(&p[240..243], &[OPT_MSG_TYPE, 1, REQUEST]);
        assert_eq!(&p[243..249], &[OPT_REQUESTED_IP, 4, 192, 0, 2, 2]);
    }

    #[test]
    fn ack_is_parsed() {
        let opts = [
            OPT_MASK,
            4,
            255,
            255,
            255,
            0,
            OPT_ROUTER,
            4,
            192,
            0,
            2,
            1,
            OPT_DNS,
            8,
            192,
            0,
            2,
            1,
            10,
            0,
            0,
            53,
            OPT_MTU,
            2,
            0xff,
            0xf0,
            OPT_PAD,
            OPT_SERVER_ID,
            4,
            192,
            0,
            2,
            1,
            OPT_DOMAIN,
            3,
            b'l',
            b'a',
            b'n',
        ];
        let r = decode_reply(7, &reply(7, ACK, &opts)).unwrap();
        assert_eq!(r.kind, ACK);
        assert_eq!(r.server, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(
            r.lease,
            Lease {
                address: Ipv4Addr::new(192, 0, 2, 2),
                prefix_len: 24,
                router: Some(Ipv4Addr::new(192, 0, 2, 1)),
                dns: vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(10, 0, 0, 53)],
                mtu: Some(65520),
                domain: Some("lan".into()),
            }
        );
    }

    #[test]
    fn foreign_or_truncated_replies_are_ignored() {
        assert!(decode_reply(8, &reply(7, ACK, &[])).is_none());
        assert!(decode_reply(7, &reply(7, ACK, &[])[..200]).is_none());
        // An option running past the end.
        assert!(decode_reply(7, &reply(7, ACK, &[OPT_DNS, 200, 1, 2])).is_none());
        let mut req = reply(7, ACK, &[]);
        req[0] = 1;
        assert!(decode_reply(7, &req).is_none());
    }

    #[test]
    fn resolv_conf_keeps_outer_search_and_options() {
        let lease = Lease {
            address: Ipv4Addr::new(192, 0, 2, 2),
            prefix_len: 24,
            router: None,
            dns: vec![Ipv4Addr::new(192, 0, 2, 1)],
            mtu: None,
            domain: Some("lan".into()),
        };
        assert_eq!(
            resolv_conf(
                &lease,
                &["a.example".into(), "b.example".into()],
                &["ndots:2".into()]
            ),
            "# written by usmol init from passt's DHCP answer\nnameserver 192.0.2.1\nsearch a.example b.example\noptions ndots:2\n"
        );
        assert!(resolv_conf(&lease, &[], &[]).contains("search lan\n"));
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abd", b"abc"));
        assert!(!token_matches(b"ab", b"abc"));
        assert!(!token_matches(b"", b"abc"));
    }
}
