//! Network figures: bulk TCP throughput and HTTP request rate from a
//! client to a server on the outer loopback, once on the host and once in
//! the guest through passt (the guest reaches the outer loopback at its
//! gateway address). Client and server are the same on both sides: the
//! test tool's `fetch` (C, static) and a server in this process.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use xshell::cmd;

use super::{Bench, Stats, TIMEOUT, progress, timed};

/// Bytes of one bulk response.
const BULK_BYTES: usize = 256 << 20;
const BULK_REQUESTS: u32 = 2;
const SMALL_REQUESTS: u32 = 500;
pub const GOAL_BULK_MB_S: f64 = 500.0;

/// Throughput (MB/s) and request rate (requests/s) per run.
pub struct NetSide {
    pub bulk_mb_s: Vec<f64>,
    pub requests_per_s: Vec<f64>,
}

pub struct Net {
    pub host: NetSide,
    pub guest: NetSide,
}

/// Serves `/bulk` (zeros) and anything else as a 3-byte body on
/// 127.0.0.1, for the life of the process.
fn serve() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut req = [0u8; 2048];
                let n = conn.read(&mut req).unwrap_or(0);
                let bulk = req[..n].starts_with(b"GET /bulk ");
                let len = if bulk { BULK_BYTES } else { 3 };
                let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {len}\r\n\r\n");
                if conn.write_all(head.as_bytes()).is_err() {
                    return;
                }
                if bulk {
                    let chunk = vec![0u8; 1 << 20];
                    for _ in 0..BULK_BYTES / chunk.len() {
                        if conn.write_all(&chunk).is_err() {
                            return;
                        }
                    }
                } else {
                    let _ = conn.write_all(b"ok\n");
                }
            });
        }
    });
    Ok(port)
}

/// Parses the tool's `requests N bytes B seconds S` lines into
/// (bytes, seconds) pairs.
pub fn fetch_lines(text: &str) -> Vec<(f64, f64, f64)> {
    text.lines()
        .filter_map(|line| {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["requests", n, "bytes", b, "seconds", s] => {
                    Some((n.parse().ok()?, b.parse().ok()?, s.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect()
}

/// Pairs of (bulk, small) fetch lines into figures.
fn side(lines: &[(f64, f64, f64)]) -> Result<NetSide> {
    if lines.is_empty() || !lines.len().is_multiple_of(2) {
        bail!("expected pairs of fetch results, got {} lines", lines.len());
    }
    let mut s = NetSide {
        bulk_mb_s: Vec::new(),
        requests_per_s: Vec::new(),
    };
    for pair in lines.chunks(2) {
        let (_, bytes, secs) = pair[0];
        let (n, _, small_secs) = pair[1];
        s.bulk_mb_s.push(bytes / 1e6 / secs);
        s.requests_per_s.push(n / small_secs);
    }
    Ok(s)
}

impl Bench<'_> {
    fn tool_binary(&self) -> Result<PathBuf> {
        let source = self.root.join("tests/fixtures/tool.c");
        let bin = self.scratch.join("tool");
        let sh = self.sh;
        cmd!(sh, "cc -static -O2 -o {bin} {source}")
            .quiet()
            .ignore_stderr()
            .run()
            .with_context(|| format!("compiling {} with cc", source.display()))?;
        Ok(bin)
    }

    pub(super) fn network(&self) -> Result<Net> {
        let tool = self.tool_binary()?;
        let port = serve()?;
        let fetches = format!(
            "fetch $server {port} /bulk {BULK_REQUESTS}; fetch $server {port} /small {SMALL_REQUESTS}"
        );
        progress("network: host loopback");
        let mut host_text = String::new();
        for _ in 0..self.runs {
            for (path, count) in [("/bulk", BULK_REQUESTS), ("/small", SMALL_REQUESTS)] {
                let out = Command::new(&tool)
                    .args([
                        "fetch",
                        "127.0.0.1",
                        &port.to_string(),
                        path,
                        &count.to_string(),
                    ])
                    .output()
                    .with_context(|| format!("running {}", tool.display()))?;
                if !out.status.success() {
                    bail!(
                        "{} fetch {path} failed: {}",
                        tool.display(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                host_text.push_str(&String::from_utf8_lossy(&out.stdout));
            }
        }
        progress("network: guest through passt");
        // The tool arrives on stdin; one boot runs every repetition.
        let script = format!(
            "set -e; cat > /tmp/tool; chmod +x /tmp/tool; \
             server=$(ip route | awk '/^default/ {{print $3}}'); \
             for i in $(seq {runs}); do {fetches}; done",
            runs = self.runs,
            fetches = fetches.replace("fetch ", "/tmp/tool fetch ")
        );
        let cmd = self.launcher(&[("USMOL_DOCKER", "0")], &["sh", "-c", &script]);
        let done = timed(cmd, Some(tool.as_path()), TIMEOUT)?;
        done.expect_ok("network fetches in the guest")?;
        Ok(Net {
            host: side(&fetch_lines(&host_text)).context("host fetches")?,
            guest: side(&fetch_lines(&done.stdout))
                .with_context(|| format!("guest fetches:\n{}", done.report()))?,
        })
    }
}

impl Net {
    pub fn render(&self, md: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            md,
            "\n### Network (outer loopback, through passt)\n\n\
             A client fetches from a server on the outer 127.0.0.1: {BULK_REQUESTS} x {} MiB for \
             bulk throughput, {SMALL_REQUESTS} sequential small HTTP/1.0 requests (a new \
             connection each) for the request rate. Guest: the same client inside UML, \
             connecting to its gateway address, which passt maps to the outer loopback.\n\n\
             | figure | host median | min | max | guest median | min | max | guest / host |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- |",
            BULK_BYTES >> 20
        );
        for (name, h, g) in [
            (
                "bulk TCP, MB/s",
                &self.host.bulk_mb_s,
                &self.guest.bulk_mb_s,
            ),
            (
                "HTTP requests/s",
                &self.host.requests_per_s,
                &self.guest.requests_per_s,
            ),
        ] {
            let (hs, gs) = (Stats::of(h), Stats::of(g));
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {:.2} |",
                hs.cells(0),
                gs.cells(0),
                gs.median / hs.median
            );
        }
    }

    pub fn bulk_goal(&self) -> (String, bool) {
        let m = Stats::of(&self.guest.bulk_mb_s).median;
        (format!("{m:.0} MB/s"), m >= GOAL_BULK_MB_S)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_lines_pair_into_figures() {
        let text =
            "noise\nrequests 2 bytes 536870912 seconds 0.5\nrequests 500 bytes 1500 seconds 0.25\n";
        let s = side(&fetch_lines(text)).unwrap();
        assert_eq!(s.bulk_mb_s, [536870912.0 / 1e6 / 0.5]);
        assert_eq!(s.requests_per_s, [2000.0]);
        assert!(side(&fetch_lines("requests 2 bytes 1 seconds 1\n")).is_err());
    }
}
