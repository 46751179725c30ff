//! Messages on stderr, written without allocating: the guard runs inside `malloc`, so it formats
//! into a fixed buffer on the stack and hands it to `write(2)` directly.

use core::fmt::{self, Write};

/// A fixed-size line buffer; text past its end is cut.
pub struct Line {
    buffer: [u8; 512],
    len: usize,
}

impl Line {
    /// An empty line that starts with `oomguard[PID]: `.
    pub fn new() -> Line {
        let mut line = Line {
            buffer: [0; 512],
            len: 0,
        };
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let _ = write!(line, "oomguard[{pid}]: ");
        line
    }

    /// Writes the line and a newline to stderr in one `write(2)`, keeping `errno`.
    pub fn emit(mut self) {
        let _ = self.write_str("\n");
        if self.len == self.buffer.len() {
            self.buffer[self.len - 1] = b'\n';
        }
        let saved = crate::errno::get();
        // SAFETY: the buffer is valid for `len` bytes; a failed write to stderr is not our problem.
        unsafe { libc::write(2, self.buffer.as_ptr().cast(), self.len) };
        crate::errno::set(saved);
    }
}

impl Write for Line {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let room = self.buffer.len() - self.len;
        let take = text.len().min(room);
        self.buffer[self.len..self.len + take].copy_from_slice(&text.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// Text written into a borrowed byte buffer; text past its end is an error.
pub struct Buffer<'a> {
    bytes: &'a mut [u8],
    len: usize,
}

impl<'a> Buffer<'a> {
    /// An empty writer over `bytes`.
    pub fn new(bytes: &'a mut [u8]) -> Buffer<'a> {
        Buffer { bytes, len: 0 }
    }
}

impl Write for Buffer<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let end = self.len + text.len();
        if end > self.bytes.len() {
            return Err(fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}
