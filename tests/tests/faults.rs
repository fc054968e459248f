//! Faults: what usmol promises when things go wrong around or inside the
//! guest. Each test boots the plain artifact (`<out>/usmol/run`) as uid
//! 65534 and breaks something: the launcher killed mid-write, a full docker
//! disk, a memory hog, a broken dockerd config, a kernel panic, a second
//! instance on one disk. Also what the UML process holds on the host side
//! (fds, no_new_privs, sockets, CPU affinity). Slow: USMOL_SLOW_TESTS=1.

mod common;
mod harness;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{hello_image, secs};
use harness::{Env, Running, fsck_check};
use usmol_tests::slow_tests_enabled;

const DOCKER_BOOT: Duration = Duration::from_secs(240);
const PLAIN_BOOT: Duration = Duration::from_secs(90);

/// The hello image archive, for `docker load` from stdin.
fn hello_archive() -> Vec<u8> {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::read(hello_image(scratch.path())).unwrap()
}

/// Runs the launcher to completion with `stdin`, as a [`common::Outcome`].
fn run_to_end(cmd: &mut Command, stdin: &[u8], limit: Duration) -> common::Outcome {
    common::run(cmd, stdin, limit)
}

/// Kills the launcher with SIGKILL, `rounds` times, while the guest writes
/// images onto the persistent docker disk. Odd rounds kill the launcher
/// alone, even rounds the kernel and its stubs too, like a power cut.
/// After each round: no host process of the run is left within 60 s, the
/// disk passes fsck (after at most a journal replay), and the next boot
/// starts dockerd and still has the first image.
#[test]
fn kill_9_during_image_writes_keeps_the_docker_disk_sound() {
    if !slow_tests_enabled("kill_9_during_image_writes_keeps_the_docker_disk_sound") {
        return;
    }
    const ROUNDS: u32 = 20;
    let env = Env::new();
    let disk = env.path().join("docker.ext4");
    let docker = |args: &[&str]| {
        let mut c = env.command(args);
        c.env("USMOL_DOCKER", "1")
            .env("USMOL_DISK", &disk)
            .env("USMOL_DISK_SIZE", "2G");
        c
    };
    run_to_end(
        &mut docker(&["docker", "load", "-q"]),
        &hello_archive(),
        DOCKER_BOOT,
    )
    .expect_code(0)
    .expect_stdout_contains("hello-world:latest");

    // Writes image layers onto the disk in a loop until killed.
    let writer = "docker image inspect hello-world >/dev/null || exit 3; \
        head -c 16M /dev/urandom >/tmp/blob || exit 4; echo ready; i=0; \
        while :; do i=$((i+1)); tar -cf - -C /tmp blob | docker import - junk:$i >/dev/null || exit 5; \
        echo imported; docker rmi junk:$i >/dev/null || exit 6; done";
    let mut report = Vec::new();
    for round in 1..=ROUNDS {
        let power_cut = round % 2 == 0;
        let running = Running::spawn(&mut docker(&["sh", "-c", writer]));
        if !running.wait_line("ready", DOCKER_BOOT) {
            let (code, _, out, err) = running.finish(Duration::from_secs(30));
            panic!(
                "round {round}: the guest did not come up with the image ({code:?})\n{out}\n{err}"
            );
        }
        // Kill at a different point of the write loop each round: after
        // the first import finished, plus 0..1.8 s.
        let booted = running.started.elapsed();
        let imported = running.wait_line("imported", Duration::from_secs(120));
        assert!(imported, "round {round}: no image was written");
        let first_import = Instant::now();
        std::thread::sleep(Duration::from_millis(200 * u64::from(round % 10)));
        let kernel = running.kernel_pid();
        let mut running = running;
        running.kill_launcher();
        if power_cut && let Some(k) = kernel {
            // SAFETY: kill(2) on the kernel's process group: it leads its
            // own session, its stubs are members.
            unsafe { libc::kill(-k, libc::SIGKILL) };
        }
        let killed = Instant::now();
        let gone = env
            .wait_gone_with(&kernel.into_iter().collect::<Vec<_>>(), Duration::from_secs(60))
            .unwrap_or_else(|left| {
                panic!("round {round}: host processes of the run still alive 60 s after the kill: {left:?}")
            });
        // Either way the kernel may have stopped mid-write (a killed
        // launcher takes it down with SIGPIPE on its log pipe), so the
        // journal may need a replay, which a read-only check does not do:
        // replay and check a copy, and leave the disk itself to init's own
        // `fsck -p` at the next boot.
        let copy = env.path().join("copy.ext4");
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(&disk)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(st.success());
        let preen = Command::new("e2fsck")
            .arg("-fp")
            .arg(&copy)
            .output()
            .unwrap();
        let preen_code = preen.status.code().unwrap_or(-1);
        assert!(
            preen_code <= 1,
            "round {round}: e2fsck -fp needed more than a journal replay ({preen_code})\n{}{}",
            String::from_utf8_lossy(&preen.stdout),
            String::from_utf8_lossy(&preen.stderr)
        );
        let (code, out) = fsck_check(&copy);
        std::fs::remove_file(&copy).unwrap();
        assert_eq!(code, 0, "round {round}: not clean after e2fsck -fp\n{out}");
        let fsck = if preen_code == 0 {
            "clean".to_owned()
        } else {
            "clean after journal replay".to_owned()
        };
        drop(running);
        let line = format!(
            "round {round:2} ({}): booted {}, killed {} after the first import, host processes gone {} after, fsck {fsck}",
            if power_cut {
                "launcher+kernel"
            } else {
                "launcher only"
            },
            secs(booted),
            secs(killed.duration_since(first_import)),
            secs(gone)
        );
        eprintln!("{line}");
        report.push(line);
    }
    // A clean run after the last kill: dockerd starts, the image is there
    // and runs, and the private directories of the killed launchers are
    // swept away.
    let out = run_to_end(
        &mut docker(&["docker", "run", "--rm", "hello-world"]),
        b"",
        DOCKER_BOOT,
    );
    out.expect_code(0)
        .expect_stdout_contains("Hello from Docker!");
    let (code, fsck) = fsck_check(&disk);
    assert_eq!(code, 0, "{fsck}");
    let left = env.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    eprintln!(
        "kill -9: {ROUNDS} rounds, the disk sound after each:\n{}",
        report.join("\n")
    );
}

