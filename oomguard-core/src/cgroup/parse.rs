//! Line-by-line reading of kernel text files and the number formats they use, shared by the v1
//! and v2 readers and by cgroup discovery.
//!
//! Files are scanned through one open file and a caller-sized stack buffer, so files longer than
//! the buffer (a host's `mountinfo`, a 6.x `memory.stat`) cost no more memory. A line that does
//! not fit the buffer is skipped whole: the only such lines in practice are overlay mounts with
//! long `lowerdir=` lists, which discovery does not need, and a value file made only of an
//! overlong line ends up without its value, which is reported as garbage.

use super::{CgroupError, FileId};
use crate::fs::{FileSystem, ReadError};
use core::ops::ControlFlow;

/// The scan buffer for small value and key-value files (`memory.max`, `memory.stat`, …).
pub(crate) const VALUE_BUF: usize = 512;
/// The scan buffer for `/proc/self/mountinfo` and `/proc/self/cgroup`, whose lines hold paths.
pub(crate) const PATH_BUF: usize = 4096;

/// Maps a failure to open or read `file` to the reader error that names it.
pub(crate) fn read_error(file: FileId, error: ReadError) -> CgroupError {
    match error {
        ReadError::Missing => CgroupError::Missing(file),
        ReadError::Unreadable { errno } => CgroupError::Unreadable { file, errno },
    }
}

/// Calls `visit` with each line of the file at `path` (without its `\n`) and its 1-based number,
/// until the end of the file or until `visit` breaks.
pub(crate) fn for_each_line<F: FileSystem>(
    fs: &F,
    path: &[u8],
    file: FileId,
    buf: &mut [u8],
    mut visit: impl FnMut(u32, &[u8]) -> ControlFlow<()>,
) -> Result<(), CgroupError> {
    let mut open = fs.open(path).map_err(|e| read_error(file, e))?;
    let mut number: u32 = 0;
    // buf[..carried] is the start of a line whose end has not been read yet.
    let mut carried = 0;
    // Set while discarding the rest of a line longer than `buf`.
    let mut skipping = false;
    loop {
        let spare = match buf.get_mut(carried..) {
            Some(spare) if !spare.is_empty() => spare,
            _ => {
                // The line does not fit: drop what we have and skip to its end.
                skipping = true;
                carried = 0;
                match buf.get_mut(..) {
                    Some(all) if !all.is_empty() => all,
                    _ => return Err(CgroupError::Unreadable { file, errno: 0 }),
                }
            }
        };
        let read = crate::fs::ReadFile::read(&mut open, spare).map_err(|e| read_error(file, e))?;
        if read == 0 {
            if carried > 0 && !skipping {
                number = number.saturating_add(1);
                let _ = visit(number, buf.get(..carried).unwrap_or(&[]));
            }
            return Ok(());
        }
        let end = carried.saturating_add(read).min(buf.len());
        let mut start = 0;
        while let Some(newline) = buf
            .get(start..end)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            let line_end = start.saturating_add(newline);
            number = number.saturating_add(1);
            if skipping {
                skipping = false;
            } else if visit(number, buf.get(start..line_end).unwrap_or(&[])).is_break() {
                return Ok(());
            }
            start = line_end.saturating_add(1);
        }
        if skipping {
            carried = 0;
        } else if start < end {
            buf.copy_within(start..end, 0);
            carried = end - start;
        } else {
            carried = 0;
        }
    }
}

/// A decimal `u64` with optional surrounding blanks; `None` for anything else, including
/// overflow (the kernel never prints a value that does not fit).
pub(crate) fn parse_u64(text: &[u8]) -> Option<u64> {
    let text = text.trim_ascii();
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |number, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        number.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// The blank-separated fields of a line.
pub(crate) fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ' || b == b'\t')
        .filter(|field| !field.is_empty())
}

/// A `key value` line (`memory.stat`, `memory.events`, `memory.oom_control`): the key and the
/// value as a number, or `None` if the line is not exactly two fields with a numeric second.
pub(crate) fn key_number(line: &[u8]) -> Option<(&[u8], u64)> {
    let mut parts = fields(line);
    let key = parts.next()?;
    let value = parse_u64(parts.next()?)?;
    match parts.next() {
        None => Some((key, value)),
        Some(_) => None,
    }
}

