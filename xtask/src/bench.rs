//! `cargo xtask bench`: measures the built artifacts in `out/` side by side
//! in one run and writes the figures into `BENCHMARKS.md`.
//!
//! Measured: cold start of a nested `docker run --rm hello-world` (plain
//! artifact, and the image on a docker engine when one answers) broken down
//! by the phase timings the launcher prints with `USMOL_TIMINGS=1`; a boot
//! without dockerd; warm nested `docker run` latency against the host
//! engine; fork+exec and syscall loops in the guest (seccomp and ptrace
//! mode, one and two CPUs) against the host; artifact sizes; memory at idle;
//! optionally a warm no-change `cargo xtask build-image`.
//!
//! Benchmarks report, they never assert: a failed measurement becomes a
//! "not measured" line with its reason. Only the generated part of
//! `BENCHMARKS.md` between [`BEGIN`] and [`END`] is replaced, so hand-written
//! sections around it survive re-runs.
//!
//! No registry is reachable, so the nested hello-world image is built here:
//! `tests/fixtures/hello.c` compiled static and libc-free, wrapped in a
//! docker archive. The archive is written with `tar` rather than through
//! `usmol-oci`, whose registry client (TLS stack, async runtime) would make
//! every `cargo xtask` invocation compile some 170 more crates.

mod net;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use sha2::{Digest, Sha256};
use xshell::{Shell, cmd};

/// Start of the generated part of `BENCHMARKS.md`.
pub const BEGIN: &str = "<!-- bench:begin -->";
/// End of the generated part of `BENCHMARKS.md`.
pub const END: &str = "<!-- bench:end -->";

/// One guest with dockerd on a loaded 2-CPU machine, or a loop of them.
const TIMEOUT: Duration = Duration::from_secs(600);
/// Tag of the nested image inside the guest (what the README shows).
const GUEST_HELLO: &str = "hello-world:latest";
/// Tag of the same image on the host engine, apart from any real hello-world.
const HOST_HELLO: &str = "usmol-bench-hello:latest";
const IMAGE: &str = "usmol:latest";
/// What the hello program prints.
const HELLO_TEXT: &str = "Hello from Docker!";

// Goals from the project's performance issue.
const GOAL_COLD_START_S: f64 = 3.0;
const GOAL_WARM_RATIO: f64 = 5.0;
const GOAL_IMAGE_MB: f64 = 80.0;
const GOAL_BUILD_S: f64 = 10.0;

// Published sizes quoted for comparison (not measured here).
const DIND_MB: f64 = 134.0;
const ORIGINAL_USMOL_MB: f64 = 412.7;

/// Iterations of the guest micro-benchmark loops.
const FORKS: u32 = 1000;
const DD_BYTES: u32 = 200_000;
/// Bytes piped through the launcher's stdin and stdout.
const STREAM_BYTES: u64 = 64 << 20;

#[derive(clap::Args)]
pub struct Args {
    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Also time a warm no-change `cargo xtask build-image` (it rebuilds
    /// the output directory).
    #[arg(long)]
    bench_build: bool,
    /// Also time one cold `cargo xtask build-image`: an empty download,
    /// toolchain and kernel cache in a scratch directory, so every package
    /// is fetched again through the configured mirror and the kernel and
    /// passt are compiled (about 15 minutes on 2 CPUs). Its image must come
    /// out byte-identical to the one in the output directory.
    #[arg(long)]
    bench_cold_build: bool,
}

pub fn run(root: &Path, args: Args) -> Result<()> {
    let out = match std::env::var_os("USMOL_OUT") {
        Some(dir) => PathBuf::from(dir),
        None => root.join("out"),
    };
    let run = out.join("usmol/run");
    ensure!(
        run.is_file() && out.join("usmol/lib/linux").is_file(),
        "{} is missing: run `cargo xtask build-image` first (or point USMOL_OUT at a build output)",
        run.display()
    );
    let sh = Shell::new()?;
    let scratch = sh
        .create_temp_dir()
        .context("creating a scratch directory for the bench")?;
    let bench = Bench {
        sh: &sh,
        root,
        out: &out,
        run: &run,
        scratch: scratch.path(),
        runs: args.runs as usize,
        engine: engine_answers(&sh),
    };
    let report = bench.measure(args.bench_build, args.bench_cold_build)?;
    let text = report.render(args.runs);
    let path = root.join("BENCHMARKS.md");
    write_generated(&path, &text)?;
    println!("{text}");
    progress(&format!("wrote {}", path.display()));
    Ok(())
}

fn progress(line: &str) {
    eprintln!("bench: {line}");
}

struct Bench<'a> {
    sh: &'a Shell,
    root: &'a Path,
    out: &'a Path,
    run: &'a Path,
    scratch: &'a Path,
    runs: usize,
    engine: bool,
}

/// Everything one bench run found; `Err` is a measurement that could not
/// be taken, with the reason.
struct Report {
    machine: Machine,
    cold_plain: Result<Vec<Timed>>,
    cold_engine: Option<Result<Vec<Timed>>>,
    boot_no_docker: Result<Vec<Timed>>,
    warm_guest: Result<Vec<f64>>,
    warm_host: Option<Result<Vec<f64>>>,
    micro: Vec<(&'static str, Result<Micro>)>,
    streams: Result<Streams>,
    sizes: Result<Sizes>,
    memory: Result<Vec<Memory>>,
    build: Option<Result<Vec<f64>>>,
    cold_build: Option<Result<ColdBuild>>,
    network: Result<net::Net>,
}

/// One build from an empty cache.
struct ColdBuild {
    seconds: f64,
    /// Its OCI index is byte-identical to the one the warm builds made.
    same_image: bool,
}

impl Bench<'_> {
    fn measure(&self, bench_build: bool, bench_cold_build: bool) -> Result<Report> {
        let machine = Machine::describe(self.sh, self.root, self.engine);
        progress(&format!(
            "{} runs each; load average {:.2} at start",
            self.runs, machine.load
        ));
        let hello = self.hello_binary()?;
        let guest_tar = self.scratch.join("hello.tar");
        write_docker_archive(&hello, GUEST_HELLO, &guest_tar)?;
        let disk = self.scratch.join("docker.ext4");
        let seeded = noted("seeding the docker disk", self.seed_disk(&disk, &guest_tar));
        let cold_plain = after(&seeded, "cold start", || self.cold_plain(&disk));
        let cold_engine = self
            .engine
            .then(|| noted("cold start on the engine", self.cold_engine(&guest_tar)));
        let boot_no_docker = noted("boot without docker", self.boot_no_docker());
        let warm_guest = after(&seeded, "warm docker run in the guest", || {
            self.warm_guest(&disk)
        });
        let warm_host = self
            .engine
            .then(|| noted("warm docker run on the host", self.warm_host(&hello)));
        let micro = self.micro();
        let streams = noted("streams", self.streams());
        let sizes = noted("artifact sizes", Sizes::measure(self.out));
        let memory = after(&seeded, "memory", || self.memory(&disk));
        let network = noted("network", self.network());
        let build = bench_build.then(|| noted("warm build", self.build()));
        let cold_build = bench_cold_build.then(|| noted("cold build", self.cold_build()));
        Ok(Report {
            machine,
            cold_plain,
            cold_engine,
            boot_no_docker,
            warm_guest,
            warm_host,
            micro,
            streams,
            sizes,
            memory,
            build,
            cold_build,
            network,
        })
    }

