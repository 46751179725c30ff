//! The derived limit: `cgroup limit − PostgreSQL shared memory − reserve` (ARCHITECTURE.md, "The limit"), used
//! when `OOM_GUARD_LIMIT` is not given.
//!
//! Shared memory is subtracted because PostgreSQL's shared buffers are charged to the cgroup (as
//! `shmem`) but never pass through malloc; with huge pages they are charged to hugetlb instead
//! and are not subtracted. The reserve covers what the guard cannot see: page tables (about
//! shared_buffers/512 per backend), stacks, the kernel's own memory, and processes outside the
//! domain.

use core::fmt;
use core::sync::atomic::Ordering::Relaxed;

use crate::config::{parse_size, SizeError};
use crate::layout::{Header, LimitSource, SharedMemorySource};

/// The default reserve, as a share of the cgroup limit…
pub const DEFAULT_RESERVE_PERCENT: u32 = 10;
/// …but at least this much.
pub const MIN_DEFAULT_RESERVE: u64 = 64 << 20;
/// Largest percentage `OOM_GUARD_RESERVE` accepts.
pub const MAX_RESERVE_PERCENT: u32 = 90;

/// `OOM_GUARD_RESERVE`: bytes, or a share of the cgroup limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// A fixed number of bytes.
    Bytes(u64),
    /// A percentage of the cgroup limit.
    Percent(u32),
}

/// The accepted reserve forms, quoted by the reserve error.
pub const RESERVE_FORMS: &str = "a size (256Mi, 1Gi, 500M, 268435456) or a percentage of the \
cgroup limit from 0% to 90% (15%)";

/// Why `OOM_GUARD_RESERVE` could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveError {
    /// Not a size.
    Size(SizeError),
    /// A percentage that is not a whole number from 0 to 90.
    Percent,
}

impl ReserveError {
    /// Why, without the accepted forms.
    pub fn reason(&self) -> &'static str {
        match self {
            ReserveError::Size(error) => error.reason(),
            ReserveError::Percent => "a percentage must be a whole number from 0 to 90",
        }
    }
}

impl fmt::Display for ReserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; accepted forms are {RESERVE_FORMS}", self.reason())
    }
}

impl Reserve {
    /// Parses `15%` or a size. A zero reserve must be written `0%` (a zero size is rejected, as
    /// everywhere).
    pub fn parse(text: &str) -> Result<Reserve, ReserveError> {
        let text = text.trim();
        if let Some(number) = text.strip_suffix('%') {
            let number = number.trim();
            // Digits only: `u32::from_str` would also take a sign (`+15%`).
            if !number.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ReserveError::Percent);
            }
            return match number.parse::<u32>() {
                Ok(percent) if percent <= MAX_RESERVE_PERCENT => Ok(Reserve::Percent(percent)),
                _ => Err(ReserveError::Percent),
            };
        }
        parse_size(text)
            .map(Reserve::Bytes)
            .map_err(ReserveError::Size)
    }

    /// The reserve in bytes for a cgroup limit of `cgroup_limit`.
    pub fn bytes(self, cgroup_limit: u64) -> u64 {
        match self {
            Reserve::Bytes(bytes) => bytes,
            Reserve::Percent(percent) => cgroup_limit / 100 * u64::from(percent),
        }
    }
}

/// The reserve used when `OOM_GUARD_RESERVE` is not given: 10% of the cgroup limit, at least
/// 64 MiB.
pub fn default_reserve(cgroup_limit: u64) -> u64 {
    Reserve::Percent(DEFAULT_RESERVE_PERCENT)
        .bytes(cgroup_limit)
        .max(MIN_DEFAULT_RESERVE)
}

/// The derived limit, or `None` when shared memory and reserve leave nothing (the caller says so
/// and the guard only accounts).
pub fn derive(
    cgroup_limit: u64,
    shared_memory: u64,
    huge_pages: bool,
    reserve: u64,
) -> Option<u64> {
    let shared = if huge_pages { 0 } else { shared_memory };
    cgroup_limit
        .checked_sub(shared)?
        .checked_sub(reserve)
        .filter(|&limit| limit > 0)
}