/// Reads a file holding one number (`memory.current`, `memory.failcnt`, …).
pub(crate) fn read_number<F: FileSystem>(
    fs: &F,
    path: &[u8],
    file: FileId,
) -> Result<u64, CgroupError> {
    let mut value = None;
    let mut bad_line = 0;
    read_single_line(fs, path, file, |number, line| match parse_u64(line) {
        Some(v) => value = Some(v),
        None => bad_line = number,
    })?;
    value.ok_or(CgroupError::Garbage {
        file,
        line: bad_line.max(1),
    })
}

/// Calls `visit` with the first line of a one-line file; an empty file, or more than one
/// non-blank line, is garbage.
pub(crate) fn read_single_line<F: FileSystem>(
    fs: &F,
    path: &[u8],
    file: FileId,
    mut visit: impl FnMut(u32, &[u8]),
) -> Result<(), CgroupError> {
    let mut buf = [0u8; VALUE_BUF];
    let mut lines = 0u32;
    let mut extra_line = 0;
    for_each_line(fs, path, file, &mut buf, |number, line| {
        if line.trim_ascii().is_empty() && number > 1 {
            return ControlFlow::Continue(());
        }
        lines = lines.saturating_add(1);
        if lines == 1 {
            visit(number, line);
            ControlFlow::Continue(())
        } else {
            extra_line = number;
            ControlFlow::Break(())
        }
    })?;
    match (lines, extra_line) {
        (0, _) => Err(CgroupError::Garbage { file, line: 1 }),
        (_, 0) => Ok(()),
        (_, line) => Err(CgroupError::Garbage { file, line }),
    }
}

/// Reads a `key number` file, handing each recognised pair to `visit`. Lines that are not
/// `key number` are garbage unless `visit` never needs them: the kernel adds keys over time, so
/// unknown keys are fine, but a malformed line is reported by its number.
pub(crate) fn read_key_numbers<F: FileSystem>(
    fs: &F,
    path: &[u8],
    file: FileId,
    mut visit: impl FnMut(&[u8], u64),
) -> Result<(), CgroupError> {
    let mut buf = [0u8; VALUE_BUF];
    let mut bad_line = 0;
    for_each_line(fs, path, file, &mut buf, |number, line| {
        if line.trim_ascii().is_empty() {
            return ControlFlow::Continue(());
        }
        match key_number(line) {
            Some((key, value)) => {
                visit(key, value);
                ControlFlow::Continue(())
            }
            None => {
                bad_line = number;
                ControlFlow::Break(())
            }
        }
    })?;
    if bad_line == 0 {
        Ok(())
    } else {
        Err(CgroupError::Garbage {
            file,
            line: bad_line,
        })
    }
}

/// The values that a `key value` file gives for a fixed list of keys (unknown keys skipped), for
/// readers that return a struct of them.
pub(crate) struct KeyedValues<const N: usize> {
    keys: &'static [&'static str; N],
    values: [Option<u64>; N],
    file: FileId,
}

impl<const N: usize> KeyedValues<N> {
    /// The value of `keys[index]`, if the file had it.
    pub(crate) fn get(&self, index: usize) -> Option<u64> {
        self.values.get(index).copied().flatten()
    }

    /// The value of `keys[index]`, which the kernel always writes.
    pub(crate) fn required(&self, index: usize) -> Result<u64, CgroupError> {
        self.get(index).ok_or(CgroupError::Incomplete {
            file: self.file,
            key: self.keys.get(index).copied().unwrap_or("?"),
        })
    }
}