    /// Compiles the libc-free hello program the tests use as their nested
    /// image.
    fn hello_binary(&self) -> Result<PathBuf> {
        let source = self.root.join("tests/fixtures/hello.c");
        let bin = self.scratch.join("hello");
        let sh = self.sh;
        cmd!(
            sh,
            "cc -static -nostdlib -fno-pie -no-pie -Os -s -o {bin} {source}"
        )
        .quiet()
        .run()
        .with_context(|| format!("compiling {} with cc", source.display()))?;
        Ok(bin)
    }

    /// The launcher with the bench's environment, ready to spawn.
    fn launcher(&self, env: &[(&str, &str)], args: &[&str]) -> Command {
        let mut cmd = Command::new(self.run);
        // The user's own knobs would skew the figures.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("USMOL_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(env.iter().copied()).args(args);
        cmd
    }

    /// Loads the hello image into a docker disk once, so that every timed
    /// start finds it there.
    fn seed_disk(&self, disk: &Path, archive: &Path) -> Result<()> {
        progress("seeding a docker disk with hello-world (docker load)");
        let disk = disk.to_str().context("scratch path is not UTF-8")?;
        let cmd = self.launcher(&[("USMOL_DISK", disk)], &["docker", "load"]);
        let done = timed(cmd, Some(archive), TIMEOUT)?;
        done.expect_ok("docker load in the guest")?;
        ensure!(
            done.stdout.contains(GUEST_HELLO),
            "docker load in the guest did not report {GUEST_HELLO}:\n{}",
            done.report()
        );
        Ok(())
    }

    fn cold_plain(&self, disk: &Path) -> Result<Vec<Timed>> {
        let disk = disk.to_str().context("scratch path is not UTF-8")?;
        self.repeat("cold start, plain artifact", || {
            let cmd = self.launcher(
                &[("USMOL_DISK", disk), ("USMOL_TIMINGS", "1")],
                &["docker", "run", "--rm", "hello-world"],
            );
            let done = timed(cmd, None, TIMEOUT)?;
            done.expect_hello("run docker run --rm hello-world")?;
            Ok(done)
        })
    }

    /// The same start through the OCI image on the host engine, with the
    /// state directory as a volume so the seeded docker disk is reused.
    fn cold_engine(&self, archive: &Path) -> Result<Vec<Timed>> {
        let loaded = LoadedImage::load(self.sh, IMAGE, &self.out.join("usmol-docker.tar"))?;
        let state = self.scratch.join("state");
        std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        // The image's user need not be root.
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .with_context(|| format!("opening {} to every user", state.display()))?;
        let volume = format!("{}:/var/lib/usmol", state.display());
        progress("seeding the state volume with hello-world (docker load via the image)");
        let name = format!("usmol-bench-{}", std::process::id());
        let seed = engine_run(&name, &volume, true, &[], &["docker", "load"]);
        timed_container(&name, seed, Some(archive))?.expect_ok("docker load in the image")?;
        let runs = self.repeat("cold start, docker engine", || {
            let cmd = engine_run(
                &name,
                &volume,
                false,
                &["-e", "USMOL_TIMINGS=1"],
                &["docker", "run", "--rm", "hello-world"],
            );
            let done = timed_container(&name, cmd, None)?;
            done.expect_hello("docker run usmol:latest docker run --rm hello-world")?;
            Ok(done)
        });
        drop(loaded);
        runs
    }

    fn boot_no_docker(&self) -> Result<Vec<Timed>> {
        self.repeat("boot without docker", || {
            let cmd = self.launcher(&[("USMOL_DOCKER", "0"), ("USMOL_TIMINGS", "1")], &["true"]);
            let done = timed(cmd, None, TIMEOUT)?;
            done.expect_ok("USMOL_DOCKER=0 run true")?;
            Ok(done)
        })
    }

    /// Nested `docker run` latency in one running guest, after one untimed
    /// warm-up run; milliseconds, timed inside the guest.
    fn warm_guest(&self, disk: &Path) -> Result<Vec<f64>> {
        progress("warm nested docker run, in one guest");
        let disk = disk.to_str().context("scratch path is not UTF-8")?;
        let script = format!(
            "docker run --rm hello-world >/dev/null || exit 1
             for i in $(seq {runs}); do
               s=$(date +%s%N); docker run --rm hello-world >/dev/null || exit 1; e=$(date +%s%N)
               echo \"ms $(( (e - s) / 1000 ))\"
             done",
            runs = self.runs
        );
        let cmd = self.launcher(&[("USMOL_DISK", disk)], &["sh", "-c", &script]);
        let done = timed(cmd, None, TIMEOUT)?;
        done.expect_ok("the warm docker run loop in the guest")?;
        let values = tagged(&done.stdout, "ms");
        ensure!(
            values.len() == self.runs,
            "the guest loop printed {} of {} timings:\n{}",
            values.len(),
            self.runs,
            done.report()
        );
        Ok(values.into_iter().map(|us| us / 1000.0).collect())
    }

    /// The same nested image on the host engine, under its own tag.
    fn warm_host(&self, hello: &Path) -> Result<Vec<f64>> {
        progress("warm docker run on the host engine");
        let archive = self.scratch.join("hello-host.tar");
        write_docker_archive(hello, HOST_HELLO, &archive)?;
        let _loaded = LoadedImage::load(self.sh, HOST_HELLO, &archive)?;
        let once = || -> Result<f64> {
            let mut cmd = Command::new("docker");
            cmd.args(["run", "--rm", HOST_HELLO]);
            let done = timed(cmd, None, TIMEOUT)?;
            done.expect_hello("docker run --rm on the host engine")?;
            Ok(done.elapsed.as_secs_f64() * 1000.0)
        };
        once()?;
        (0..self.runs).map(|_| once()).collect()
    }

