//! Golden tests of guest networking through passt, on the host's docker
//! engine. Traffic stays on loopback and in namespaces the tests create:
//! the outer container runs with `--network host` only where a test serves
//! or fetches on the host's 127.0.0.1, and with `--network none` otherwise.
//! Slow: each runs only with USMOL_SLOW_TESTS=1 and an engine (CI has both).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::engine::{UsmolImage, engine_answers, open_dir, usmol, usmol_on, vol};
use common::tool_image;

/// Serves `body` for every request on a fresh 127.0.0.1 port until the
/// returned listener thread is dropped with the test process.
fn serve_on_loopback(body: Vec<u8>) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut req = [0u8; 4096];
                let _ = conn.read(&mut req);
                let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body);
            });
        }
    });
    port
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    let mut v = vec![0u8; n];
    f.read_exact(&mut v).unwrap();
    v
}

/// HTTP/1.0 GET on the outer side; `None` if nothing answers in time.
fn http_get(addr: SocketAddr, timeout: Duration) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).ok()?;
    let at = all.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some(all[at..].to_vec())
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(path: &Path, limit: Duration, child: &mut std::process::Child) {
    let start = Instant::now();
    while !path.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("usmol exited with {st} before {} appeared", path.display());
        }
        assert!(
            start.elapsed() < limit,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `docker run` of usmol in the background, for tests that talk to it
/// while it runs; the container is removed when this is dropped.
struct Background {
    name: String,
    child: std::process::Child,
}

impl Background {
    fn start(network: &str, flags: &[&str], args: &[&str]) -> Background {
        let name = format!("usmol-net-{}-{}", std::process::id(), free_port());
        let child = Command::new("docker")
            .args(["run", "--rm", "--network", network, "--name", &name])
            .args(flags)
            .arg(common::engine::IMAGE)
            .args(args)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Background { name, child }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
        let _ = self.child.wait();
    }
}

#[test]
fn inner_containers_fetch_from_the_outer_loopback() {
    if !engine_answers("inner_containers_fetch_from_the_outer_loopback") {
        return;
    }
    let _image = UsmolImage::acquire();
    let body = random_bytes(4 << 20);
    let port = serve_on_loopback(body.clone());
    let work = open_dir();
    let dir = work.path().display().to_string();
    tool_image(work.path());
    // passt maps the guest's gateway address to the outer loopback; the
    // inner containers reach it through the guest's NAT (default bridge)
    // and directly (--network host).
    let script = format!(
        "set -e
docker load -q -i tool.tar >/dev/null
gw=$(ip route | awk '/^default/ {{print $3}}')
docker run --rm usmol-tool:latest get \"$gw\" {port} /blob > bridge.out
docker run --rm --network host usmol-tool:latest get \"$gw\" {port} /blob > host.out
cat /etc/resolv.conf"
    );
    let mount = vol(work.path(), &dir);
    let out = usmol_on(
        "host",
        &["-v", &mount, "-w", &dir],
        &["sh", "-c", &script],
        None,
    );
    out.expect_code(0);
    for name in ["bridge.out", "host.out"] {
        let got = std::fs::read(work.path().join(name)).unwrap();
        assert!(
            got == body,
            "{name}: {} bytes, differ from the {} served\n{out}",
            got.len(),
            body.len()
        );
    }
    assert!(out.stdout_text().contains("nameserver "), "{out}");
}

#[test]
fn a_published_port_reaches_an_inner_container() {
    if !engine_answers("a_published_port_reaches_an_inner_container") {
        return;
    }
    let _image = UsmolImage::acquire();
    let work = open_dir();
    let dir = work.path().display().to_string();
    tool_image(work.path());
    let page = format!("served from an inner container ({})\n", std::process::id());
    std::fs::write(work.path().join("page"), &page).unwrap();
    let port = free_port();
    let script = "set -e
docker load -q -i tool.tar >/dev/null
docker run -d --rm -p 8080:80 -v \"$PWD:/w\" usmol-tool:latest serve 80 /w/page >/dev/null
touch ready
while [ ! -e done ]; do sleep 0.2; done";
    let mount = vol(work.path(), &dir);
    let publish = format!("USMOL_PUBLISH={port}:8080");
    let mut bg = Background::start(
        "host",
        &["-v", &mount, "-w", &dir, "-e", &publish],
        &["sh", "-c", script],
    );
    wait_for(
        &work.path().join("ready"),
        Duration::from_secs(300),
        &mut bg.child,
    );
    // The inner server may need a moment after `docker run -d` returns.
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let start = Instant::now();
    let got = loop {
        if let Some(b) = http_get(v4, Duration::from_secs(10)) {
            break b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nothing answered on {v4}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(String::from_utf8_lossy(&got), page);
    // IPv6 loopback: either the same page or a prompt refusal, never a
    // connection that hangs.
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    let t = Instant::now();
    if let Some(b) = http_get(v6, Duration::from_secs(10)) {
        assert_eq!(String::from_utf8_lossy(&b), page);
    }
    assert!(t.elapsed() < Duration::from_secs(10), "[::1]:{port} hung");
    std::fs::write(work.path().join("done"), "").unwrap();
    let status = bg.child.wait().unwrap();
    assert!(status.success(), "usmol exited with {status}");
}

#[test]
fn containers_on_a_user_network_reach_each_other_by_name() {
    if !engine_answers("containers_on_a_user_network_reach_each_other_by_name") {
        return;
    }
    let _image = UsmolImage::acquire();
    let work = open_dir();
    let dir = work.path().display().to_string();
    tool_image(work.path());
    let page = format!("answered by name ({})\n", std::process::id());
    std::fs::write(work.path().join("page"), &page).unwrap();
    let script = "set -e
docker load -q -i tool.tar >/dev/null
docker network create golden >/dev/null
docker run -d --rm --name server --network golden -v \"$PWD:/w\" usmol-tool:latest serve 80 /w/page >/dev/null
for i in 1 2 3 4 5 6 7 8 9 10; do
  if docker run --rm --network golden usmol-tool:latest get server 80 / > got; then break; fi
  sleep 0.5
done
docker rm -f server >/dev/null
docker network rm golden >/dev/null";
    let mount = vol(work.path(), &dir);
    let out = usmol(&["-v", &mount, "-w", &dir], &["sh", "-c", script], None);
    out.expect_code(0);
    let got = std::fs::read_to_string(work.path().join("got")).unwrap_or_default();
    assert_eq!(got, page, "{out}");
}

/// dockerd's network hook: with crun (the default) init serves it, so no
/// Go start of dockerd per container; with runc dockerd's own re-exec
/// stays. Either way the container's namespace is wired: another
/// container fetches from its server on the default bridge.
#[test]
fn the_network_hook_is_inits_under_crun_and_dockerds_under_runc() {
    if !engine_answers("the_network_hook_is_inits_under_crun_and_dockerds_under_runc") {
        return;
    }
    let _image = UsmolImage::acquire();
    let work = open_dir();
    let dir = work.path().display().to_string();
    tool_image(work.path());
    let page = format!("served on the default bridge ({})\n", std::process::id());
    std::fs::write(work.path().join("page"), &page).unwrap();
    let script = "set -e
docker load -q -i tool.tar >/dev/null
for runtime in crun runc; do
  id=$(docker run -d --runtime=$runtime -v \"$PWD:/w\" usmol-tool:latest serve 80 /w/page)
  cp /run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby/$id/config.json $runtime.json
  ip=$(docker inspect -f '{{.NetworkSettings.IPAddress}}' $id)
  for i in 1 2 3 4 5 6 7 8 9 10; do
    if docker run --rm usmol-tool:latest get $ip 80 / > $runtime.got; then break; fi
    sleep 0.5
  done
  docker rm -f $id >/dev/null
done";
    let mount = vol(work.path(), &dir);
    let out = usmol(&["-v", &mount, "-w", &dir], &["sh", "-c", script], None);
    out.expect_code(0);
    let read = |name: &str| std::fs::read_to_string(work.path().join(name)).unwrap_or_default();
    let dockerd_hook = |config: &str| {
        config.split("\"/proc/").skip(1).any(|rest| {
            rest.split_once("/exe\"")
                .is_some_and(|(pid, _)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        })
    };
    let (crun, runc) = (read("crun.json"), read("runc.json"));
    assert!(
        crun.contains("\"libnetwork-setkey\""),
        "crun bundle: {crun}"
    );
    assert!(
        crun.contains("\"path\":\"/usr/lib/usmol/init\""),
        "crun bundle: {crun}"
    );
    assert!(
        !dockerd_hook(&crun),
        "crun bundle still re-executes dockerd: {crun}"
    );
    assert!(
        runc.contains("\"libnetwork-setkey\""),
        "runc bundle: {runc}"
    );
    assert!(dockerd_hook(&runc), "runc bundle: {runc}");
    assert!(!runc.contains("/usr/lib/usmol/init"), "runc bundle: {runc}");
    assert_eq!(read("crun.got"), page, "{out}");
    assert_eq!(read("runc.got"), page, "{out}");
}

#[test]
fn the_inner_docker_api_answers_on_a_socket_outside() {
    if !engine_answers("the_inner_docker_api_answers_on_a_socket_outside") {
        return;
    }
    let _image = UsmolImage::acquire();
    let shared = open_dir();
    let mount = vol(shared.path(), "/shared");
    let mut bg = Background::start(
        "none",
        &[
            "-v",
            &mount,
            "-e",
            "USMOL_DOCKER_SOCKET=/shared/docker.sock",
            "--hostname",
            "usmol-api-golden",
        ],
        &[
            "sh",
            "-c",
            "bash -c 'exec 3<>/dev/tcp/127.0.0.1/43177; echo not-the-token >&3; cat <&3' > /shared/probe 2>&1
touch /shared/ready; while [ ! -e /shared/done ]; do sleep 0.2; done",
        ],
    );
    wait_for(
        &shared.path().join("ready"),
        Duration::from_secs(300),
        &mut bg.child,
    );
    let host = format!("unix://{}/docker.sock", shared.path().display());
    let out = common::run(
        Command::new("docker")
            .args([
                "version",
                "--format",
                "{{.Server.Os}}/{{.Server.Arch}} {{.Server.Version}}",
            ])
            .env("DOCKER_HOST", &host),
        b"",
        Duration::from_secs(60),
    );
    out.expect_code(0).expect_stdout_contains("linux/amd64");
    // It is the inner daemon: its host name is the guest's.
    let info = common::run(
        Command::new("docker")
            .args(["info", "--format", "{{.Name}}"])
            .env("DOCKER_HOST", &host),
        b"",
        Duration::from_secs(60),
    );
    info.expect_code(0);
    assert_eq!(info.stdout_text().trim(), "usmol-api-golden", "{info}");
    // Without the run's secret the guest relay says no and hangs up.
    let probe = std::fs::read_to_string(shared.path().join("probe")).unwrap_or_default();
    assert_eq!(probe, "usmol: wrong or missing token\n");
    std::fs::write(shared.path().join("done"), "").unwrap();
    let status = bg.child.wait().unwrap();
    assert!(status.success(), "usmol exited with {status}");
    assert!(
        !shared.path().join("docker.sock").exists(),
        "the launcher left its socket behind"
    );
}

/// The recipe picks iptables-legacy; the nf_tables backend must work as
/// well: the guest switches the alternatives, starts dockerd itself and
/// fetches through the inner NAT again.
#[test]
fn inner_nat_works_with_the_nft_backend() {
    if !engine_answers("inner_nat_works_with_the_nft_backend") {
        return;
    }
    let _image = UsmolImage::acquire();
    let body = random_bytes(1 << 20);
    let port = serve_on_loopback(body.clone());
    let work = open_dir();
    let dir = work.path().display().to_string();
    tool_image(work.path());
    let script = format!(
        "set -e
for t in iptables iptables-restore iptables-save ip6tables ip6tables-restore ip6tables-save; do
  ln -sf /usr/sbin/$(echo $t | sed 's/tables/tables-nft/') /etc/alternatives/$t
done
iptables -V
dockerd >/tmp/dockerd.log 2>&1 &
i=0; until docker info >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 300 ] || {{ tail /tmp/dockerd.log; exit 1; }}; sleep 0.2; done
docker load -q -i tool.tar >/dev/null
gw=$(ip route | awk '/^default/ {{print $3}}')
docker run --rm usmol-tool:latest get \"$gw\" {port} /blob > nft.out
nft list ruleset | grep -c masquerade"
    );
    let mount = vol(work.path(), &dir);
    let out = usmol_on(
        "host",
        &["-v", &mount, "-w", &dir, "-e", "USMOL_DOCKER=0"],
        &["sh", "-c", &script],
        None,
    );
    out.expect_code(0).expect_stdout_contains("(nf_tables)");
    let got = std::fs::read(work.path().join("nft.out")).unwrap();
    assert!(
        got == body,
        "nft.out: {} bytes differ from the {} served\n{out}",
        got.len(),
        body.len()
    );
}

/// A passt that cannot start is a clear launcher error (exit 125 with its
/// last words), never a guest that boots into a hang.
#[test]
fn a_failing_passt_is_a_clear_error() {
    if !usmol_tests::slow_tests_enabled("a_failing_passt_is_a_clear_error") {
        return;
    }
    let lib = usmol_tests::usmol_out().join("usmol/lib");
    let fake = tempfile::tempdir().unwrap();
    for name in ["linux", "rootfs.ext4"] {
        std::os::unix::fs::symlink(lib.join(name), fake.path().join(name)).unwrap();
    }
    let passt = fake.path().join("passt");
    std::fs::write(
        &passt,
        "#!/bin/sh\necho 'cannot bind: test failure' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&passt, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let run = usmol_tests::usmol_out().join("usmol/run");
    let out = common::run(
        Command::new(&run)
            .arg("true")
            .env("USMOL_DOCKER", "0")
            .env("USMOL_LIB_DIR", fake.path()),
        b"",
        Duration::from_secs(60),
    );
    out.expect_code(125);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("starting passt") && stderr.contains("cannot bind: test failure"),
        "{out}"
    );
    // And without a network the same lib dir is fine.
    let out = common::run(
        Command::new(&run)
            .arg("true")
            .env("USMOL_DOCKER", "0")
            .env("USMOL_NETWORK", "none")
            .env("USMOL_LIB_DIR", fake.path()),
        b"",
        Duration::from_secs(60),
    );
    out.expect_code(0);
}
