//! The docker data disk: formatted on first boot, checked on later boots,
//! mounted at /var/lib/docker.

use crate::InitError;
use std::io::Read;
use std::process::Command;

/// Byte offset of the ext2/3/4 magic number (superblock at 1024, field 0x38).
const EXT_MAGIC_OFFSET: usize = 1024 + 0x38;
const EXT_MAGIC: [u8; 2] = [0x53, 0xEF];

/// Whether the first bytes of a device hold an ext2/3/4 superblock.
pub fn has_ext_superblock(head: &[u8]) -> bool {
    head.get(EXT_MAGIC_OFFSET..EXT_MAGIC_OFFSET + 2) == Some(&EXT_MAGIC[..])
}

/// What `fsck -p` exit codes mean for us (see fsck(8)).
pub fn fsck_ok(code: i32) -> bool {
    // 0 clean, 1 errors corrected, 2 corrected and a reboot is advised
    // (nothing is mounted yet, so it does not apply).
    (0..=2).contains(&code)
}

fn run(what: &str, cmd: &mut Command) -> Result<i32, InitError> {
    let out = cmd.output().map_err(|e| InitError::Disk {
        what: format!("start {what}"),
        detail: e.to_string(),
    })?;
    let code = out.status.code().unwrap_or(128);
    if code != 0 {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        crate::log(&format!("{what} exited {code}: {}", text.trim()));
    }
    Ok(code)
}

/// Formats `device` if it has no filesystem, else repairs it, then mounts
/// it at `target`.
pub fn prepare(device: &str, target: &str) -> Result<(), InitError> {
    let mut head = vec![0u8; 2048];
    std::fs::File::open(device)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| InitError::Disk {
            what: format!("read the start of {device}"),
            detail: e.to_string(),
        })?;
    if has_ext_superblock(&head) {
        let code = run(
            "fsck.ext4",
            Command::new("/sbin/fsck.ext4").args(["-p", device]),
        )?;
        if !fsck_ok(code) {
            return Err(InitError::Disk {
                what: format!("check {device}"),
                detail: format!(
                    "fsck.ext4 -p exited {code}; delete the docker disk file on the host to start afresh"
                ),
            });
        }
    } else {
        // Lazy init keeps first boot fast on a large sparse file.
        let code = run(
            "mkfs.ext4",
            Command::new("/sbin/mkfs.ext4").args([
                "-q",
                "-F",
                "-L",
                "usmol-docker",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                // A small journal keeps the sparse disk file small.
                "-J",
                "size=64",
                device,
            ]),
        )?;
        if code != 0 {
            return Err(InitError::Disk {
                what: format!("format {device}"),
                detail: format!("mkfs.ext4 exited {code}"),
            });
        }
    }
    std::fs::create_dir_all(target).map_err(|e| InitError::Disk {
        what: format!("create {target}"),
        detail: e.to_string(),
    })?;
    let mut sys = crate::sys::Linux;
    crate::sys::Sys::mount(&mut sys, device, target, "ext4", 0, "").map_err(|e| InitError::Disk {
        what: format!("mount {device} on {target}"),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_ext_magic_only_at_its_offset() {
        let mut head = vec![0u8; 2048];
        assert!(!has_ext_superblock(&head));
        head[1080] = 0x53;
        head[1081] = 0xEF;
        assert!(has_ext_superblock(&head));
        assert!(
            !has_ext_superblock(&head[..1081]),
            "short read must not count"
        );
        let mut shifted = vec![0u8; 2048];
        shifted[1081] = 0x53;
        shifted[1082] = 0xEF;
        assert!(!has_ext_superblock(&shifted));
    }

    #[test]
    fn fsck_codes() {
        assert!(fsck_ok(0) && fsck_ok(1) && fsck_ok(2));
        assert!(!fsck_ok(4) && !fsck_ok(8));
    }
}