/// Records how the reserve is chosen (`OOM_GUARD_RESERVE`, or the default when `None`); the bytes
/// follow from the cgroup limit in [`set_cgroup_limit`].
pub fn record_reserve(header: &Header, reserve: Option<Reserve>) {
    let inputs = &header.limit_inputs;
    let (percent, from_env) = match reserve {
        Some(Reserve::Percent(percent)) => (percent, 1),
        Some(Reserve::Bytes(bytes)) => {
            inputs.reserve_bytes.store(bytes, Relaxed);
            (0, 1)
        }
        None => (0, 0),
    };
    inputs.reserve_percent.store(percent, Relaxed);
    inputs.reserve_from_env.store(from_env, Relaxed);
}

/// Records the cgroup limit, recomputes a default or percentage reserve for it, and re-derives
/// the limit. Returns what [`apply_derived`] returns.
pub fn set_cgroup_limit(header: &Header, cgroup_limit: u64) -> Option<u64> {
    let inputs = &header.limit_inputs;
    inputs.cgroup_limit_bytes.store(cgroup_limit, Relaxed);
    let reserve = match (
        inputs.reserve_from_env.load(Relaxed),
        inputs.reserve_percent.load(Relaxed),
    ) {
        (0, _) => default_reserve(cgroup_limit),
        (_, 0) => inputs.reserve_bytes.load(Relaxed), // given in bytes (or 0%)
        (_, percent) => Reserve::Percent(percent).bytes(cgroup_limit),
    };
    inputs.reserve_bytes.store(reserve, Relaxed);
    apply_derived(header)
}

/// Recomputes the header's limit from its recorded inputs, if the limit is a derived one.
/// Returns the new limit (0 when the inputs leave nothing).
pub fn apply_derived(header: &Header) -> Option<u64> {
    if LimitSource::from_raw(header.limit_source.load(Relaxed)) != LimitSource::Derived {
        return None;
    }
    let inputs = &header.limit_inputs;
    let limit = derive(
        inputs.cgroup_limit_bytes.load(Relaxed),
        inputs.shared_memory_bytes.load(Relaxed),
        inputs.huge_pages.load(Relaxed) != 0,
        inputs.reserve_bytes.load(Relaxed),
    )
    .unwrap_or(0);
    header.limit_bytes.store(limit, Relaxed);
    Some(limit)
}

