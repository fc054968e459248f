//! What the guest kernel offers dockerd: cgroup2 controllers, both
//! netfilter backends with NAT, overlayfs on the ext4 docker disk, page
//! faults that bring in the pages after a sequential write, vDSO clocks
//! that do not trap, stub processes started ahead, a one-CPU kernel that
//! leaves the host's signal mask alone, and the daemons' coarse timer
//! slack.

mod common;
mod harness;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{run, tool_image};
use harness::{Running, children, comm, state};
use usmol_tests::{clock_probe_binary, prefault_probe_binary, slow_tests_enabled, usmol_out};

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

/// Runs a static probe program, piped in on stdin, in a guest without
/// dockerd; `env` adds launcher knobs.
fn run_probe(probe: &std::path::Path, env: &[(&str, &str)]) -> common::Outcome {
    let binary = std::fs::read(probe).unwrap_or_else(|e| panic!("{}: {e}", probe.display()));
    let mut cmd = Command::new(usmol_out().join("usmol/run"));
    cmd.args(["sh", "-c", "cat > /tmp/p && chmod +x /tmp/p && exec /tmp/p"])
        .env("USMOL_DOCKER", "0")
        .envs(env.iter().copied());
    let out = run(&mut cmd, &binary, Duration::from_secs(120));
    out.expect_code(0);
    out
}

