//! The seam between init's logic and the kernel: every mount and file
//! operation of the boot plan goes through [`Sys`], so the plan can be
//! unit-tested without root with [`Recorder`].

use std::ffi::CString;
use std::io;
use std::path::Path;

/// The operations the boot plan performs.
pub trait Sys {
    fn mkdir_all(&mut self, path: &str, mode: u32) -> io::Result<()>;
    fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: &str,
        flags: u64,
        data: &str,
    ) -> io::Result<()>;
    fn symlink(&mut self, target: &str, link: &str) -> io::Result<()>;
    fn write_file(&mut self, path: &str, content: &str) -> io::Result<()>;
    fn read_file(&mut self, path: &str) -> io::Result<String>;
}

/// The real kernel.
pub struct Linux;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} contains NUL")))
}

impl Sys for Linux {
    fn mkdir_all(&mut self, path: &str, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
    }

    fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: &str,
        flags: u64,
        data: &str,
    ) -> io::Result<()> {
        let (s, t, f, d) = (cstr(source)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
        let data_ptr = if data.is_empty() {
            std::ptr::null()
        } else {
            d.as_ptr() as *const libc::c_void
        };
        let fs_ptr = if fstype.is_empty() {
            std::ptr::null()
        } else {
            f.as_ptr()
        };
        // SAFETY: all pointers are valid NUL-terminated strings or null.
        let rc = unsafe {
            libc::mount(
                s.as_ptr(),
                t.as_ptr(),
                fs_ptr,
                flags as libc::c_ulong,
                data_ptr,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn symlink(&mut self, target: &str, link: &str) -> io::Result<()> {
        match std::os::unix::fs::symlink(target, link) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r,
        }
    }

    fn write_file(&mut self, path: &str, content: &str) -> io::Result<()> {
        // Kernel pseudo-files want one write() of the whole value.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        f.write_all(content.as_bytes())
    }

    fn read_file(&mut self, path: &str) -> io::Result<String> {
        std::fs::read_to_string(Path::new(path))
    }
}

/// A fake kernel for tests: records every call, answers reads from a table,
/// fails the operations listed in `fail`.
#[cfg(test)]
#[derive(Default)]
pub struct Recorder {
    pub calls: Vec<String>,
    pub files: std::collections::HashMap<String, String>,
    pub fail: Vec<String>,
}

#[cfg(test)]
impl Recorder {
    fn record(&mut self, call: String) -> io::Result<()> {
        let failing = self.fail.iter().any(|f| call.contains(f.as_str()));
        self.calls.push(call);
        if failing {
            Err(io::Error::from_raw_os_error(libc::EBUSY))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
impl Sys for Recorder {
    fn mkdir_all(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.record(format!("mkdir {path} {mode:o}"))
    }
    fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: &str,
        flags: u64,
        data: &str,
    ) -> io::Result<()> {
        self.record(format!(
            "mount {source} {target} {fstype} {flags:#x} {data}"
        ))
    }
    fn symlink(&mut self, target: &str, link: &str) -> io::Result<()> {
        self.record(format!("symlink {link} -> {target}"))
    }
    fn write_file(&mut self, path: &str, content: &str) -> io::Result<()> {
        self.files.insert(path.to_string(), content.to_string());
        self.record(format!("write {path} {content}"))
    }
    fn read_file(&mut self, path: &str) -> io::Result<String> {
        self.calls.push(format!("read {path}"));
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }
}