    /// fork+exec and syscall loops on the host and in the guest (no
    /// dockerd), each mode in one guest running the loops `runs` times.
    fn micro(&self) -> Vec<(&'static str, Result<Micro>)> {
        let script = format!(
            "for r in $(seq {runs}); do
               s=$(date +%s%N); i=0; while [ $i -lt {FORKS} ]; do /bin/true; i=$((i + 1)); done; e=$(date +%s%N)
               echo \"fork $(( (e - s) / 1000 ))\"
               s=$(date +%s%N); dd if=/dev/zero of=/dev/null bs=1 count={DD_BYTES} 2>/dev/null; e=$(date +%s%N)
               echo \"dd $(( (e - s) / 1000 ))\"
             done",
            runs = self.runs
        );
        let modes: [(&'static str, &[(&str, &str)]); 3] = [
            (
                "seccomp, 1 CPU",
                &[("USMOL_SECCOMP", "on"), ("USMOL_CPUS", "1")],
            ),
            (
                "seccomp, 2 CPUs",
                &[("USMOL_SECCOMP", "on"), ("USMOL_CPUS", "2")],
            ),
            (
                "ptrace, 1 CPU",
                &[("USMOL_SECCOMP", "off"), ("USMOL_CPUS", "1")],
            ),
        ];
        let mut results = Vec::new();
        progress("micro-benchmarks on the host");
        let mut host = Command::new("sh");
        host.args(["-c", &script]);
        results.push(("host", noted("host loops", Micro::measure(host, self.runs))));
        for (mode, env) in modes {
            progress(&format!("micro-benchmarks in the guest, {mode}"));
            let mut env = env.to_vec();
            env.push(("USMOL_DOCKER", "0"));
            let cmd = self.launcher(&env, &["sh", "-c", &script]);
            results.push((mode, noted(mode, Micro::measure(cmd, self.runs))));
        }
        results
    }

    /// Throughput of a pipe into a guest command's stdin and out of its
    /// stdout, from the wall time of each run less that of `run true`
    /// right before it.
    fn streams(&self) -> Result<Streams> {
        let input = self.scratch.join("stream.bin");
        std::fs::write(&input, vec![0x5a; STREAM_BYTES as usize])
            .with_context(|| format!("writing {}", input.display()))?;
        let count = STREAM_BYTES.to_string();
        let env = [("USMOL_DOCKER", "0")];
        let mut streams = Streams {
            stdin: Vec::new(),
            stdout: Vec::new(),
        };
        for n in 1..=self.runs {
            let base = timed(self.launcher(&env, &["true"]), None, TIMEOUT)?;
            base.expect_ok("run true")?;
            let read = timed(
                self.launcher(&env, &["sh", "-c", "cat | wc -c"]),
                Some(&input),
                TIMEOUT,
            )?;
            read.expect_ok("run sh -c 'cat | wc -c'")?;
            ensure!(
                read.stdout.trim() == count,
                "the guest counted {:?} bytes of stdin, not {count}",
                read.stdout.trim()
            );
            let write = timed(
                self.launcher(&env, &["head", "-c", &count, "/dev/zero"]),
                None,
                TIMEOUT,
            )?;
            write.expect_ok("run head -c N /dev/zero")?;
            ensure!(
                write.stdout.len() as u64 == STREAM_BYTES,
                "{} bytes came out of stdout, not {count}",
                write.stdout.len()
            );
            let rate = |t: &Timed| {
                let secs = t.elapsed.saturating_sub(base.elapsed).as_secs_f64();
                STREAM_BYTES as f64 / 1e6 / secs.max(1e-3)
            };
            streams.stdin.push(rate(&read));
            streams.stdout.push(rate(&write));
            progress(&format!(
                "streams {n}/{}: stdin {:.0} MB/s, stdout {:.0} MB/s",
                self.runs,
                rate(&read),
                rate(&write)
            ));
        }
        Ok(streams)
    }

    /// Guest and host memory while the guest idles with dockerd running.
    fn memory(&self, disk: &Path) -> Result<Vec<Memory>> {
        let disk = disk.to_str().context("scratch path is not UTF-8")?;
        self.repeat("memory at idle", || {
            // The host is sampled 3 s after the command starts (dockerd is
            // ready by then), the guest 5 s later.
            let cmd = self.launcher(
                &[("USMOL_DISK", disk)],
                &["sh", "-c", "echo ready; sleep 8; cat /proc/meminfo"],
            );
            Memory::measure(cmd)
        })
    }

    /// Warm no-change `cargo xtask build-image` into the same output.
    fn build(&self) -> Result<Vec<f64>> {
        let sh = self.sh;
        let _dir = sh.push_dir(self.root);
        let out = self.out;
        self.repeat("warm no-change build-image", || {
            let start = Instant::now();
            cmd!(sh, "cargo xtask build-image --out {out}")
                .quiet()
                .ignore_stdout()
                .run()
                .context("cargo xtask build-image")?;
            Ok(start.elapsed().as_secs_f64())
        })
    }

    /// One `cargo xtask build-image` with an empty cache into a scratch
    /// output, compared with the output directory's image.
    fn cold_build(&self) -> Result<ColdBuild> {
        let sh = self.sh;
        let _dir = sh.push_dir(self.root);
        let cache = self.scratch.join("cold-cache");
        let out = self.scratch.join("cold-out");
        progress("cold build-image (empty cache: downloads, kernel and passt compile)");
        let start = Instant::now();
        cmd!(sh, "cargo xtask build-image --out {out}")
            .env("USMOL_CACHE_DIR", &cache)
            .quiet()
            .ignore_stdout()
            .run()
            .context("cargo xtask build-image with an empty USMOL_CACHE_DIR")?;
        let seconds = start.elapsed().as_secs_f64();
        progress(&format!("cold build-image: {seconds:.0} s"));
        let index = |dir: &Path| {
            let path = dir.join("usmol-oci/index.json");
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        let same_image = index(&out)? == index(self.out)?;
        // Gigabytes of packages, toolchain and output: not kept until the
        // scratch directory goes.
        for dir in [&cache, &out] {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(ColdBuild {
            seconds,
            same_image,
        })
    }

    /// Runs `once` `runs` times; the first failure ends the series.
    fn repeat<T: Seconds>(
        &self,
        what: &str,
        mut once: impl FnMut() -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut all = Vec::with_capacity(self.runs);
        for n in 1..=self.runs {
            let value = once().with_context(|| format!("{what}, run {n}"))?;
            progress(&format!(
                "{what} {n}/{}: {:.2} s",
                self.runs,
                value.seconds()
            ));
            all.push(value);
        }
        Ok(all)
    }
}

/// What a series' progress line shows.
trait Seconds {
    fn seconds(&self) -> f64;
}

impl Seconds for f64 {
    fn seconds(&self) -> f64 {
        *self
    }
}

impl Seconds for Timed {
    fn seconds(&self) -> f64 {
        self.elapsed.as_secs_f64()
    }
}

impl Seconds for Memory {
    fn seconds(&self) -> f64 {
        self.elapsed.as_secs_f64()
    }
}

/// Runs a measurement that needs the seeded docker disk.
fn after<T>(seeded: &Result<()>, what: &str, measure: impl FnOnce() -> Result<T>) -> Result<T> {
    match seeded {
        Ok(()) => noted(what, measure()),
        Err(e) => Err(anyhow!("the docker disk could not be seeded: {e:#}")),
    }
}

/// Shows a failed measurement's whole reason on stderr (the report has
/// room for one line of it).
fn noted<T>(what: &str, result: Result<T>) -> Result<T> {
    if let Err(e) = &result {
        progress(&format!("{what}: not measured: {e:#}"));
    }
    result
}

fn engine_answers(sh: &Shell) -> bool {
    cmd!(sh, "docker info")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
}

/// `docker run --rm --network none` of the usmol image, the way the README
/// shows it, with the state volume; `-i` only when stdin carries data.
fn engine_run(name: &str, volume: &str, stdin: bool, flags: &[&str], args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.args([
        "run",
        "--rm",
        "--name",
        name,
        "--network",
        "none",
        "-v",
        volume,
    ]);
    if stdin {
        cmd.arg("-i");
    }
    cmd.args(flags).arg(IMAGE).args(args);
    cmd
}

/// [`timed`] for a named container, force-removed when the client failed
/// (a killed client leaves its container running).
fn timed_container(name: &str, cmd: Command, stdin: Option<&Path>) -> Result<Timed> {
    let done = timed(cmd, stdin, TIMEOUT);
    if !done.as_ref().is_ok_and(|d| d.status.success()) {
        let _ = Command::new("docker").args(["rm", "-f", name]).output();
    }
    done
}

/// An image loaded into the host engine for the bench, removed again
/// unless the engine already had that very image.
struct LoadedImage {
    remove: Option<String>,
}

impl LoadedImage {
    fn load(sh: &Shell, reference: &str, archive: &Path) -> Result<LoadedImage> {
        ensure!(
            archive.is_file(),
            "{} is missing: run `cargo xtask build-image` first",
            archive.display()
        );
        let before = image_id(sh, reference);
        progress(&format!("docker load -i {}", archive.display()));
        cmd!(sh, "docker load -i {archive}")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("docker load -i {}", archive.display()))?;
        let after = image_id(sh, reference).with_context(|| {
            format!(
                "{reference} is not in the engine after docker load -i {}",
                archive.display()
            )
        })?;
        Ok(LoadedImage {
            remove: (before.as_deref() != Some(after.as_str())).then_some(after),
        })
    }
}

impl Drop for LoadedImage {
    fn drop(&mut self) {
        if let Some(id) = self.remove.take() {
            let _ = Command::new("docker").args(["rmi", "-f", &id]).output();
        }
    }
}

fn image_id(sh: &Shell, reference: &str) -> Option<String> {
    let format = "{{.Id}}";
    cmd!(sh, "docker image inspect --format {format} {reference}")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()
}

/// A finished command with its wall time and output.
struct Timed {
    what: String,
    elapsed: Duration,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Timed {
    fn expect_ok(&self, what: &str) -> Result<()> {
        ensure!(self.status.success(), "{what} failed:\n{}", self.report());
        Ok(())
    }

    fn expect_hello(&self, what: &str) -> Result<()> {
        self.expect_ok(what)?;
        ensure!(
            self.stdout.contains(HELLO_TEXT),
            "{what} did not print the hello message:\n{}",
            self.report()
        );
        Ok(())
    }

    fn report(&self) -> String {
        let tail = |text: &str| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        format!(
            "command: {}\nstatus: {} after {:.1} s\nstdout (end):\n{}\nstderr (end):\n{}",
            self.what,
            self.status,
            self.elapsed.as_secs_f64(),
            tail(&self.stdout),
            tail(&self.stderr)
        )
    }

    fn phases(&self) -> Option<Phases> {
        Phases::parse(&self.stderr, self.elapsed.as_secs_f64())
    }
}

/// Runs `cmd` with `stdin` from a file (else empty), killing it after
/// `timeout`.
fn timed(mut cmd: Command, stdin: Option<&Path>, timeout: Duration) -> Result<Timed> {
    let what = describe(&cmd);
    let input = match stdin {
        Some(path) => Stdio::from(
            std::fs::File::open(path)
                .with_context(|| format!("opening {} as stdin of {what}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    let start = Instant::now();
    let mut child = cmd
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish in {} s; killed", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    Ok(Timed {
        what,
        elapsed,
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn drain(from: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut from) = from {
            let _ = from.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.contains(char::is_whitespace) {
            let _ = write!(text, " {:?}", arg.lines().next().unwrap_or("").trim());
        } else {
            let _ = write!(text, " {arg}");
        }
    }
    text
}

/// The numbers after `tag ` at the start of lines.
fn tagged(text: &str, tag: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix(tag)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .collect()
}

/// One start broken down by the launcher's `USMOL_TIMINGS=1` line (wall
/// seconds; guest uptime stands in for wall time inside the guest).
#[derive(Debug, Clone, PartialEq)]
struct Phases {
    /// launcher start -> kernel spawned
    setup: f64,
    /// kernel spawned -> init starts
    kernel: f64,
    /// init start -> mounts done
    mounts: f64,
    /// mounts done -> dockerd answers `/_ping` (absent without dockerd)
    dockerd: Option<f64>,
    /// the command itself
    command: f64,
    /// command done -> status written before power-off
    shutdown: f64,
    /// status written -> launcher exit (power-off, clean-up)
    exit: f64,
    /// the launcher's own wall total
    launcher: f64,
    /// measured wall time minus the launcher's: the container engine
    outside: f64,
}

const PHASE_NAMES: [&str; 9] = [
    "launcher setup (start -> kernel spawned)",
    "kernel boot (-> init starts)",
    "init mounts (-> docker disk mounted)",
    "dockerd start (-> `/_ping` answers)",
    "the command",
    "guest shutdown (-> status written)",
    "power-off and launcher exit",
    "outside the launcher (process start; container engine)",
    "total wall time",
];

impl Phases {
    /// Parses `usmol: timings: launcher setup 0.010s; guest uptime at init
    /// 0.300s, mounts 0.500s, dockerd ready 3.000s, command start 3.001s,
    /// command done 4.000s, shutdown 4.500s; wall total 5.000s`.
    fn parse(stderr: &str, wall: f64) -> Option<Phases> {
        let line = stderr
            .lines()
            .rev()
            .find(|line| line.contains("usmol: timings:"))?;
        let value = |key: &str| -> Option<f64> {
            let at = line.find(key)? + key.len();
            let token = line[at..].split([',', ';']).next()?.trim();
            token.strip_suffix('s')?.parse().ok()
        };
        let setup = value("launcher setup ")?;
        let init = value("at init ")?;
        let mounts = value("mounts ")?;
        let ready = value("dockerd ready ");
        let start = value("command start ")?;
        let done = value("command done ")?;
        let shutdown = value("shutdown ")?;
        let launcher = value("wall total ")?;
        Some(Phases {
            setup,
            kernel: init,
            mounts: mounts - init,
            dockerd: ready.map(|ready| ready - mounts),
            command: done - start,
            shutdown: shutdown - done,
            exit: launcher - setup - shutdown,
            launcher,
            outside: wall - launcher,
        })
    }

    fn values(&self, wall: f64) -> [Option<f64>; 9] {
        [
            Some(self.setup),
            Some(self.kernel),
            Some(self.mounts),
            self.dockerd,
            Some(self.command),
            Some(self.shutdown),
            Some(self.exit),
            Some(self.outside),
            Some(wall),
        ]
    }
}

/// Loop timings in milliseconds, by loop.
struct Micro {
    fork: Vec<f64>,
    dd: Vec<f64>,
}

/// MB/s per run through the launcher, each way.
struct Streams {
    stdin: Vec<f64>,
    stdout: Vec<f64>,
}

impl Micro {
    fn measure(cmd: Command, runs: usize) -> Result<Micro> {
        let done = timed(cmd, None, TIMEOUT)?;
        done.expect_ok("the micro-benchmark loops")?;
        let ms = |tag| {
            tagged(&done.stdout, tag)
                .into_iter()
                .map(|us| us / 1000.0)
                .collect::<Vec<_>>()
        };
        let (fork, dd) = (ms("fork"), ms("dd"));
        ensure!(
            fork.len() == runs && dd.len() == runs,
            "the loops printed {} fork and {} dd timings of {runs}:\n{}",
            fork.len(),
            dd.len(),
            done.report()
        );
        progress(&format!(
            "fork+exec ×{FORKS}: {:.0} ms, dd ×{DD_BYTES}: {:.0} ms (medians)",
            Stats::of(&fork).median,
            Stats::of(&dd).median
        ));
        Ok(Micro { fork, dd })
    }
}

/// Memory of one idle guest with dockerd running.
struct Memory {
    elapsed: Duration,
    /// guest MemTotal and MemTotal - MemAvailable, MiB
    guest_total: f64,
    guest_used: f64,
    /// host processes below the launcher
    processes: usize,
    /// the kernel process (the launcher's child): VmRSS, MiB
    kernel_rss: f64,
    /// all of them: sum of VmRSS and of Pss, MiB
    rss_sum: f64,
    pss_sum: f64,
}

impl Memory {
    fn measure(mut cmd: Command) -> Result<Memory> {
        let what = describe(&cmd);
        let start = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let stderr = drain(child.stderr.take());
        let mut stdout = BufReader::new(child.stdout.take().context("stdout pipe")?);
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .with_context(|| format!("reading the stdout of {what}"))?;
        let sample = if line.trim() == "ready" {
            std::thread::sleep(Duration::from_secs(3));
            HostMemory::below(child.id())
        } else {
            Err(anyhow!("the guest did not print `ready` (got {line:?})"))
        };
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
        let status = child
            .wait()
            .with_context(|| format!("waiting for {what}"))?;
        let stderr = stderr.join().unwrap_or_default();
        ensure!(
            status.success(),
            "{what} failed with {status}; stderr:\n{stderr}"
        );
        let host = sample?;
        let meminfo: HashMap<&str, f64> = rest
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(':')?;
                Some((
                    key,
                    value.trim().trim_end_matches(" kB").parse::<f64>().ok()? / 1024.0,
                ))
            })
            .collect();
        let field = |key| {
            meminfo
                .get(key)
                .copied()
                .with_context(|| format!("{key} missing from the guest's /proc/meminfo:\n{rest}"))
        };
        let (total, available) = (field("MemTotal")?, field("MemAvailable")?);
        Ok(Memory {
            elapsed: start.elapsed(),
            guest_total: total,
            guest_used: total - available,
            processes: host.processes,
            kernel_rss: host.kernel_rss,
            rss_sum: host.rss_sum,
            pss_sum: host.pss_sum,
        })
    }
}

struct HostMemory {
    processes: usize,
    kernel_rss: f64,
    rss_sum: f64,
    pss_sum: f64,
}

impl HostMemory {
    /// Sums the memory of every process below `launcher` (the UML kernel
    /// and its helper processes).
    fn below(launcher: u32) -> Result<HostMemory> {
        let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for entry in std::fs::read_dir("/proc").context("listing /proc")? {
            let name = entry.context("listing /proc")?.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            // `pid (comm) state ppid ...`: comm may hold spaces and parens.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
            else {
                continue;
            };
            children.entry(ppid).or_default().push(pid);
        }
        let direct = children.get(&launcher).cloned().unwrap_or_default();
        ensure!(
            !direct.is_empty(),
            "the launcher (pid {launcher}) has no child process"
        );
        let mut all = Vec::new();
        let mut queue = direct.clone();
        while let Some(pid) = queue.pop() {
            all.push(pid);
            queue.extend(children.get(&pid).into_iter().flatten());
        }
        let kib = |pid: u32, file: &str, key: &str| -> f64 {
            std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .ok()
                .and_then(|text| {
                    let line = text.lines().find(|line| line.starts_with(key))?;
                    line[key.len()..]
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or(0.0)
        };
        Ok(HostMemory {
            processes: all.len(),
            kernel_rss: direct
                .iter()
                .map(|&pid| kib(pid, "status", "VmRSS:"))
                .sum::<f64>()
                / 1024.0,
            rss_sum: all
                .iter()
                .map(|&pid| kib(pid, "status", "VmRSS:"))
                .sum::<f64>()
                / 1024.0,
            pss_sum: all
                .iter()
                .map(|&pid| kib(pid, "smaps_rollup", "Pss:"))
                .sum::<f64>()
                / 1024.0,
        })
    }
}

/// Artifact sizes in bytes.
struct Sizes {
    oci_compressed: u64,
    oci_uncompressed: u64,
    oci_layers: usize,
    /// The same image with gzip layers (`usmol-oci-gzip`), when built.
    oci_gzip_compressed: Option<u64>,
    tarball: Option<(String, u64)>,
    kernel: u64,
    rootfs: u64,
    rootfs_allocated: u64,
}

impl Sizes {
    fn measure(out: &Path) -> Result<Sizes> {
        use std::os::unix::fs::MetadataExt;
        let layout = out.join("usmol-oci");
        let layers = oci_layers(&layout)?;
        let mut oci_uncompressed = 0;
        for (media_type, path) in &layers {
            oci_uncompressed += uncompressed_size(media_type, path)?;
        }
        let blobs_size = |layers: &[(String, PathBuf)]| {
            layers
                .iter()
                .map(|(_, path)| size(path))
                .sum::<Result<u64>>()
        };
        let oci_compressed = blobs_size(&layers)?;
        let gzip_layout = out.join("usmol-oci-gzip");
        let oci_gzip_compressed = if gzip_layout.join("index.json").is_file() {
            Some(blobs_size(&oci_layers(&gzip_layout)?)?)
        } else {
            None
        };
        let tarball = std::fs::read_dir(out)
            .with_context(|| format!("listing {}", out.display()))?
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("usmol-") && name.ends_with(".tar.zst"))
            })
            .map(|path| -> Result<(String, u64)> {
                Ok((
                    path.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                    size(&path)?,
                ))
            })
            .transpose()?;
        let rootfs = out.join("usmol/lib/rootfs.ext4");
        let rootfs_meta =
            std::fs::metadata(&rootfs).with_context(|| format!("reading {}", rootfs.display()))?;
        Ok(Sizes {
            oci_compressed,
            oci_uncompressed,
            oci_layers: layers.len(),
            oci_gzip_compressed,
            tarball,
            kernel: size(&out.join("usmol/lib/linux"))?,
            rootfs: rootfs_meta.len(),
            rootfs_allocated: rootfs_meta.blocks() * 512,
        })
    }
}

fn size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len())
}

/// The layer blobs (media type, path) of the linux/amd64 image in an OCI
/// layout, following nested indexes.
fn oci_layers(layout: &Path) -> Result<Vec<(String, PathBuf)>> {
    let read = |path: &Path| -> Result<serde_json::Value> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {} as JSON", path.display()))
    };
    let blob = |digest: &serde_json::Value| -> Result<PathBuf> {
        let digest = digest.as_str().context("a descriptor without a digest")?;
        let hex = digest
            .strip_prefix("sha256:")
            .with_context(|| format!("unsupported digest {digest}"))?;
        Ok(layout.join("blobs/sha256").join(hex))
    };
    let mut doc = read(&layout.join("index.json"))?;
    // An index lists manifests (or further indexes); take the amd64 one.
    while let Some(manifests) = doc.get("manifests").and_then(|m| m.as_array()) {
        let pick = manifests
            .iter()
            .find(|m| m.pointer("/platform/architecture").and_then(|a| a.as_str()) == Some("amd64"))
            .or_else(|| manifests.first())
            .with_context(|| format!("an empty index in {}", layout.display()))?;
        doc = read(&blob(&pick["digest"])?)?;
    }
    let layers = doc
        .get("layers")
        .and_then(|l| l.as_array())
        .with_context(|| format!("the image manifest in {} has no layers", layout.display()))?;
    layers
        .iter()
        .map(|layer| {
            let media_type = layer["mediaType"].as_str().unwrap_or_default().to_owned();
            Ok((media_type, blob(&layer["digest"])?))
        })
        .collect()
}

/// Bytes of a layer once decompressed, by streaming it through the
/// matching decompressor.
fn uncompressed_size(media_type: &str, path: &Path) -> Result<u64> {
    let tool = if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
        "gzip"
    } else if media_type.ends_with("+zstd") || media_type.ends_with(".zstd") {
        "zstd"
    } else {
        return size(path);
    };
    let mut child = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {tool} -dc {}", path.display()))?;
    let mut stdout = child.stdout.take().context("decompressor stdout")?;
    let bytes = std::io::copy(&mut stdout, &mut std::io::sink())
        .with_context(|| format!("reading {tool} -dc {}", path.display()))?;
    let status = child.wait()?;
    ensure!(
        status.success(),
        "{tool} -dc {} failed: {status}",
        path.display()
    );
    Ok(bytes)
}

