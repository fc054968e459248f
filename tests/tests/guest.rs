//! What the guest kernel offers dockerd: cgroup2 controllers, both
//! netfilter backends with NAT, and overlayfs on the ext4 docker disk.

use std::process::Command;

use usmol_tests::{slow_tests_enabled, usmol_out};

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
