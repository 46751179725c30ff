//! Finding our memory cgroup's directory: which cgroup `/proc/self/cgroup` says we are in, and
//! through which mount in `/proc/self/mountinfo` that cgroup is visible.
//!
//! Both files show cgroup paths relative to our cgroup namespace's root, so the directory is the
//! mount point plus our path *below the mount's root*:
//!
//! | situation | `/proc/self/cgroup` | mount root | directory |
//! |---|---|---|---|
//! | private cgroup namespace (Kubernetes v2, Docker default) | `0::/` | `/` | mount point |
//! | host namespace, whole tree mounted | `0::/kubepods.slice/…/cri-containerd-….scope` | `/` | mount point + path |
//! | host namespace, own cgroup bind-mounted (Docker v1) | `4:memory:/docker/ID` | `/docker/ID` | mount point |
//! | mounted at an ancestor | `/a/b/c` | `/a` | mount point + `b/c` |
//!
//! A cgroup outside every mount's root is [`CgroupError::NotVisible`]. When several mounts show
//! it, the one with the shortest root wins: it shows the most ancestors, whose limits count too.

use super::parse::{decode_octal_escapes, fields, for_each_line, PATH_BUF};
use super::{Cgroup, CgroupError, CgroupPath, FileId, Version, PATH_CAPACITY};
use crate::fs::{under, FileSystem};
use core::ops::ControlFlow;

/// The cgroup that `/proc/self/cgroup` puts us in for memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// v1 if a v1 hierarchy holds the memory controller (also on "hybrid" systems, where the
    /// v2 line exists but the v2 tree has no memory controller), else v2.
    pub version: Version,
    /// The cgroup's path relative to our cgroup namespace's root.
    pub path: CgroupPath,
}

/// Finds our memory cgroup: [`read_membership`], then [`find_mount`], checked to exist.
pub fn own_cgroup<F: FileSystem>(fs: &F) -> Result<Cgroup, CgroupError> {
    let membership = read_membership(fs)?;
    let mount = find_mount(fs, &membership)?;
    let below = under(membership.path.as_bytes(), mount.root.as_bytes())
        .ok_or(CgroupError::NotVisible(membership.version))?;
    Cgroup::at(fs, membership.version, mount.mount_point.as_bytes(), below)
}