/// Writes a docker archive (`docker save` format) holding `binary` as
/// `/hello`, command `/hello`, tagged `tag`.
fn write_docker_archive(binary: &Path, tag: &str, out: &Path) -> Result<()> {
    let program = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let mut layer = tar::Builder::new(Vec::new());
    append(&mut layer, "hello", 0o755, &program)?;
    let layer = layer.into_inner().context("finishing the hello layer")?;
    let layer_id = sha256_hex(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Cmd": ["/hello"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_id}")] },
    });
    let config = serde_json::to_vec(&config)?;
    let config_name = format!("{}.json", sha256_hex(&config));
    let layer_name = format!("{layer_id}/layer.tar");
    let manifest = serde_json::to_vec(&serde_json::json!([
        { "Config": config_name, "RepoTags": [tag], "Layers": [layer_name] }
    ]))?;
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut archive = tar::Builder::new(file);
    append(&mut archive, &config_name, 0o644, &config)?;
    append(&mut archive, &layer_name, 0o644, &layer)?;
    append(&mut archive, "manifest.json", 0o644, &manifest)?;
    archive
        .finish()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

fn append<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, path, data)
        .with_context(|| format!("adding {path} to a docker archive"))
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The machine the figures were taken on.
struct Machine {
    cpu: String,
    nproc: usize,
    memory_gib: f64,
    kernel: String,
    engine: Option<String>,
    date: String,
    load: f64,
    revision: String,
}

