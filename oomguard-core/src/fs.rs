//! File access for the readers of kernel files (`/proc`, cgroupfs), without allocation.
//!
//! The readers never name the real `/`: they go through [`FileSystem`], whose paths are absolute
//! paths *within* a root that the implementation chooses. The preload library implements it with
//! raw `open`/`read` into stack buffers (it runs inside malloc); `RootedFs` (feature `std`) does
//! it with `std::fs` for the CLI and for tests on fixture trees. Paths are built in
//! [`FixedPath`], a fixed-capacity stack buffer, never a heap string.

use core::fmt;

/// Why a file could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The file (or a directory on its path) does not exist.
    Missing,
    /// The file exists but opening or reading it failed; `errno` is the OS error number (0 when
    /// the implementation has none).
    Unreadable {
        /// The OS error number, e.g. `EACCES` (13) or `EISDIR` (21).
        errno: i32,
    },
}

/// An open file, read from its start to its end in successive calls.
///
/// One open file gives one consistent view of a kernel file: `seq_file`s such as `memory.stat`
/// or `mountinfo` must not be re-opened between chunks, or a line could be torn between two
/// different versions of the text.
pub trait ReadFile {
    /// Reads the next bytes into `buf` and returns how many; `Ok(0)` means end of file (or an
    /// empty `buf`). Implementations retry `EINTR` themselves.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError>;
}

/// Read access to a tree of files below some root.
pub trait FileSystem {
    /// What [`FileSystem::open`] returns; it closes the file when dropped.
    type File: ReadFile;

    /// Opens `path`, an absolute path (starting with `/`) within this file system's root.
    fn open(&self, path: &[u8]) -> Result<Self::File, ReadError>;

    /// Reads the whole file at `path` into `buf` and returns its length; a file that does not
    /// fit (or exactly fills `buf`, which cannot be told apart) is
    /// [`ReadError::Unreadable`] with `errno` `EFBIG` (27): never a silently truncated value.
    fn read(&self, path: &[u8], buf: &mut [u8]) -> Result<usize, ReadError> {
        const EFBIG: i32 = 27;
        let mut file = self.open(path)?;
        let mut filled = 0;
        loop {
            let Some(spare) = buf.get_mut(filled..) else {
                return Err(ReadError::Unreadable { errno: EFBIG });
            };
            if spare.is_empty() {
                return Err(ReadError::Unreadable { errno: EFBIG });
            }
            match file.read(spare)? {
                0 => return Ok(filled),
                n => filled = filled.saturating_add(n),
            }
        }
    }
}

/// The path did not fit the capacity of a [`FixedPath`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathTooLong;

/// An absolute path of at most `N` bytes, built on the stack.
///
/// Always starts with `/`, never ends with `/` except for the root itself, and never contains
/// an empty component; components are raw bytes (Linux paths need not be UTF-8).
#[derive(Clone)]
pub struct FixedPath<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> FixedPath<N> {
    /// The root, `/`. `N` must be at least 1; with `N == 0` every operation fails instead.
    pub fn root() -> Self {
        let mut path = FixedPath {
            bytes: [0; N],
            len: 0,
        };
        if let Some(first) = path.bytes.first_mut() {
            *first = b'/';
            path.len = 1;
        }
        path
    }

    /// `path` made canonical: leading `/` added, empty components (`//`, trailing `/`) dropped.
    pub fn new(path: &[u8]) -> Result<Self, PathTooLong> {
        let mut result = Self::root();
        if result.len == 0 {
            return Err(PathTooLong);
        }
        result.push(path)?;
        Ok(result)
    }

    /// The path's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }

    /// Whether this is `/`.
    pub fn is_root(&self) -> bool {
        self.as_bytes() == b"/"
    }

    /// Appends `relative`, which may hold several components (`a/b`); leading, trailing and
    /// doubled `/` are ignored. On error the path is left unchanged.
    pub fn push(&mut self, relative: &[u8]) -> Result<(), PathTooLong> {
        let saved = self.len;
        for component in relative.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            if let Err(error) = self.push_component(component) {
                self.len = saved;
                return Err(error);
            }
        }
        Ok(())
    }

    /// Appends one component (which must not contain `/`) after a separator.
    fn push_component(&mut self, component: &[u8]) -> Result<(), PathTooLong> {
        if self.len == 0 {
            return Err(PathTooLong);
        }
        let separator = usize::from(!self.is_root());
        let end = self
            .len
            .checked_add(separator)
            .and_then(|n| n.checked_add(component.len()))
            .filter(|&end| end <= N)
            .ok_or(PathTooLong)?;
        let start = end.saturating_sub(component.len());
        if separator == 1 {
            if let Some(slot) = self.bytes.get_mut(self.len) {
                *slot = b'/';
            }
        }
        self.bytes
            .get_mut(start..end)
            .ok_or(PathTooLong)?
            .copy_from_slice(component);
        self.len = end;
        Ok(())
    }

    /// Removes the last component; `false` (and no change) at the root.
    pub fn pop(&mut self) -> bool {
        if self.len <= 1 {
            return false;
        }
        let slash = self
            .as_bytes()
            .iter()
            .rposition(|&b| b == b'/')
            .unwrap_or(0);
        self.len = slash.max(1);
        true
    }

    /// This path with `relative` appended, or `None` if it does not fit.
    pub fn join(&self, relative: &[u8]) -> Option<Self> {
        let mut joined = self.clone();
        joined.push(relative).ok()?;
        Some(joined)
    }

    /// Whether `self` is `base` or lies below it (compared by whole components).
    pub fn starts_with(&self, base: &[u8]) -> bool {
        under(self.as_bytes(), base).is_some()
    }
}