/// The rest of the line of `stdout` that starts with `name` and a space.
fn line_after<'a>(stdout: &'a str, name: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
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
    let out = run_probe(prefault_probe_binary(), &[]);
    let stdout = out.stdout_text();
    let case = |name: &str| -> (u32, u32) {
        let line = line_after(&stdout, name).unwrap_or_else(|| panic!("no line for {name}\n{out}"));
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

/// Kernel patch 0006: the vDSO's clocks agree with the system calls, follow
/// clock_settime and time namespaces, and in seccomp mode read the host
/// clock without a system call, so they keep working when a seccomp filter
/// forbids the clock calls. In ptrace mode they fall back to the system
/// call, and the filter applies to them too.
#[test]
fn vdso_clocks_read_the_host_clock_without_a_system_call() {
    if !slow_tests_enabled("vdso_clocks_read_the_host_clock_without_a_system_call") {
        return;
    }
    let agreeing = [
        "order-monotonic",
        "order-realtime",
        "order-boottime",
        "order-monotonic-raw",
        "settime-clock_gettime",
        "settime-gettimeofday",
        "settime-time",
        "timens-offset",
        "timens-order-monotonic",
    ];
    let forbidden = [
        "forbidden-monotonic",
        "forbidden-realtime",
        "forbidden-gettimeofday",
    ];
    let eperm = "Operation not permitted";
    for (mode, vdso_result) in [("on", "ok"), ("off", eperm)] {
        let out = run_probe(clock_probe_binary(), &[("USMOL_SECCOMP", mode)]);
        let stdout = out.stdout_text();
        let result = |check: &str| -> &str {
            line_after(&stdout, check)
                .unwrap_or_else(|| panic!("seccomp={mode}: no result for {check}\n{out}"))
        };
        assert_eq!(result("vdso"), "mapped", "seccomp={mode}");
        for check in agreeing {
            assert_eq!(result(check), "ok", "seccomp={mode}: {check}");
        }
        // The filter works: a CPU-time clock always takes the system call.
        assert_eq!(result("forbidden-cputime"), eperm, "seccomp={mode}");
        for check in forbidden {
            assert_eq!(result(check), vdso_result, "seccomp={mode}: {check}");
        }
    }
}

/// containerd and dockerd run with a 1 ms timer slack (their Go sysmon
/// threads poll with 20 us sleeps); a container and a `docker exec` get
/// Linux's default 50 us back from init's OCI runtime role.
#[test]
fn the_daemons_sleep_coarsely_and_containers_as_on_any_host() {
    if !slow_tests_enabled("the_daemons_sleep_coarsely_and_containers_as_on_any_host") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let archive = std::fs::read(tool_image(work.path())).unwrap();
    let script = "set -e
docker load -q >/dev/null
for d in containerd dockerd; do echo \"$d $(cat /proc/$(pidof $d)/timerslack_ns)\"; done
echo \"container $(docker run --rm usmol-tool:latest cat /proc/self/timerslack_ns)\"
id=$(docker run -d usmol-tool:latest serve 8080 /tool)
echo \"exec $(docker exec $id /tool cat /proc/self/timerslack_ns)\"
docker rm -f $id >/dev/null
echo \"shell $(cat /proc/self/timerslack_ns)\"";
    let out = run(
        Command::new(usmol_out().join("usmol/run"))
            .args(["sh", "-c", script])
            .env("USMOL_DOCKER", "1"),
        &archive,
        Duration::from_secs(180),
    );
    out.expect_code(0);
    let stdout = out.stdout_text();
    let slack = |who: &str| -> &str {
        line_after(&stdout, who).unwrap_or_else(|| panic!("no line for {who}\n{out}"))
    };
    assert_eq!(slack("containerd"), "1000000", "{out}");
    assert_eq!(slack("dockerd"), "1000000", "{out}");
    assert_eq!(slack("container"), "50000", "{out}");
    assert_eq!(slack("exec"), "50000", "docker exec: {out}");
    assert_eq!(slack("shell"), "50000", "the command itself: {out}");
}

/// A host process that runs a guest address space: a child of the kernel
/// process.
#[derive(Debug)]
struct Stub {
    pid: i32,
    zombie: bool,
    /// Started ahead and not yet given an address space: it still maps
    /// the stub executable, which taking it unmaps.
    ready: bool,
}

fn stubs_of(kernel: i32) -> Vec<Stub> {
    children(kernel)
        .into_iter()
        .filter(|&pid| comm(pid).as_deref() == Some("uml-userspace"))
        .map(|pid| Stub {
            pid,
            zombie: state(pid) == Some('Z'),
            ready: std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .is_ok_and(|maps| maps.contains("memfd:uml-userspace")),
        })
        .collect()
}

/// Starts `sh -c script` in a guest without dockerd, with `env` added and
/// a pipe to its stdin.
fn guest_waiting_for_us(script: &str, env: &[(&str, &str)]) -> Running {
    Running::spawn_with_stdin(
        Command::new(usmol_out().join("usmol/run"))
            .args(["sh", "-c", script])
            .env("USMOL_DOCKER", "0")
            .envs(env.iter().copied()),
    )
}

/// The next stdout line of a guest, within a minute.
fn next_line(running: &Running) -> String {
    running
        .lines
        .recv_timeout(Duration::from_secs(60))
        .expect("the guest stopped talking")
}

/// Writes a line to a guest's stdin.
fn tell(running: &mut Running, line: &str) {
    let stdin = running.child.stdin.as_mut().unwrap();
    stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// Kernel patch 0007: a new guest address space takes a stub process the
/// kernel started ahead. At rest, four wait beside one per guest address
/// space; stubs of address spaces that ended are reaped, not left as
/// zombies; and stubs held ready can die (here killed from the host)
/// without harming the guest, which starts others in their place.
#[test]
fn stubs_held_ready_may_die_and_the_guest_goes_on() {
    if !slow_tests_enabled("stubs_held_ready_may_die_and_the_guest_goes_on") {
        return;
    }
    const READY: usize = 4;
    let script = "spaces() { n=0; for p in /proc/[0-9]*; do [ -e $p/exe ] && n=$((n+1)); done; echo \"spaces $n\"; }
spaces; read go
for i in $(seq 50); do /bin/true || echo \"true failed\"; done; echo ran
spaces; read done";
    let mut running = guest_waiting_for_us(script, &[]);
    // The pool refills and the SIGCHLD handler reaps after the fact: wait
    // for both to settle, then check the count.
    let at_rest = |kernel: i32, spaces: usize| -> Vec<Stub> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stubs = stubs_of(kernel);
            let ready = stubs.iter().filter(|s| s.ready).count();
            let zombies = stubs.iter().filter(|s| s.zombie).count();
            if (ready == READY && zombies == 0 && stubs.len() == spaces + READY)
                || Instant::now() > deadline
            {
                return stubs;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let spaces = |line: String| -> usize {
        line.strip_prefix("spaces ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("expected `spaces N`, got {line:?}"))
    };

    let before = spaces(next_line(&running));
    let kernel = running.kernel_pid().expect("the kernel process");
    let stubs = at_rest(kernel, before);
    let ready: Vec<i32> = stubs.iter().filter(|s| s.ready).map(|s| s.pid).collect();
    assert_eq!(ready.len(), READY, "stubs held ready: {stubs:?}");
    assert_eq!(
        stubs.len(),
        before + READY,
        "{before} guest address spaces: {stubs:?}"
    );
    for pid in &ready {
        // SAFETY: kill(2) on a pid read from /proc just now.
        assert_eq!(
            unsafe { libc::kill(*pid, libc::SIGKILL) },
            0,
            "kill -KILL {pid}"
        );
    }
    // Dead, that is: a stub in the middle of dying is as good as any
    // until it is gone, in the pool as in use.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready
        .iter()
        .any(|pid| state(*pid).is_some_and(|s| s != 'Z'))
    {
        assert!(
            Instant::now() < deadline,
            "killed stubs still run: {ready:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    tell(&mut running, "go");
    assert_eq!(next_line(&running), "ran");
    let after = spaces(next_line(&running));
    let stubs = at_rest(kernel, after);
    assert!(
        stubs.iter().all(|s| !ready.contains(&s.pid)),
        "killed stubs were not reaped: {stubs:?}"
    );
    assert_eq!(stubs.iter().filter(|s| s.zombie).count(), 0, "{stubs:?}");
    assert_eq!(stubs.iter().filter(|s| s.ready).count(), READY, "{stubs:?}");
    assert_eq!(
        stubs.len(),
        after + READY,
        "{after} guest address spaces: {stubs:?}"
    );

    tell(&mut running, "done");
    let (code, _, out, err) = running.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{out}\n{err}");
}

/// Kernel patch 0008: with interrupts off, an SMP kernel blocks the IPI
/// signal in the host, a system call per interrupt disable and enable.
/// A one-CPU kernel never gets an IPI and leaves the host's mask alone:
/// its CPU thread idles (interrupts off) with the IPI signal unblocked,
/// where a two-CPU kernel's has it blocked.
#[test]
fn a_one_cpu_kernel_leaves_the_host_signal_mask_alone() {
    if !slow_tests_enabled("a_one_cpu_kernel_leaves_the_host_signal_mask_alone") {
        return;
    }
    let ipi_bit = 1u64 << (libc::SIGRTMIN() - 1);
    for cpus in ["1", "2"] {
        let mut running = guest_waiting_for_us("echo up; read done", &[("USMOL_CPUS", cpus)]);
        assert_eq!(next_line(&running), "up", "USMOL_CPUS={cpus}");
        let kernel = running.kernel_pid().expect("the kernel process");
        // The boot CPU runs on the kernel's main thread; the guest idles
        // in `read`, so most samples catch it in the idle loop.
        let samples: Vec<u64> = (0..50)
            .filter_map(|_| {
                std::thread::sleep(Duration::from_millis(10));
                let status = std::fs::read_to_string(format!("/proc/{kernel}/status")).ok()?;
                let mask = status.lines().find_map(|l| l.strip_prefix("SigBlk:"))?;
                u64::from_str_radix(mask.trim(), 16).ok()
            })
            .collect();
        tell(&mut running, "done");
        let (code, _, out, err) = running.finish(Duration::from_secs(60));
        assert_eq!(code, Some(0), "USMOL_CPUS={cpus}: {out}\n{err}");
        assert_eq!(samples.len(), 50, "USMOL_CPUS={cpus}: SigBlk of {kernel}");
        let blocked = samples.iter().filter(|m| *m & ipi_bit != 0).count();
        if cpus == "1" {
            assert_eq!(
                blocked, 0,
                "one CPU: the IPI signal was blocked in {blocked} of 50 samples"
            );
        } else {
            assert!(
                blocked > 0,
                "two CPUs: the IPI signal was never seen blocked; the test cannot tell"
            );
        }
    }
}