impl Machine {
    fn describe(sh: &Shell, root: &Path, engine: bool) -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|line| {
                Some(
                    line.strip_prefix("model name")?
                        .split_once(':')?
                        .1
                        .trim()
                        .to_owned(),
                )
            })
            .unwrap_or_else(|| "unknown".into());
        let memory_gib = read("/proc/meminfo")
            .lines()
            .find_map(|line| {
                line.strip_prefix("MemTotal:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
            / (1024.0 * 1024.0);
        let load = read("/proc/loadavg")
            .split_whitespace()
            .next()
            .and_then(|l| l.parse().ok())
            .unwrap_or(0.0);
        let quiet = |mut cmd: xshell::Cmd<'_>| {
            cmd.set_quiet(true);
            cmd.set_ignore_stderr(true);
            cmd.read().ok().filter(|text| !text.is_empty())
        };
        let (version, date) = ("{{.Server.Version}}", "+%Y-%m-%d %H:%M UTC");
        Machine {
            cpu,
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            engine: engine
                .then(|| quiet(cmd!(sh, "docker version --format {version}")))
                .flatten(),
            date: quiet(cmd!(sh, "date -u {date}")).unwrap_or_else(|| "unknown".into()),
            load,
            revision: quiet(cmd!(sh, "git -C {root} rev-parse --short HEAD"))
                .unwrap_or_else(|| "unknown".into()),
        }
    }
}