#[test]
fn a_full_docker_disk_is_reported_and_the_guest_carries_on() {
    if !slow_tests_enabled("a_full_docker_disk_is_reported_and_the_guest_carries_on") {
        return;
    }
    let env = Env::new();
    let disk = env.path().join("docker.ext4");
    // Fill the docker disk up to the last block (root's reserve too:
    // dockerd is root), then write an image onto
    // it; then free the space and write again, then shut down cleanly.
    let script = "set -u; \
        head -c 8M /dev/urandom >/tmp/blob; \
        free=$(stat -f -c '%f * %S' /var/lib/docker); \
        fallocate -l $(( $free )) /var/lib/docker/ballast 2>/dev/null || \
            dd if=/dev/zero of=/var/lib/docker/ballast bs=1M 2>/dev/null; \
        echo \"free=$(( $(stat -f -c %f /var/lib/docker) ))\"; \
        tar -cf - -C /tmp blob | docker import - full:1 >/dev/null; echo \"import-full=$?\"; \
        rm -f /var/lib/docker/ballast; \
        tar -cf - -C /tmp blob | docker import - full:2 >/dev/null; echo \"import-after=$?\"; \
        docker image inspect full:2 >/dev/null && echo daemon-ok";
    let out = run_to_end(
        env.command(&["sh", "-c", script])
            .env("USMOL_DOCKER", "1")
            .env("USMOL_DISK", &disk)
            .env("USMOL_DISK_SIZE", "1G"),
        b"",
        DOCKER_BOOT,
    );
    out.expect_code(0);
    let text = out.stdout_text();
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    // fallocate leaves a few blocks ext4 keeps for itself; what counts is
    // that the import ran out of space.
    assert!(text.contains("free="), "the disk was not filled\n{out}");
    assert!(
        !text.contains("import-full=0"),
        "the import onto a full disk succeeded\n{out}"
    );
    assert!(
        err.contains("no space left on device"),
        "docker did not say the disk is full\n{out}"
    );
    assert!(
        text.contains("import-after=0") && text.contains("daemon-ok"),
        "dockerd did not recover once space was freed\n{out}"
    );
    let (code, fsck) = fsck_check(&disk);
    assert_eq!(code, 0, "{fsck}");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn a_memory_hog_is_oom_killed_and_the_guest_survives() {
    if !slow_tests_enabled("a_memory_hog_is_oom_killed_and_the_guest_survives") {
        return;
    }
    let env = Env::new();
    // `tail -n 1` keeps the whole current line: a stream without newlines
    // grows it until the guest runs out of memory.
    let script = "head -c 4G /dev/zero | tail -n 1 >/dev/null; echo \"hog=$?\"; \
        dmesg | grep -c -i 'out of memory' | sed 's/^/oom-lines=/'; echo alive";
    let out = run_to_end(
        env.command(&["sh", "-c", script])
            .env("USMOL_DOCKER", "0")
            .env("USMOL_MEMORY", "256M"),
        b"",
        PLAIN_BOOT,
    );
    out.expect_code(0)
        .expect_stdout_contains("hog=137")
        .expect_stdout_contains("alive");
    assert!(
        !out.stdout_text().contains("oom-lines=0"),
        "no OOM kill in the guest's log\n{out}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("SIGBUS") && !err.contains("Bus error"),
        "host side saw SIGBUS\n{out}"
    );
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn a_broken_dockerd_config_gives_121_and_its_log() {
    if !slow_tests_enabled("a_broken_dockerd_config_gives_121_and_its_log") {
        return;
    }
    let env = Env::new();
    let start = Instant::now();
    // /etc/hostname is not JSON: dockerd refuses it and exits.
    let out = run_to_end(
        env.command(&["docker", "info"])
            .env("USMOL_DOCKER", "1")
            .env("USMOL_DOCKERD_ARGS", "--config-file /etc/hostname"),
        b"",
        Duration::from_secs(120),
    );
    out.expect_code(121);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/etc/hostname") && err.contains("dockerd"),
        "the daemon's own words are not shown\n{out}"
    );
    assert!(out.stdout.is_empty(), "stdout must stay clean\n{out}");
    eprintln!("broken dockerd config: 121 after {}", secs(start.elapsed()));
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn kernel_panics_exit_122_and_say_so() {
    if !slow_tests_enabled("kernel_panics_exit_122_and_say_so") {
        return;
    }
    let env = Env::new();
    // 1. A root image that is not a filesystem: the kernel cannot mount
    //    its root and panics. 2. An empty ext4: no init to run.
    let lib = usmol_tests::usmol_out().join("usmol/lib");
    for (what, make) in [
        ("garbage root image", "zeros"),
        ("root image without init", "empty-ext4"),
    ] {
        let dir = env.path().join(make);
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(lib.join("linux"), dir.join("linux")).unwrap();
        let image = dir.join("rootfs.ext4");
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(64 << 20).unwrap();
        if make == "empty-ext4" {
            let st = Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&image)
                .status()
                .unwrap();
            assert!(st.success());
        }
        env.give(&dir);
        let start = Instant::now();
        let out = run_to_end(
            env.command(&["true"])
                .env("USMOL_DOCKER", "0")
                .env("USMOL_LIB_DIR", &dir),
            b"",
            Duration::from_secs(60),
        );
        out.expect_code(122);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("panicked") && err.contains("Kernel panic"),
            "{what}: the panic is not reported\n{out}"
        );
        eprintln!("{what}: 122 after {}", secs(start.elapsed()));
    }
    // 3. A panic asked for from inside a running guest (sysrq crash).
    let start = Instant::now();
    let out = run_to_end(
        env.command(&["sh", "-c", "echo c > /proc/sysrq-trigger; sleep 30"])
            .env("USMOL_DOCKER", "0"),
        b"",
        Duration::from_secs(60),
    );
    out.expect_code(122);
    eprintln!("sysrq crash: 122 after {}", secs(start.elapsed()));
    env.wait_processes_gone(Duration::from_secs(10))
        .expect("kernel processes left after a panic");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn a_second_instance_on_the_same_disk_is_refused() {
    if !slow_tests_enabled("a_second_instance_on_the_same_disk_is_refused") {
        return;
    }
    let env = Env::new();
    let disk = env.path().join("docker.ext4");
    let cmd = |args: &[&str]| {
        let mut c = env.command(args);
        c.env("USMOL_DOCKER", "0").env("USMOL_DISK", &disk);
        c
    };
    let first = Running::spawn(&mut cmd(&["sh", "-c", "echo ready; exec sleep 120"]));
    assert!(first.wait_line("ready", PLAIN_BOOT), "first instance");
    let second = run_to_end(&mut cmd(&["true"]), b"", Duration::from_secs(30));
    second.expect_code(125);
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use by another usmol instance"),
        "{second}"
    );
    let kernel = first.kernel_pid();
    let mut first = first;
    first.kill_launcher();
    env.wait_gone_with(
        &kernel.into_iter().collect::<Vec<_>>(),
        Duration::from_secs(60),
    )
    .expect("the kernel did not stop after its launcher was killed");
    // A kernel whose launcher is gone may still hold the disk (the ubd
    // driver's POSIX lock) while the launcher's flock is released: refused
    // too. Held here the way that kernel holds it.
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        // SAFETY: plain data; F_SETLK on an fd we own.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as i16;
        fl.l_whence = libc::SEEK_SET as i16;
        fl.l_len = 1;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        // The killed kernel's own lock goes only when its exit completes,
        // which can trail the process disappearing from the process list.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let r = loop {
            // SAFETY: F_SETLK on an fd we own with a valid flock.
            let r = unsafe { libc::fcntl(fd, libc::F_SETLK, &fl) };
            if r == 0 || std::time::Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            r,
            0,
            "locking {}: {}",
            disk.display(),
            std::io::Error::last_os_error()
        );
        let third = run_to_end(&mut cmd(&["true"]), b"", Duration::from_secs(30));
        third.expect_code(125);
        assert!(
            String::from_utf8_lossy(&third.stderr).contains("still holds it"),
            "{third}"
        );
    }
    run_to_end(&mut cmd(&["true"]), b"", PLAIN_BOOT).expect_code(0);
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