/// Reads `/proc/self/cgroup`: `ID:controller,…:/path` lines, `0::/path` for v2.
pub fn read_membership<F: FileSystem>(fs: &F) -> Result<Membership, CgroupError> {
    let file = FileId::ProcSelfCgroup;
    let mut buf = [0u8; PATH_BUF];
    let mut v1 = None;
    let mut v2 = None;
    let mut failure = None;
    for_each_line(fs, b"/proc/self/cgroup", file, &mut buf, |number, line| {
        if line.is_empty() {
            return ControlFlow::Continue(());
        }
        let mut parts = line.splitn(3, |&b| b == b':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            failure = Some(CgroupError::Garbage { file, line: number });
            return ControlFlow::Break(());
        };
        let slot = if id == b"0" && controllers.is_empty() {
            &mut v2
        } else if controllers.split(|&b| b == b',').any(|c| c == b"memory") {
            &mut v1
        } else {
            return ControlFlow::Continue(());
        };
        if !path.starts_with(b"/") {
            failure = Some(CgroupError::Garbage { file, line: number });
            return ControlFlow::Break(());
        }
        match CgroupPath::new(path) {
            Ok(path) => *slot = Some(path),
            Err(_) => {
                failure = Some(CgroupError::PathTooLong);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(error) = failure {
        return Err(error);
    }
    match (v1, v2) {
        (Some(path), _) => Ok(Membership {
            version: Version::V1,
            path,
        }),
        (None, Some(path)) => Ok(Membership {
            version: Version::V2,
            path,
        }),
        (None, None) => Err(CgroupError::NoMemoryCgroup),
    }
}

/// A cgroup mount from `/proc/self/mountinfo`, escapes decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The cgroup that appears at the mount point, relative to our cgroup namespace's root.
    pub root: CgroupPath,
    /// Where it is mounted.
    pub mount_point: CgroupPath,
}

/// Reads `/proc/self/mountinfo` for the mount of `membership`'s hierarchy (`cgroup2`, or
/// `cgroup` with `memory` among its super options) that shows its cgroup.
pub fn find_mount<F: FileSystem>(fs: &F, membership: &Membership) -> Result<Mount, CgroupError> {
    let file = FileId::ProcSelfMountinfo;
    let mut buf = [0u8; PATH_BUF];
    let mut best: Option<Mount> = None;
    let mut seen_hierarchy = false;
    let mut failure = None;
    for_each_line(
        fs,
        b"/proc/self/mountinfo",
        file,
        &mut buf,
        |number, line| {
            if line.is_empty() {
                return ControlFlow::Continue(());
            }
            let mount = match parse_mount_line(line, membership.version) {
                Ok(Some(mount)) => mount,
                Ok(None) => return ControlFlow::Continue(()),
                Err(error) => {
                    failure = Some(match error {
                        LineError::Garbage => CgroupError::Garbage { file, line: number },
                        LineError::TooLong => CgroupError::PathTooLong,
                    });
                    return ControlFlow::Break(());
                }
            };
            seen_hierarchy = true;
            let visible = under(membership.path.as_bytes(), mount.root.as_bytes()).is_some();
            let shorter = best
                .as_ref()
                .is_none_or(|b| mount.root.as_bytes().len() < b.root.as_bytes().len());
            if visible && shorter {
                best = Some(mount);
            }
            ControlFlow::Continue(())
        },
    )?;
    if let Some(error) = failure {
        return Err(error);
    }
    match best {
        Some(mount) => Ok(mount),
        None if seen_hierarchy => Err(CgroupError::NotVisible(membership.version)),
        None => Err(CgroupError::NotMounted(membership.version)),
    }
}

enum LineError {
    Garbage,
    TooLong,
}

/// One mountinfo line: `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE
/// SUPER_OPTIONS`. `Ok(None)` if it is not a mount of `version`'s memory hierarchy.
fn parse_mount_line(line: &[u8], version: Version) -> Result<Option<Mount>, LineError> {
    let mut parts = fields(line);
    let root = parts.nth(3).ok_or(LineError::Garbage)?;
    let mount_point = parts.next().ok_or(LineError::Garbage)?;
    // Skip the mount options and the optional fields up to the `-` separator.
    parts.find(|&f| f == b"-").ok_or(LineError::Garbage)?;
    let fs_type = parts.next().ok_or(LineError::Garbage)?;
    let _source = parts.next().ok_or(LineError::Garbage)?;
    let super_options = parts.next().unwrap_or(b"");
    let wanted = match version {
        Version::V2 => fs_type == b"cgroup2",
        Version::V1 => {
            fs_type == b"cgroup" && super_options.split(|&b| b == b',').any(|o| o == b"memory")
        }
    };
    if !wanted {
        return Ok(None);
    }
    Ok(Some(Mount {
        root: decode_path(root)?,
        mount_point: decode_path(mount_point)?,
    }))
}

fn decode_path(escaped: &[u8]) -> Result<CgroupPath, LineError> {
    let mut decoded = [0u8; PATH_CAPACITY];
    let len =
        decode_octal_escapes(escaped, &mut decoded).ok_or(if escaped.len() > PATH_CAPACITY {
            LineError::TooLong
        } else {
            LineError::Garbage
        })?;
    let decoded = decoded.get(..len).ok_or(LineError::TooLong)?;
    if !decoded.starts_with(b"/") {
        return Err(LineError::Garbage);
    }
    CgroupPath::new(decoded).map_err(|_| LineError::TooLong)
}