/// Median, min and max of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Stats {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Stats {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// `median | min | max` with `digits` decimals.
    fn cells(&self, digits: usize) -> String {
        format!(
            "{:.digits$} | {:.digits$} | {:.digits$}",
            self.median, self.min, self.max
        )
    }
}

fn walls(runs: &[Timed]) -> Vec<f64> {
    runs.iter().map(|t| t.elapsed.as_secs_f64()).collect()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn met(ok: bool) -> &'static str {
    if ok { "yes" } else { "no" }
}

impl Report {
    fn render(&self, runs: u32) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(md, "## Latest run\n");
        let _ = writeln!(
            md,
            "Generated by `cargo xtask bench --runs {runs}` on {} (repository at {}). \
             Wall times in seconds unless a heading says otherwise; each figure is the \
             median, min and max over the runs.",
            m.date, m.revision
        );
        if m.load > 1.5 {
            let _ = writeln!(
                md,
                "\n**Taken on a shared machine**: the load average was {:.2} at the start \
                 (other jobs were running), so the figures are slower and noisier than on an idle host.",
                m.load
            );
        }
        let _ = writeln!(md, "\n### Machine\n\n| | |\n| --- | --- |");
        let _ = writeln!(md, "| CPU | {} |", m.cpu);
        let _ = writeln!(md, "| CPUs (nproc) | {} |", m.nproc);
        let _ = writeln!(md, "| memory | {:.1} GiB |", m.memory_gib);
        let _ = writeln!(md, "| host kernel | {} |", m.kernel);
        let _ = writeln!(
            md,
            "| docker engine | {} |",
            m.engine.as_deref().unwrap_or("none answering")
        );
        let _ = writeln!(md, "| load average at start | {:.2} |", m.load);