/// The host side of a running guest: the UML process has no_new_privs,
/// none of the fds its caller leaked, only the fds it needs, and no inet
/// socket; inside, nothing listens on TCP or UDP even with dockerd up.
#[test]
fn the_kernel_holds_only_what_it_needs() {
    if !slow_tests_enabled("the_kernel_holds_only_what_it_needs") {
        return;
    }
    let env = Env::new();
    let secret = env.path().join("secret");
    std::fs::write(&secret, b"not for the guest").unwrap();
    let leak = std::fs::File::open(&secret).unwrap();
    let leak_fd = std::os::fd::AsRawFd::as_raw_fd(&leak);
    let script = "cat /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6 | \
        awk 'NR>0 && $1 ~ /^[0-9]+:$/ {print \"socket\", $2, $4}'; echo ready; exec sleep 120";
    let mut cmd = env.command(&["sh", "-c", script]);
    cmd.env("USMOL_DOCKER", "1");
    // SAFETY: dup2 in the child before exec; leaves an fd without
    // close-on-exec, as a careless caller would.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(leak_fd, 40) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let running = Running::spawn(&mut cmd);
    let ready = running.wait_line("ready", DOCKER_BOOT);
    let launcher = running.pid();
    let kernel = running.kernel_pid();
    let inspect = || -> Result<String, String> {
        if !ready {
            return Err("the guest did not come up".into());
        }
        let kernel = kernel.ok_or("no kernel process")?;
        let mut report = String::new();
        for (who, pid) in [("launcher", launcher), ("kernel", kernel)] {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            if !status.contains("NoNewPrivs:\t1") {
                return Err(format!("{who} {pid} runs without no_new_privs"));
            }
        }
        let mut pids = env.processes();
        pids.sort();
        let secret = secret.display().to_string();
        let mut inet = Vec::new();
        let tables: String = ["tcp", "tcp6", "udp", "udp6"]
            .iter()
            .map(|t| std::fs::read_to_string(format!("/proc/{kernel}/net/{t}")).unwrap_or_default())
            .collect();
        for pid in &pids {
            // A guest process may exit between the listing and here.
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for e in fds.flatten() {
                let target = std::fs::read_link(e.path())
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                if target.starts_with(&secret) {
                    return Err(format!(
                        "process {pid} holds the caller's leaked fd: {target}"
                    ));
                }
                if let Some(inode) = target
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    && tables.split_whitespace().any(|w| w == inode)
                {
                    inet.push(format!("{pid}: {target}"));
                }
                if *pid == kernel {
                    report.push_str(&format!(
                        "fd {:>3} -> {target}\n",
                        e.file_name().to_string_lossy()
                    ));
                }
            }
        }
        if !inet.is_empty() {
            return Err(format!("inet sockets on the host side: {inet:?}"));
        }
        let maps = std::fs::read_to_string(format!("/proc/{kernel}/maps")).unwrap();
        let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
        for line in maps.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let name = f.get(5..).map(|n| n.join(" ")).unwrap_or_default();
            if name.contains(&secret) {
                return Err(format!("the kernel maps the secret: {line}"));
            }
            *kinds.entry(format!("{} {name}", f[1])).or_default() += 1;
        }
        for (k, n) in kinds {
            report.push_str(&format!("map x{n:<3} {k}\n"));
        }
        report.push_str(&format!("{} host processes (kernel + stubs)\n", pids.len()));
        Ok(report)
    };
    let result = inspect();
    // SAFETY: kill(2) on our child: SIGTERM shuts the guest down.
    unsafe { libc::kill(launcher, libc::SIGTERM) };
    let (code, _, out, err) = running.finish(Duration::from_secs(60));
    let report =
        result.unwrap_or_else(|e| panic!("{e}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"));
    eprintln!("host side of the kernel process:\n{report}");
    assert_eq!(code, Some(143), "{out}\n{err}");
    let listening: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("socket ") && (l.ends_with(" 0A") || l.contains(" 07")))
        .collect();
    assert!(
        listening.is_empty(),
        "something listens on TCP/UDP in the guest: {listening:?}\n{out}"
    );
    drop(leak);
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

