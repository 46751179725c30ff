//! Values the library sets once while a process image starts and only reads afterwards: the
//! attached segment, PostgreSQL's symbols. Kept in plain memory rather than atomics because the
//! slow paths read them on every reservation and the compiler keeps every atomic load, used or
//! not, where it loads only the fields of plain memory that are used.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;

/// A value written once, before an atomic flag publishes it (a Release store), and read only by
/// code that saw the flag (an Acquire load) or by the writing thread after the write.
pub struct WriteOnce<T>(UnsafeCell<MaybeUninit<T>>);

// SAFETY: the value is written once, by one thread, before it is published (see the type's
// documentation), and only shared immutably after: what a `OnceLock<T>` needs of `T`.
unsafe impl<T: Send + Sync> Sync for WriteOnce<T> {}

impl<T> WriteOnce<T> {
    /// Not yet written.
    pub const fn new() -> WriteOnce<T> {
        WriteOnce(UnsafeCell::new(MaybeUninit::uninit()))
    }

    /// Writes the value.
    ///
    /// # Safety
    /// Called once, before the flag that publishes the value is set, with no reader running.
    pub unsafe fn write(&self, value: T) {
        // SAFETY: the caller's contract: nobody else reads or writes the cell now.
        unsafe { self.0.get().write(MaybeUninit::new(value)) };
    }

    /// The value.
    ///
    /// # Safety
    /// Only after [`WriteOnce::write`], on a thread that saw the publishing flag or wrote it.
    #[inline(always)]
    pub unsafe fn get(&self) -> &T {
        // SAFETY: the caller's contract: written, and never written again.
        unsafe { (*self.0.get()).assume_init_ref() }
    }
}