        self.render_goals(&mut md);
        self.render_starts(&mut md);
        self.render_phases(&mut md);
        self.render_warm(&mut md);
        self.render_micro(&mut md);
        self.render_streams(&mut md);
        self.render_sizes(&mut md);
        self.render_memory(&mut md);
        self.render_build(&mut md);
        match &self.network {
            Ok(n) => n.render(&mut md),
            Err(e) => {
                let _ = writeln!(md, "\n### Network\n\nnot measured: {e:#}");
            }
        }
        md
    }

    fn render_goals(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n### Goals\n\n| goal | target | measured (median) | met |\n| --- | --- | --- | --- |"
        );
        let mut row = |goal: &str, target: String, measured: Option<(String, bool)>| {
            let (value, ok) = measured.map_or(("not measured".into(), "-"), |(v, ok)| (v, met(ok)));
            let _ = writeln!(md, "| {goal} | {target} | {value} | {ok} |");
        };
        let cold = self.cold_plain.as_ref().ok().map(|runs| {
            let s = Stats::of(&walls(runs));
            (format!("{:.2} s", s.median), s.median <= GOAL_COLD_START_S)
        });
        row(
            "cold start to hello-world done (plain artifact)",
            format!("≤ {GOAL_COLD_START_S} s"),
            cold,
        );
        let ratio = self
            .warm_ratio()
            .map(|r| (format!("{r:.1}x"), r <= GOAL_WARM_RATIO));
        row(
            "warm nested hello-world vs the host engine",
            format!("≤ {GOAL_WARM_RATIO}x"),
            ratio,
        );
        let image = self.sizes.as_ref().ok().map(|s| {
            let size = mb(s.oci_compressed);
            (format!("{size:.1} MB"), size <= GOAL_IMAGE_MB)
        });
        row(
            "compressed OCI image",
            format!("≤ {GOAL_IMAGE_MB} MB"),
            image,
        );
        let build = self
            .build
            .as_ref()
            .and_then(|b| b.as_ref().ok())
            .map(|values| {
                let s = Stats::of(values);
                (format!("{:.1} s", s.median), s.median <= GOAL_BUILD_S)
            });
        row(
            "warm no-change build-image",
            format!("≤ {GOAL_BUILD_S} s"),
            build,
        );
        row(
            "guest bulk TCP to the outer loopback (passt)",
            format!("≥ {} MB/s", net::GOAL_BULK_MB_S),
            self.network.as_ref().ok().map(net::Net::bulk_goal),
        );
    }

    fn warm_ratio(&self) -> Option<f64> {
        let guest = self.warm_guest.as_ref().ok()?;
        let host = self.warm_host.as_ref()?.as_ref().ok()?;
        Some(Stats::of(guest).median / Stats::of(host).median)
    }

    fn render_starts(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n### Start-up\n\n| measurement | median | min | max |\n| --- | --- | --- | --- |"
        );
        let mut row = |what: &str, runs: Option<&Result<Vec<Timed>>>| match runs {
            Some(Ok(runs)) => {
                let _ = writeln!(md, "| {what} | {} |", Stats::of(&walls(runs)).cells(2));
            }
            Some(Err(e)) => {
                let _ = writeln!(md, "| {what} | not measured: {} | | |", one_line(e));
            }
            None => {
                let _ = writeln!(
                    md,
                    "| {what} | not measured: no docker engine answers `docker info` | | |"
                );
            }
        };
        row(
            "cold start, plain artifact: `USMOL_DISK=… run docker run --rm hello-world`",
            Some(&self.cold_plain),
        );
        row(
            "cold start, image on the docker engine: `docker run --network none -v STATE:/var/lib/usmol usmol:latest docker run --rm hello-world`",
            self.cold_engine.as_ref(),
        );
        row(
            "boot without docker: `USMOL_DOCKER=0 run true`",
            Some(&self.boot_no_docker),
        );
    }

    fn render_phases(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n### Cold start by phase\n\nFrom the launcher's `USMOL_TIMINGS=1` line: guest uptime at each \
             phase, so \"kernel boot\" runs from the kernel's start to init. Median (min–max), seconds."
        );
        let series: Vec<(&str, &Result<Vec<Timed>>)> = [
            Some(("plain artifact", &self.cold_plain)),
            self.cold_engine.as_ref().map(|r| ("docker engine", r)),
            Some((
                "no docker (`USMOL_DOCKER=0 run true`)",
                &self.boot_no_docker,
            )),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut columns = Vec::new();
        for (name, runs) in &series {
            let Ok(runs) = runs else { continue };
            let rows: Vec<[Option<f64>; 9]> = runs
                .iter()
                .filter_map(|t| Some(t.phases()?.values(t.elapsed.as_secs_f64())))
                .collect();
            if rows.len() != runs.len() {
                let _ = writeln!(
                    md,
                    "\n{name}: {} of {} runs printed no timings line.",
                    runs.len() - rows.len(),
                    runs.len()
                );
            }
            if !rows.is_empty() {
                columns.push((*name, rows));
            }
        }
        if columns.is_empty() {
            let _ = writeln!(md, "\nNot measured: no start was timed.");
            return;
        }
        let _ = write!(md, "\n| phase |");
        for (name, _) in &columns {
            let _ = write!(md, " {name} |");
        }
        let _ = write!(md, "\n| --- |");
        for _ in &columns {
            let _ = write!(md, " --- |");
        }
        let _ = writeln!(md);
        for (i, phase) in PHASE_NAMES.iter().enumerate() {
            let _ = write!(md, "| {phase} |");
            for (_, rows) in &columns {
                let values: Vec<f64> = rows.iter().filter_map(|row| row[i]).collect();
                if values.is_empty() {
                    let _ = write!(md, " - |");
                } else {
                    let s = Stats::of(&values);
                    let _ = write!(md, " {:.2} ({:.2}–{:.2}) |", s.median, s.min, s.max);
                }
            }
            let _ = writeln!(md);
        }
    }

    fn render_warm(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n### Warm nested `docker run --rm hello-world` (ms)\n\nOne running guest, after one untimed \
             run; timed inside the guest. The host engine runs the same image.\n\n\
             | where | median | min | max |\n| --- | --- | --- | --- |"
        );
        match &self.warm_guest {
            Ok(v) => _ = writeln!(md, "| inside the usmol guest | {} |", Stats::of(v).cells(0)),
            Err(e) => {
                _ = writeln!(
                    md,
                    "| inside the usmol guest | not measured: {} | | |",
                    one_line(e)
                )
            }
        }
        match &self.warm_host {
            Some(Ok(v)) => _ = writeln!(md, "| host engine | {} |", Stats::of(v).cells(0)),
            Some(Err(e)) => _ = writeln!(md, "| host engine | not measured: {} | | |", one_line(e)),
            None => {
                _ = writeln!(
                    md,
                    "| host engine | not measured: no docker engine answers | | |"
                )
            }
        }
        if let Some(ratio) = self.warm_ratio() {
            let _ = writeln!(md, "\nRatio of the medians: {ratio:.1}x.");
        }
    }

    fn render_micro(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n### Guest micro-benchmarks (ms, no dockerd)\n\n`{FORKS}` × `/bin/true` from `sh` (fork+exec), and \
             `dd if=/dev/zero of=/dev/null bs=1 count={DD_BYTES}` (two syscalls per byte); each mode is one \
             guest running the loops once per run. Median (min–max), and the ratio to the host's median.\n"
        );
        let host = self
            .micro
            .iter()
            .find(|(mode, _)| *mode == "host")
            .and_then(|(_, r)| r.as_ref().ok());
        let _ = write!(md, "| loop |");
        for (mode, _) in &self.micro {
            let _ = write!(md, " {mode} |");
        }
        let _ = write!(md, "\n| --- |");
        for _ in &self.micro {
            let _ = write!(md, " --- |");
        }
        let _ = writeln!(md);
        type Pick = fn(&Micro) -> &Vec<f64>;
        let loops: [(&str, Pick); 2] = [("fork+exec", |m| &m.fork), ("dd bs=1", |m| &m.dd)];
        for (name, pick) in loops {
            let _ = write!(md, "| {name} |");
            for (mode, result) in &self.micro {
                match result {
                    Ok(micro) => {
                        let s = Stats::of(pick(micro));
                        let _ = write!(md, " {:.0} ({:.0}–{:.0})", s.median, s.min, s.max);
                        if let (Some(host), false) = (host, *mode == "host") {
                            let _ = write!(md, " {:.1}x", s.median / Stats::of(pick(host)).median);
                        }
                        let _ = write!(md, " |");
                    }
                    Err(_) => _ = write!(md, " not measured |"),
                }
            }
            let _ = writeln!(md);
        }
        for (mode, result) in &self.micro {
            if let Err(e) = result {
                let _ = writeln!(md, "\n{mode}: not measured: {}", one_line(e));
            }
        }
    }

    fn render_streams(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n### Pipes through the launcher (MB/s, no dockerd)\n\n{} MiB piped into `run sh -c 'cat | wc -c'`, \
             and out of `run head -c N /dev/zero`; the rate is over each run's wall time less that of a \
             `run true` right before it.\n",
            STREAM_BYTES >> 20
        );
        match &self.streams {
            Ok(s) => {
                let _ = writeln!(
                    md,
                    "| stream | median | min | max |\n| --- | --- | --- | --- |\n\
                     | stdin (host pipe -> guest command) | {} |\n\
                     | stdout (guest command -> host pipe) | {} |",
                    Stats::of(&s.stdin).cells(0),
                    Stats::of(&s.stdout).cells(0)
                );
            }
            Err(e) => _ = writeln!(md, "Not measured: {}", one_line(e)),
        }
    }

    fn render_sizes(&self, md: &mut String) {
        let _ = writeln!(md, "\n### Artifact sizes (MB = 10^6 bytes)\n");
        let s = match &self.sizes {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(md, "Not measured: {}", one_line(e));
                return;
            }
        };
        let _ = writeln!(md, "| artifact | size |\n| --- | --- |");
        let _ = writeln!(
            md,
            "| OCI image, compressed (sum of {} layer blobs in `out/usmol-oci`: zstd, what `usmol push` sends) | {:.1} MB |",
            s.oci_layers,
            mb(s.oci_compressed)
        );
        match s.oci_gzip_compressed {
            Some(bytes) => {
                _ = writeln!(
                    md,
                    "| the same image with gzip layers (`out/usmol-oci-gzip`, in the docker archive; for engines before Docker 23) | {:.1} MB |",
                    mb(bytes)
                )
            }
            None => {
                _ = writeln!(
                    md,
                    "| the same image with gzip layers | `out/usmol-oci-gzip` missing |"
                )
            }
        }
        let _ = writeln!(
            md,
            "| OCI image, uncompressed layers | {:.1} MB |",
            mb(s.oci_uncompressed)
        );
        match &s.tarball {
            Some((name, bytes)) => {
                _ = writeln!(md, "| plain tarball `{name}` | {:.1} MB |", mb(*bytes))
            }
            None => _ = writeln!(md, "| plain tarball | missing from the output |"),
        }
        let _ = writeln!(md, "| kernel `lib/linux` | {:.1} MB |", mb(s.kernel));
        let _ = writeln!(
            md,
            "| root disk `lib/rootfs.ext4` (apparent / allocated) | {:.1} MB / {:.1} MB |",
            mb(s.rootfs),
            mb(s.rootfs_allocated)
        );
        let _ = writeln!(
            md,
            "| docker:dind, compressed (quoted reference figure, not measured here) | {DIND_MB} MB |"
        );
        let _ = writeln!(
            md,
            "| the original usmol image (quoted reference figure, not measured here) | {ORIGINAL_USMOL_MB} MB |"
        );
    }

    fn render_memory(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "\n### Memory at idle with dockerd running (MiB)\n\nGuest: `/proc/meminfo` 8 s after the command \
             started. Host: the processes below the launcher 3 s after the command started; VmRSS counts shared \
             pages once per process, Pss splits them.\n"
        );
        let runs = match &self.memory {
            Ok(runs) => runs,
            Err(e) => {
                let _ = writeln!(md, "Not measured: {}", one_line(e));
                return;
            }
        };
        let _ = writeln!(md, "| | median | min | max |\n| --- | --- | --- | --- |");
        type Pick = fn(&Memory) -> f64;
        let rows: [(&str, Pick); 6] = [
            ("guest used (MemTotal − MemAvailable)", |m| m.guest_used),
            ("guest MemTotal", |m| m.guest_total),
            ("host VmRSS of the kernel process", |m| m.kernel_rss),
            ("host VmRSS, sum over the UML processes", |m| m.rss_sum),
            ("host Pss, sum over the UML processes", |m| m.pss_sum),
            ("UML host processes (count)", |m| m.processes as f64),
        ];
        for (name, pick) in rows {
            let values: Vec<f64> = runs.iter().map(pick).collect();
            let _ = writeln!(md, "| {name} | {} |", Stats::of(&values).cells(0));
        }
    }

    fn render_build(&self, md: &mut String) {
        let _ = writeln!(md, "\n### Build\n");
        match &self.build {
            Some(Ok(values)) => {
                let _ = writeln!(
                    md,
                    "| measurement | median | min | max |\n| --- | --- | --- | --- |\n\
                     | warm no-change `cargo xtask build-image` | {} |",
                    Stats::of(values).cells(1)
                );
            }
            Some(Err(e)) => _ = writeln!(md, "Warm no-change build: not measured: {}", one_line(e)),
            None => {
                _ = writeln!(
                    md,
                    "Warm no-change build: not measured (it rewrites `out/`; pass `--bench-build`)."
                )
            }
        }
        match &self.cold_build {
            Some(Ok(c)) => {
                let _ = writeln!(
                    md,
                    "\nCold `cargo xtask build-image`, once, with an empty download, toolchain and \
                     kernel cache (every package fetched through the mirror, the kernel and passt \
                     compiled; the Rust tools already built): {:.0} s ({:.1} min). Its OCI image \
                     is {} the one in `out/`.",
                    c.seconds,
                    c.seconds / 60.0,
                    if c.same_image {
                        "byte-identical to"
                    } else {
                        "**not** identical to"
                    }
                );
            }
            Some(Err(e)) => _ = writeln!(md, "\nCold build: not measured: {}", one_line(e)),
            None => {
                _ = writeln!(
                    md,
                    "\nCold build: not measured (it fetches every package again and compiles the \
                     kernel, about 15 minutes; pass `--bench-cold-build`)."
                )
            }
        }
    }
}