/// The part of `path` below `base` (`b""` when they are equal), comparing whole components;
/// `None` if `path` is not `base` or below it. Both are absolute, canonical paths.
pub fn under<'a>(path: &'a [u8], base: &[u8]) -> Option<&'a [u8]> {
    if base == b"/" {
        return path.get(1..);
    }
    let rest = path.strip_prefix(base)?;
    match rest.first() {
        None => Some(rest),
        Some(b'/') => rest.get(1..),
        Some(_) => None,
    }
}

impl<const N: usize> PartialEq for FixedPath<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl<const N: usize> Eq for FixedPath<N> {}

impl<const N: usize> fmt::Debug for FixedPath<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl<const N: usize> fmt::Display for FixedPath<N> {
    /// The path with invalid UTF-8 shown as `\xNN`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.as_bytes().utf8_chunks() {
            f.write_str(chunk.valid())?;
            for byte in chunk.invalid() {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        Ok(())
    }
}

#[cfg(any(test, feature = "std"))]
pub use rooted::RootedFs;

#[cfg(any(test, feature = "std"))]
mod rooted {
    use super::{FileSystem, ReadError, ReadFile};
    use std::ffi::OsStr;
    use std::io::{self, Read};
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    /// [`FileSystem`] on a directory of the real file system: `/` for the machine itself, or a
    /// fixture tree holding `proc/self/cgroup`, `proc/self/mountinfo`, `proc/meminfo` and the
    /// cgroup directories named by the fixture's mountinfo.
    #[derive(Debug, Clone)]
    pub struct RootedFs {
        /// The directory that paths are relative to.
        pub root: PathBuf,
    }

    impl RootedFs {
        /// A file system rooted at `root`.
        pub fn new(root: impl Into<PathBuf>) -> Self {
            RootedFs { root: root.into() }
        }

        /// Where `path` (absolute within the root) is on the real file system.
        pub fn real_path(&self, path: &[u8]) -> PathBuf {
            let relative = path.strip_prefix(b"/").unwrap_or(path);
            self.root.join(OsStr::from_bytes(relative))
        }
    }

    /// An open [`std::fs::File`].
    #[derive(Debug)]
    pub struct RootedFile(std::fs::File);

    fn read_error(error: &io::Error) -> ReadError {
        if error.kind() == io::ErrorKind::NotFound {
            ReadError::Missing
        } else {
            ReadError::Unreadable {
                errno: error.raw_os_error().unwrap_or(0),
            }
        }
    }

    impl ReadFile for RootedFile {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
            loop {
                match self.0.read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(read_error(&e)),
                }
            }
        }
    }

    impl FileSystem for RootedFs {
        type File = RootedFile;

        fn open(&self, path: &[u8]) -> Result<RootedFile, ReadError> {
            std::fs::File::open(self.real_path(path))
                .map(RootedFile)
                .map_err(|e| read_error(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Path = FixedPath<32>;

    #[test]
    fn paths_are_canonical() {
        assert_eq!(Path::root().as_bytes(), b"/");
        assert_eq!(
            Path::new(b"sys//fs/cgroup/").unwrap().as_bytes(),
            b"/sys/fs/cgroup"
        );
        let mut path = Path::new(b"/a/b").unwrap();
        path.push(b"/c d/").unwrap();
        assert_eq!(path.as_bytes(), b"/a/b/c d");
        assert!(path.pop() && path.pop() && path.pop());
        assert!(path.is_root());
        assert!(!path.pop());
        assert_eq!(format!("{}", Path::new(b"/x\xff").unwrap()), "/x\\xff");
    }

    #[test]
    fn too_long_paths_fail_and_leave_the_path_alone() {
        let mut path = FixedPath::<8>::new(b"/abc").unwrap();
        assert_eq!(path.push(b"de/fgh"), Err(PathTooLong));
        assert_eq!(path.as_bytes(), b"/abc");
        assert_eq!(path.push(b"efg"), Ok(()));
        assert_eq!(path.as_bytes(), b"/abc/efg");
        assert!(FixedPath::<0>::new(b"/").is_err());
        assert_eq!(FixedPath::<0>::root().as_bytes(), b"");
    }

    #[test]
    fn under_compares_whole_components() {
        assert_eq!(under(b"/a/b", b"/"), Some(&b"a/b"[..]));
        assert_eq!(under(b"/a/b", b"/a"), Some(&b"b"[..]));
        assert_eq!(under(b"/a", b"/a"), Some(&b""[..]));
        assert_eq!(under(b"/ab", b"/a"), None);
        assert_eq!(under(b"/", b"/a"), None);
        assert!(Path::new(b"/a/b").unwrap().starts_with(b"/a"));
    }

    #[test]
    fn rooted_fs_reads_whole_files_and_maps_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"12345").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let fs = RootedFs::new(dir.path());
        let mut buf = [0u8; 8];
        assert_eq!(fs.read(b"/f", &mut buf), Ok(5));
        assert_eq!(buf.get(..5), Some(&b"12345"[..]));
        assert_eq!(
            fs.read(b"/f", &mut [0u8; 5]),
            Err(ReadError::Unreadable { errno: 27 })
        );
        assert_eq!(fs.read(b"/nope", &mut buf), Err(ReadError::Missing));
        assert_eq!(
            fs.read(b"/d", &mut buf),
            Err(ReadError::Unreadable { errno: 21 })
        );
    }
}