/// Records a shared anonymous mapping of `bytes` (the postmaster's main shared memory) unless
/// `OOM_GUARD_SHARED_MEMORY` fixed the number, and re-derives the limit. Keeps the largest seen:
/// after a crash PostgreSQL maps a segment of the same size again.
pub fn observe_shared_memory(header: &Header, bytes: u64, huge_pages: bool) {
    let inputs = &header.limit_inputs;
    if SharedMemorySource::from_raw(inputs.shared_memory_source.load(Relaxed))
        == SharedMemorySource::Environment
    {
        return;
    }
    if bytes <= inputs.shared_memory_bytes.load(Relaxed) {
        return;
    }
    inputs.shared_memory_bytes.fetch_max(bytes, Relaxed);
    inputs.huge_pages.store(u32::from(huge_pages), Relaxed);
    inputs
        .shared_memory_source
        .store(SharedMemorySource::Observed as u32, Relaxed);
    apply_derived(header);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::tests::{as_bytes, segment_buffer};
    use crate::layout::{initialise, SegmentView};

    const MIB: u64 = 1 << 20;

    #[test]
    fn reserves_in_every_form() {
        assert_eq!(Reserve::parse("15%"), Ok(Reserve::Percent(15)));
        assert_eq!(Reserve::parse(" 0% "), Ok(Reserve::Percent(0)));
        assert_eq!(Reserve::parse("256Mi"), Ok(Reserve::Bytes(256 * MIB)));
        assert_eq!(Reserve::parse("91%"), Err(ReserveError::Percent));
        assert_eq!(Reserve::parse("1.5%"), Err(ReserveError::Percent));
        assert!(matches!(Reserve::parse("lots"), Err(ReserveError::Size(_))));
        assert_eq!(Reserve::Percent(25).bytes(1000 * MIB), 250 * MIB);
        let message = Reserve::parse("91%").unwrap_err().to_string();
        assert!(message.contains("0% to 90%"), "{message}");
    }

    #[test]
    fn the_default_reserve_is_a_tenth_but_at_least_64_mib() {
        assert_eq!(default_reserve(256 * MIB), 64 * MIB);
        assert_eq!(default_reserve(8 << 30), (8 << 30) / 100 * 10);
    }

    #[test]
    fn the_limit_is_what_shared_memory_and_reserve_leave() {
        assert_eq!(
            derive(1024 * MIB, 128 * MIB, false, 64 * MIB),
            Some(832 * MIB)
        );
        assert_eq!(
            derive(1024 * MIB, 128 * MIB, true, 64 * MIB),
            Some(960 * MIB),
            "huge pages are charged to hugetlb, not to memory"
        );
        assert_eq!(derive(100 * MIB, 64 * MIB, false, 64 * MIB), None);
        assert_eq!(derive(128 * MIB, 64 * MIB, false, 64 * MIB), None);
    }

    #[test]
    fn the_reserve_follows_the_cgroup_limit_as_it_was_chosen() {
        let mut buffer = segment_buffer(2);
        let bytes = as_bytes(&mut buffer);
        // SAFETY: zeroed, aligned, sized.
        unsafe { initialise(bytes.as_mut_ptr(), 2, 0, 1) };
        let header = SegmentView::new(bytes).unwrap().header;
        header
            .limit_source
            .store(LimitSource::Derived as u32, Relaxed);
        let reserve = |header: &Header| header.limit_inputs.reserve_bytes.load(Relaxed);
        record_reserve(header, None);
        assert_eq!(
            set_cgroup_limit(header, 1024 * MIB),
            Some(1024 * MIB - default_reserve(1024 * MIB))
        );
        assert_eq!(reserve(header), default_reserve(1024 * MIB));
        record_reserve(header, Some(Reserve::Percent(25)));
        set_cgroup_limit(header, 2048 * MIB);
        assert_eq!(reserve(header), Reserve::Percent(25).bytes(2048 * MIB));
        record_reserve(header, Some(Reserve::Bytes(100 * MIB)));
        assert_eq!(set_cgroup_limit(header, 4096 * MIB), Some(3996 * MIB));
    }

    #[test]
    fn observed_shared_memory_rederives_the_limit() {
        let mut buffer = segment_buffer(2);
        let bytes = as_bytes(&mut buffer);
        // SAFETY: zeroed, aligned, sized.
        unsafe { initialise(bytes.as_mut_ptr(), 2, 0, 1) };
        let header = SegmentView::new(bytes).unwrap().header;
        let inputs = &header.limit_inputs;
        inputs.cgroup_limit_bytes.store(1024 * MIB, Relaxed);
        inputs.reserve_bytes.store(64 * MIB, Relaxed);
        assert_eq!(apply_derived(header), None, "not a derived limit yet");
        header
            .limit_source
            .store(LimitSource::Derived as u32, Relaxed);
        assert_eq!(apply_derived(header), Some(960 * MIB));
        observe_shared_memory(header, 100 * MIB, false);
        assert_eq!(header.limit_bytes.load(Relaxed), 860 * MIB);
        observe_shared_memory(header, 50 * MIB, false);
        assert_eq!(
            header.limit_bytes.load(Relaxed),
            860 * MIB,
            "the largest stays"
        );
        inputs
            .shared_memory_source
            .store(SharedMemorySource::Environment as u32, Relaxed);
        observe_shared_memory(header, 500 * MIB, false);
        assert_eq!(
            header.limit_bytes.load(Relaxed),
            860 * MIB,
            "the override wins"
        );
    }
}