/// An error chain on one table line.
fn one_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let first = text.lines().next().unwrap_or_default().replace('|', "\\|");
    if text.lines().count() > 1 {
        format!("{first} (more on stderr)")
    } else {
        first
    }
}

/// Replaces the generated part of `path` (between [`BEGIN`] and [`END`]),
/// or creates the file with a History section below it.
fn write_generated(path: &Path, generated: &str) -> Result<()> {
    let block = format!("{BEGIN}\n{generated}{END}");
    let text = match std::fs::read_to_string(path) {
        Ok(old) => {
            let (Some(begin), Some(end)) = (old.find(BEGIN), old.find(END)) else {
                bail!(
                    "{} has no `{BEGIN}` ... `{END}` markers: add them where the generated figures belong",
                    path.display()
                );
            };
            ensure!(
                begin < end,
                "{}: `{END}` comes before `{BEGIN}`",
                path.display()
            );
            format!("{}{block}{}", &old[..begin], &old[end + END.len()..])
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!(
            "# Benchmarks\n\n`cargo xtask bench` measures the artifacts in `out/` and rewrites the part \
             between the markers below; the History section is kept.\n\n{block}\n\n## History\n"
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_launcher_timings_line() {
        let stderr = "something\nusmol: timings: launcher setup 0.010s; guest uptime at init 0.300s, \
                      mounts 0.500s, dockerd ready 3.000s, command start 3.100s, command done 4.000s, \
                      shutdown 4.500s; wall total 5.000s\n";
        let p = Phases::parse(stderr, 5.5).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(p.setup, 0.01) && close(p.kernel, 0.3) && close(p.mounts, 0.2));
        assert!(close(p.dockerd.unwrap(), 2.5) && close(p.command, 0.9) && close(p.shutdown, 0.5));
        assert!(close(p.exit, 0.49) && close(p.outside, 0.5), "{p:?}");
    }

    #[test]
    fn timings_without_dockerd() {
        let stderr = "usmol: timings: launcher setup 0.010s; guest uptime at init 0.300s, mounts 0.500s, \
                      dockerd ready -, command start 0.510s, command done 0.600s, shutdown 0.700s; wall total 1.000s";
        let p = Phases::parse(stderr, 1.0).unwrap();
        assert_eq!(p.dockerd, None);
        assert!(Phases::parse("no timings here", 1.0).is_none());
    }

    #[test]
    fn median_min_max() {
        assert_eq!(
            Stats::of(&[3.0, 1.0, 2.0]),
            Stats {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(Stats::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    #[test]
    fn tagged_lines() {
        assert_eq!(
            tagged("fork 12\ndd 5\nfork 14\nforks 1\n", "fork"),
            vec![12.0, 14.0]
        );
    }

    #[test]
    fn generated_part_is_replaced_and_history_kept() {
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let path = dir.path().join("BENCHMARKS.md");
        write_generated(&path, "first\n").unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("- a hand-written note\n");
        std::fs::write(&path, &text).unwrap();
        write_generated(&path, "second\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("second\n") && !text.contains("first\n"),
            "{text}"
        );
        assert!(
            text.ends_with("## History\n- a hand-written note\n"),
            "{text}"
        );
    }

    #[test]
    fn hello_archive_lists_config_layer_and_manifest() {
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let bin = dir.path().join("hello");
        std::fs::write(&bin, b"\x7fELF").unwrap();
        let out = dir.path().join("hello.tar");
        write_docker_archive(&bin, "hello-world:latest", &out).unwrap();
        let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let mut manifest = String::new();
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            if name == "manifest.json" {
                entry.read_to_string(&mut manifest).unwrap();
            }
            names.push(name);
        }
        let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], "hello-world:latest");
        assert!(
            names.contains(&manifest[0]["Config"].as_str().unwrap().to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&manifest[0]["Layers"][0].as_str().unwrap().to_owned()),
            "{names:?}"
        );
    }
}