/// Reads the values of `keys` from the `key value` file at `path`.
pub(crate) fn read_keyed<F: FileSystem, const N: usize>(
    fs: &F,
    path: &[u8],
    file: FileId,
    keys: &'static [&'static str; N],
) -> Result<KeyedValues<N>, CgroupError> {
    let mut values = [None; N];
    read_key_numbers(fs, path, file, |key, value| {
        if let Some(slot) = keys
            .iter()
            .position(|k| k.as_bytes() == key)
            .and_then(|i| values.get_mut(i))
        {
            *slot = Some(value);
        }
    })?;
    Ok(KeyedValues { keys, values, file })
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub(crate) fn read_mem_total<F: FileSystem>(fs: &F) -> Result<u64, CgroupError> {
    let file = FileId::ProcMeminfo;
    let mut buf = [0u8; VALUE_BUF];
    let mut result = None;
    for_each_line(fs, b"/proc/meminfo", file, &mut buf, |number, line| {
        let Some(rest) = line.strip_prefix(b"MemTotal:") else {
            return ControlFlow::Continue(());
        };
        let mut parts = fields(rest);
        let kib = parts.next().and_then(parse_u64);
        let bytes = match (kib, parts.next(), parts.next()) {
            (Some(kib), Some(b"kB"), None) => kib.checked_mul(1024).filter(|&b| b > 0),
            _ => None,
        };
        result = Some(bytes.ok_or(number));
        ControlFlow::Break(())
    })?;
    match result {
        Some(Ok(bytes)) => Ok(bytes),
        Some(Err(line)) => Err(CgroupError::Garbage { file, line }),
        None => Err(CgroupError::Garbage { file, line: 0 }),
    }
}

/// Copies `text` into `out` decoding the octal escapes (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash) with which the kernel writes paths in `mountinfo`. Returns the
/// decoded length, or `None` if it does not fit or an escape is malformed.
pub(crate) fn decode_octal_escapes(text: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut written = 0usize;
    let mut rest = text;
    while let Some((&b, tail)) = rest.split_first() {
        let (byte, tail) = if b == b'\\' {
            let digits = tail.get(..3)?;
            let value = digits.iter().try_fold(0u32, |acc, &d| {
                (b'0'..=b'7')
                    .contains(&d)
                    .then(|| acc * 8 + u32::from(d - b'0'))
            })?;
            (u8::try_from(value).ok()?, tail.get(3..)?)
        } else {
            (b, tail)
        };
        *out.get_mut(written)? = byte;
        written = written.checked_add(1)?;
        rest = tail;
    }
    Some(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{FileSystem, ReadFile};
    use std::vec::Vec;

    /// A one-file file system that hands out its text in chunks of `chunk` bytes.
    struct Chunked {
        text: &'static [u8],
        chunk: usize,
    }

    struct ChunkedFile {
        text: &'static [u8],
        chunk: usize,
    }

    impl ReadFile for ChunkedFile {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, ReadError> {
            let n = self.chunk.min(buf.len()).min(self.text.len());
            buf[..n].copy_from_slice(&self.text[..n]);
            self.text = &self.text[n..];
            Ok(n)
        }
    }

    impl FileSystem for Chunked {
        type File = ChunkedFile;
        fn open(&self, _: &[u8]) -> Result<ChunkedFile, ReadError> {
            Ok(ChunkedFile {
                text: self.text,
                chunk: self.chunk,
            })
        }
    }

    fn lines(text: &'static [u8], chunk: usize, buf_len: usize) -> Vec<(u32, Vec<u8>)> {
        let fs = Chunked { text, chunk };
        let mut buf = vec![0u8; buf_len];
        let mut seen = Vec::new();
        for_each_line(&fs, b"/f", FileId::ProcMeminfo, &mut buf, |n, line| {
            seen.push((n, line.to_vec()));
            ControlFlow::Continue(())
        })
        .unwrap();
        seen
    }

    #[test]
    fn lines_survive_any_chunking_and_overlong_lines_are_skipped() {
        let text = b"one 1\ntwo 22\nthree 333";
        for chunk in 1..=text.len() {
            let seen = lines(text, chunk, 16);
            assert_eq!(seen.len(), 3, "chunk {chunk}");
            assert_eq!(seen[2], (3, b"three 333".to_vec()));
        }
        let seen = lines(b"short\nthis line is far too long\nok\n", 5, 8);
        assert_eq!(seen, vec![(1, b"short".to_vec()), (3, b"ok".to_vec())]);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b" 42\n"), Some(42));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(key_number(b"anon 4096"), Some((&b"anon"[..], 4096)));
        assert_eq!(key_number(b"anon 4096 x"), None);
        assert_eq!(key_number(b"anon"), None);
    }

    #[test]
    fn octal_escapes() {
        let mut out = [0u8; 32];
        let n = decode_octal_escapes(br"/a\040b\134c", &mut out).unwrap();
        assert_eq!(&out[..n], b"/a b\\c");
        assert_eq!(decode_octal_escapes(br"/a\04", &mut out), None);
        assert_eq!(decode_octal_escapes(br"/a\777", &mut out), None);
        assert_eq!(decode_octal_escapes(b"/abc", &mut [0u8; 2]), None);
    }
}
