//! Load and soak: many starts and stops in a row, and many inner
//! containers at once, must leave nothing behind (host processes, temp
//! files, guest-RAM files; zombies and shims inside) and must not slow
//! down. Slow: USMOL_SLOW_TESTS=1.

mod common;
mod harness;

use std::time::{Duration, Instant};

use common::{hello_image, run};
use harness::{Env, median};
use usmol_tests::slow_tests_enabled;

/// The two soak tests run one after the other: the fd count below is
/// process-wide, and either would skew the other's timings.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The open fds of this process, to see that the harness leaks none either.
fn own_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_hundred_starts_and_stops_leave_nothing_behind() {
    if !slow_tests_enabled("a_hundred_starts_and_stops_leave_nothing_behind") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const CYCLES: usize = 100;
    let env = Env::new();
    let fds_before = own_fds();
    let mut times = Vec::with_capacity(CYCLES);
    for i in 0..CYCLES {
        let start = Instant::now();
        // The cheapest boot: no dockerd, but the default network, so that
        // passt starts and stops every cycle too. The command reads the
        // guest's own view so each cycle really ran in a booted guest.
        let out = run(
            env.command(&["sh", "-c", "cat /proc/sys/kernel/random/boot_id"])
                .env("USMOL_DOCKER", "0")
                .env("USMOL_NETWORK", "passt"),
            b"",
            Duration::from_secs(90),
        );
        times.push(start.elapsed().as_secs_f64());
        out.expect_code(0);
        assert_eq!(out.stdout_text().trim().len(), 36, "cycle {i}\n{out}");
        if let Err(left) = env.wait_processes_gone(Duration::from_secs(5)) {
            panic!("cycle {i}: host processes left after the launcher exited: {left:?}");
        }
        let left = env.leftovers();
        assert!(left.is_empty(), "cycle {i}: left behind {left:?}");
    }
    assert_eq!(own_fds(), fds_before, "the harness leaked fds");
    let first = median(&times[..10]);
    let last = median(&times[CYCLES - 10..]);
    let total: f64 = times.iter().sum();
    eprintln!(
        "{CYCLES} plain start/stop cycles in {total:.1}s: median of the first 10 {first:.2}s, \
         of the last 10 {last:.2}s, min {:.2}s, max {:.2}s",
        times.iter().cloned().fold(f64::INFINITY, f64::min),
        times.iter().cloned().fold(0.0, f64::max)
    );
    // Loose on purpose: the machine is shared; a leak that slows each boot
    // down grows far beyond this.
    assert!(
        last <= first * 3.0 + 1.0,
        "boots slowed down: first 10 median {first:.2}s, last 10 {last:.2}s"
    );
}

#[test]
fn twenty_parallel_containers_finish_without_zombies_or_shims() {
    if !slow_tests_enabled("twenty_parallel_containers_finish_without_zombies_or_shims") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = Env::new();
    let scratch = tempfile::tempdir().unwrap();
    let archive = std::fs::read(hello_image(scratch.path())).unwrap();
    // Counts processes by state and name from /proc (the guest has no ps).
    let script = r#"
docker load -q >/dev/null || exit 3
start=$(date +%s)
for i in $(seq 1 20); do
  docker run --rm --name c$i hello-world >/tmp/out.$i 2>&1 &
done
wait
echo "took=$(( $(date +%s) - start ))"
ok=0
for i in $(seq 1 20); do grep -q "Hello from Docker!" /tmp/out.$i && ok=$((ok+1)); done
echo "ok=$ok"
sleep 2
zombies=0; shims=0
for s in /proc/[0-9]*/stat; do
  read -r line < "$s" 2>/dev/null || continue
  rest=${line##*) }
  case "$rest" in Z*) zombies=$((zombies+1));; esac
  case "$line" in *"(containerd-shim"*) shims=$((shims+1));; esac
done
echo "zombies=$zombies"
echo "shims=$shims"
echo "containers=$(docker ps -aq | wc -l)"
"#;
    let out = run(
        env.command(&["sh", "-c", script]).env("USMOL_DOCKER", "1"),
        &archive,
        Duration::from_secs(600),
    );
    out.expect_code(0);
    for want in ["ok=20", "zombies=0", "shims=0", "containers=0"] {
        assert!(
            out.stdout_text().lines().any(|l| l == want),
            "expected {want}\n{out}"
        );
    }
    eprintln!(
        "20 parallel containers: {} (whole run {:.1}s)",
        out.stdout_text().lines().next().unwrap_or(""),
        out.elapsed.as_secs_f64()
    );
    env.wait_processes_gone(Duration::from_secs(10))
        .expect("host processes left");
    assert!(env.leftovers().is_empty(), "{:?}", env.leftovers());
}
