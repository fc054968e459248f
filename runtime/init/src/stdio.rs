//! The command's standard streams over UML console lines.
//!
//! A UML console line hangs up its tty (dropping unread input) as soon as
//! the host fd reports end-of-file, so a piped stdin cannot be passed to the
//! guest as-is. Outside tty mode the launcher therefore copies its stdin
//! into a pipe that never ends early and announces the total length with a
//! `eof <bytes>` control line; init copies exactly that many bytes from the
//! raw tty into the command's stdin pipe and then closes it. stdout and
//! stderr are pipes that init copies to the raw ttys, so the command does
//! not see a terminal where the host has none.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use usmol_channel::Control;

/// Opens a console tty without making it init's controlling terminal.
pub fn open_tty(path: &str) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
}

/// Puts a tty in raw mode: bytes pass unchanged both ways, no echo.
pub fn make_raw(tty: &File) -> io::Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(tty.as_raw_fd(), &mut t) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::cfmakeraw(&mut t);
        if libc::tcsetattr(tty.as_raw_fd(), libc::TCSANOW, &t) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A pipe as (read end, write end), both close-on-exec.
pub fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh fds we now own.
    unsafe {
        Ok((
            File::from(OwnedFd::from_raw_fd(fds[0])),
            File::from(OwnedFd::from_raw_fd(fds[1])),
        ))
    }
}

/// Bookkeeping shared by the stdin copier and the control reader.
#[derive(Debug, Default)]
pub struct StdinState {
    /// Bytes copied to the command so far.
    pub copied: u64,
    /// Total announced by `eof <bytes>`.
    pub eof_at: Option<u64>,
    /// The command's stdin pipe; dropped (closed) once `copied == eof_at`.
    pub pipe: Option<File>,
}

impl StdinState {
    /// Closes the pipe when everything announced has been copied.
    pub fn close_if_done(&mut self) {
        if self.eof_at.is_some_and(|n| self.copied >= n) {
            self.pipe = None;
        }
    }
}

/// Copies the stdin tty into the command's stdin pipe until `eof`.
pub fn spawn_stdin_copier(mut tty: File, state: Arc<Mutex<StdinState>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match tty.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            // Write outside the lock: the pipe may be full for a while, and
            // the control reader must still be able to record `eof`.
            let writer = state
                .lock()
                .unwrap()
                .pipe
                .as_ref()
                .and_then(|p| p.try_clone().ok());
            if let Some(mut w) = writer {
                // EPIPE: the command closed its stdin; keep draining.
                let _ = w.write_all(&buf[..n]);
            }
            let mut st = state.lock().unwrap();
            st.copied += n as u64;
            st.close_if_done();
        }
    })
}

/// Copies a pipe to a tty until every writer of the pipe has closed it.
pub fn spawn_output_copier(mut from: File, mut to: File) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        // Host side gone: keep draining so the command
                        // does not block on a full pipe.
                        continue;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    })
}

/// What the control reader does with each line.
pub fn handle_control(line: &str, state: &Mutex<StdinState>, signal: &mut dyn FnMut(i32)) {
    match Control::parse(line) {
        Ok(Control::StdinEof(n)) => {
            let mut st = state.lock().unwrap();
            st.eof_at = Some(n);
            st.close_if_done();
        }
        Ok(Control::Signal(sig)) => signal(sig),
        Ok(Control::StdinReady) => {}
        Err(e) => crate::log(&format!("ignoring {e}")),
    }
}

/// Reads control lines until the launcher goes away; then the launcher's
/// death counts as SIGHUP for the command.
pub fn spawn_control_reader(
    tty: File,
    state: Arc<Mutex<StdinState>>,
    mut signal: impl FnMut(i32) + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = io::BufReader::new(tty);
        let mut line = String::new();
        loop {
            line.clear();
            match io::BufRead::read_line(&mut reader, &mut line) {
                Ok(0) | Err(_) => {
                    crate::log("control line closed: the launcher is gone; hanging up the command");
                    signal(libc::SIGHUP);
                    return;
                }
                Ok(_) => handle_control(&line, &state, &mut signal),
            }
        }
    })
}

/// Waits until the tty's output queue has reached the host.
pub fn drain(tty: &File) {
    // SAFETY: tcdrain on a valid fd.
    unsafe { libc::tcdrain(tty.as_raw_fd()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with_pipe() -> (Arc<Mutex<StdinState>>, File) {
        let (r, w) = pipe().unwrap();
        (
            Arc::new(Mutex::new(StdinState {
                pipe: Some(w),
                ..Default::default()
            })),
            r,
        )
    }

    #[test]
    fn eof_before_data_waits_for_the_announced_bytes() {
        let (state, _r) = state_with_pipe();
        handle_control("eof 5\n", &state, &mut |_| panic!("no signal"));
        assert!(state.lock().unwrap().pipe.is_some());
        {
            let mut st = state.lock().unwrap();
            st.copied = 5;
            st.close_if_done();
        }
        assert!(state.lock().unwrap().pipe.is_none());
    }

    #[test]
    fn eof_after_all_data_closes_at_once() {
        let (state, mut r) = state_with_pipe();
        state.lock().unwrap().copied = 3;
        handle_control("eof 3", &state, &mut |_| {});
        assert!(state.lock().unwrap().pipe.is_none());
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "", "reader sees end-of-file");
    }

    #[test]
    fn copier_passes_bytes_and_closes_after_eof() {
        let (state, mut r) = state_with_pipe();
        let (tty_r, mut tty_w) = pipe().unwrap();
        let t = spawn_stdin_copier(tty_r, state.clone());
        tty_w.write_all(b"hi\n\x00\xff").unwrap();
        handle_control("eof 5", &state, &mut |_| {});
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hi\n\x00\xff");
        drop(tty_w);
        t.join().unwrap();
    }

    #[test]
    fn signals_are_forwarded() {
        let (state, _r) = state_with_pipe();
        let mut got = vec![];
        handle_control("signal 15\r\n", &state, &mut |s| got.push(s));
        handle_control("bogus", &state, &mut |s| got.push(s));
        assert_eq!(got, vec![15]);
    }

    #[test]
    fn output_copier_stops_at_eof() {
        let (from_r, mut from_w) = pipe().unwrap();
        let (to_r, to_w) = pipe().unwrap();
        let t = spawn_output_copier(from_r, to_w);
        from_w.write_all(b"out").unwrap();
        drop(from_w);
        t.join().unwrap();
        let mut s = String::new();
        let mut to_r = to_r;
        to_r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "out");
    }
}
