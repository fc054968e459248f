//! What the guest kernel offers dockerd: cgroup2 controllers, both
//! netfilter backends with NAT, overlayfs on the ext4 docker disk, and
//! page faults that bring in the pages after a sequential write.

mod common;

use std::process::Command;
use std::time::Duration;

use common::run;
use usmol_tests::{prefault_probe_binary, slow_tests_enabled, usmol_out};

/// Runs `sh -c script` in a guest booted from `out/usmol`; returns stdout.
fn guest(script: &str, docker: bool) -> String {
    let run = usmol_out().join("usmol/run");
    let out = Command::new(&run)
        .args(["sh", "-c", script])
        .env("USMOL_DOCKER", if docker { "1" } else { "0" })
        .output()
        .unwrap_or_else(|e| panic!("starting {}: {e}", run.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script}: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn cgroup_controllers_and_both_netfilter_backends() {
    if !slow_tests_enabled("cgroup_controllers_and_both_netfilter_backends") {
        return;
    }
    let out = guest(
        "cat /sys/fs/cgroup/cgroup.controllers; \
         iptables-legacy -t nat -L POSTROUTING -n >/dev/null && echo legacy-nat-ok; \
         iptables-nft -t nat -A POSTROUTING -o lo -j MASQUERADE && \
         iptables-nft -t nat -L POSTROUTING -n | grep -q MASQUERADE && echo nft-nat-ok; \
         nft list ruleset | grep -q masquerade && echo nft-ruleset-ok",
        false,
    );
    let controllers: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    for wanted in ["cpu", "cpuset", "io", "memory", "pids"] {
        assert!(
            controllers.contains(&wanted),
            "cgroup2 lacks {wanted}: {controllers:?}"
        );
    }
    assert!(
        out.contains("legacy-nat-ok"),
        "iptables-legacy nat table: {out}"
    );
    assert!(
        out.contains("nft-nat-ok"),
        "nf_tables nat with MASQUERADE: {out}"
    );
}

#[test]
fn docker_uses_overlay2_on_the_ext4_disk() {
    if !slow_tests_enabled("docker_uses_overlay2_on_the_ext4_disk") {
        return;
    }
    let out = guest(
        "docker info --format '{{.Driver}} {{.CgroupVersion}}'; stat -f -c %T /var/lib/docker; \
         docker info --format '{{.DefaultRuntime}}'",
        true,
    );
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("overlay2 2"), "{out}");
    assert_eq!(
        lines.next(),
        Some("ext2/ext3"),
        "the docker disk is ext4 (stat reports ext2/ext3): {out}"
    );
    assert_eq!(
        lines.next(),
        Some("crun"),
        "the image ships crun, so it is dockerd's default runtime: {out}"
    );
}

/// Kernel patch 0005: a write fault right after a mapped page also faults
/// in the 16 pages that follow, in private memory only; a lone write, reads,
/// shared memory and a cgroup near its memory.max get one page per fault,
/// as before. Every page reads back what was written, or zeros.
#[test]
fn a_sequential_write_fault_brings_in_the_pages_after_it() {
    if !slow_tests_enabled("a_sequential_write_fault_brings_in_the_pages_after_it") {
        return;
    }
    let probe = std::fs::read(prefault_probe_binary()).unwrap();
    let out = run(
        Command::new(usmol_out().join("usmol/run"))
            .args(["sh", "-c", "cat > /tmp/p && chmod +x /tmp/p && exec /tmp/p"])
            .env("USMOL_DOCKER", "0"),
        &probe,
        Duration::from_secs(120),
    );
    out.expect_code(0);
    let stdout = out.stdout_text();
    let case = |name: &str| -> (u32, u32) {
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no line for {name}\n{out}"));
        let mut numbers = line.split(' ').map(|n| n.parse::<u32>().unwrap());
        (numbers.next().unwrap(), numbers.next().unwrap())
    };
    // (resident pages of 64, pages reading as written)
    assert_eq!(case("private-sequential-write"), (2 + 16, 64), "{out}");
    assert_eq!(case("private-single-write"), (1, 64), "{out}");
    assert_eq!(case("private-sequential-read"), (2, 64), "{out}");
    assert_eq!(case("shared-sequential-write"), (2, 64), "{out}");
    assert_eq!(
        case("cgroup-near-its-limit-sequential-write"),
        (2, 64),
        "{out}"
    );
}