/// The kernel's thread that starts stub processes ahead (kernel patch
/// 0007): it works beside the pinned CPU, not on it.
const STUB_POOL_THREAD: &str = "uml-stub-pool";

/// `(Name, Cpus_allowed_list)` of every thread of `pid`.
fn thread_cpus(pid: i32) -> Vec<(String, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|status| {
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
            };
            Some((field("Name:")?, field("Cpus_allowed_list:")?))
        })
        .collect()
}

/// A one-CPU guest runs on one host CPU: the kernel's threads and every
/// guest process (they hand the CPU to each other on each syscall), the
/// launcher's own CPU. `USMOL_PIN=off` leaves them the caller's CPUs. The
/// kernel's stub-starting thread runs off the pinned CPU when it may.
#[test]
fn a_one_cpu_guest_is_pinned_to_one_host_cpu_unless_told_not_to() {
    if !slow_tests_enabled("a_one_cpu_guest_is_pinned_to_one_host_cpu_unless_told_not_to") {
        return;
    }
    let env = Env::new();
    let (_, ours) = thread_cpus(std::process::id() as i32)
        .into_iter()
        .next()
        .unwrap();
    let many = ours.contains(',') || ours.contains('-');
    for pin in ["auto", "off"] {
        let mut cmd = env.command(&["sh", "-c", "sleep 60 & echo ready; wait"]);
        cmd.env("USMOL_DOCKER", "0").env("USMOL_PIN", pin);
        let running = Running::spawn(&mut cmd);
        let ready = running.wait_line("ready", PLAIN_BOOT);
        let pids = env.processes();
        let processes = pids.len();
        let threads: Vec<(String, String)> = pids.into_iter().flat_map(thread_cpus).collect();
        let pool: Vec<&String> = threads
            .iter()
            .filter(|(name, _)| name == STUB_POOL_THREAD)
            .map(|(_, cpus)| cpus)
            .collect();
        let mut lists: Vec<String> = threads
            .iter()
            .filter(|(name, _)| name != STUB_POOL_THREAD)
            .map(|(_, cpus)| cpus.clone())
            .collect();
        // SAFETY: kill(2) on our child: SIGTERM shuts the guest down.
        unsafe { libc::kill(running.pid(), libc::SIGTERM) };
        let (code, _, out, err) = running.finish(Duration::from_secs(60));
        assert!(ready, "USMOL_PIN={pin}: no guest\n{out}\n{err}");
        assert_eq!(code, Some(143), "{out}\n{err}");
        // The kernel, its helper threads, the guest's sh and sleep at least.
        assert!(processes >= 3, "USMOL_PIN={pin}: {processes} processes");
        assert_eq!(
            pool.len(),
            1,
            "USMOL_PIN={pin}: the stub pool thread: {threads:?}"
        );
        assert_eq!(
            pool[0], &ours,
            "USMOL_PIN={pin}: the stub pool thread may use the caller's CPUs"
        );
        lists.sort();
        lists.dedup();
        match pin {
            "off" => assert_eq!(lists, std::slice::from_ref(&ours), "USMOL_PIN=off"),
            _ if many => {
                assert_eq!(lists.len(), 1, "USMOL_PIN=auto: {lists:?}");
                assert!(
                    lists[0].parse::<usize>().is_ok(),
                    "USMOL_PIN=auto: not one CPU: {lists:?} (ours: {ours})"
                );
            }
            _ => assert_eq!(
                lists,
                std::slice::from_ref(&ours),
                "one allowed CPU, nothing to pin"
            ),
        }
    }
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}

#[test]
fn garbage_knobs_are_refused_by_name_before_anything_starts() {
    if !slow_tests_enabled("garbage_knobs_are_refused_by_name_before_anything_starts") {
        return;
    }
    let env = Env::new();
    for (var, value) in [
        ("USMOL_MEMORY", "lots"),
        ("USMOL_MEMORY", "-5G"),
        ("USMOL_CPUS", "many"),
        ("USMOL_DOCKER", "maybe"),
        ("USMOL_DEBUG", "2"),
        ("USMOL_SECCOMP", "sometimes"),
        ("USMOL_PIN", "4096"),
        ("USMOL_DOCKERD_TIMEOUT", "soon"),
        ("USMOL_DISK_SIZE", "huge"),
        ("USMOL_DOCKERD_ARGS", "--unterminated 'quote"),
    ] {
        let out = run_to_end(
            env.command(&["true"]).env(var, value),
            b"",
            Duration::from_secs(30),
        );
        out.expect_code(125);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(var),
            "{var}={value}: the message does not name it\n{out}"
        );
        assert!(err.contains("fix:"), "{var}={value}: no fix given\n{out}");
    }
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}
