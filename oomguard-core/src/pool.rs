//! The container-wide reservation pool: the only place where bytes are added to or taken from the
//! shared total, and where slots are claimed, reaped and charged.
//!
//! Callers reserve in batches (the preload library hands each thread a local credit), so these
//! operations run once per batch, not once per `malloc`. Nothing here allocates, blocks or makes a
//! system call: liveness checks are the caller's closure, so the same code serves the preload
//! library, the CLI and tests.

use core::sync::atomic::AtomicI64;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

use crate::budget::{BudgetSource, RefusalCause};
use crate::layout::{Header, ProcessKind, SegmentView, Slot, PID_BUSY, PID_FREE};

/// Operations on a validated segment.
#[derive(Clone, Copy)]
pub struct Pool<'a> {
    view: SegmentView<'a>,
    /// The caller's PID namespace: slots it claims are marked with it, and only slots marked
    /// with it are matched by pid or judged dead.
    pid_namespace: u64,
}

impl<'a> Pool<'a> {
    /// A pool over `view`, for a caller in PID namespace 0 ("unknown"; tests).
    #[inline]
    pub fn new(view: SegmentView<'a>) -> Pool<'a> {
        Pool {
            view,
            pid_namespace: 0,
        }
    }

    /// The same pool for a caller in PID namespace `inode` (`/proc/self/ns/pid`).
    #[inline]
    pub fn in_pid_namespace(self, inode: u64) -> Pool<'a> {
        Pool {
            pid_namespace: inode,
            ..self
        }
    }

    /// Whether `slot`'s pid is one of the caller's PID namespace.
    fn pid_is_ours(&self, slot: &Slot) -> bool {
        slot.pid_namespace.load(Relaxed) == self.pid_namespace
    }

    /// The segment header.
    #[inline]
    pub fn header(&self) -> &'a Header {
        self.view.header
    }

    /// The process slots.
    pub fn slots(&self) -> &'a [Slot] {
        self.view.slots
    }

    /// The limit in bytes, 0 when none is set.
    #[inline]
    pub fn limit(&self) -> u64 {
        self.view.header.limit_bytes.load(Relaxed)
    }

    /// Whether `bytes` more would keep the total within the limit (or no limit is set), as the
    /// total reads now.
    #[inline]
    pub fn would_fit(&self, bytes: u64) -> bool {
        let limit = self.limit();
        limit == 0 || within_limit(self.view.header.total.load(Relaxed), bytes, limit).is_some()
    }

    /// Adds `bytes` to the total and to `slot` only if the total stays within the limit (or no
    /// limit is set). Returns whether it did.
    #[inline]
    pub fn try_reserve(&self, slot: &Slot, bytes: u64) -> bool {
        let limit = self.limit();
        if limit == 0 {
            self.reserve_regardless(slot, bytes);
            return true;
        }
        let header = self.view.header;
        let mut total = header.total.load(Relaxed);
        loop {
            let Some(new_total) = within_limit(total, bytes, limit) else {
                return false;
            };
            match header
                .total
                .compare_exchange_weak(total, new_total, AcqRel, Relaxed)
            {
                Ok(_) => {
                    self.after_reserve(slot, new_total, bytes);
                    return true;
                }
                Err(seen) => total = seen,
            }
        }
    }

    /// Adds `bytes` to the total and to `slot` whatever the limit says (processes that are never
    /// refused, report mode, overdraft).
    #[inline]
    pub fn reserve_regardless(&self, slot: &Slot, bytes: u64) {
        let bytes = clamp_to_i64(bytes);
        let new_total = self
            .view
            .header
            .total
            .fetch_add(bytes, AcqRel)
            .saturating_add(bytes);
        self.after_reserve(slot, new_total, bytes as u64);
    }

    /// Peaks are not raised here but by [`Pool::record_peaks`] once the allocation the bytes
    /// were reserved for succeeded: a request glibc then fails (say `malloc(1 << 45)` in a
    /// process that is never refused) must not leave a peak of 32 TiB behind.
    #[inline]
    fn after_reserve(&self, slot: &Slot, _new_total: i64, bytes: u64) {
        let bytes = clamp_to_i64(bytes);
        slot.bytes.fetch_add(bytes, Relaxed);
    }

    /// Raises the domain's and `slot`'s peaks to their current totals. Called after an
    /// allocation that needed a reservation succeeded.
    #[inline]
    pub fn record_peaks(&self, slot: &Slot) {
        raise_peak(
            &self.view.header.stats.peak,
            self.view.header.total.load(Relaxed),
        );
        raise_peak(&slot.peak, slot.bytes.load(Relaxed));
    }

    /// Charges `bytes` of dynamic shared memory to the pool (not to a slot: the segment outlives
    /// the process that sized it and is released by whichever process unlinks it), only if the
    /// total stays within the limit, or `regardless`. Returns whether it did.
    pub fn reserve_shared(&self, bytes: u64, regardless: bool) -> bool {
        let limit = self.limit();
        let header = self.view.header;
        let delta = clamp_to_i64(bytes);
        let mut total = header.total.load(Relaxed);
        loop {
            let new_total = total.saturating_add(delta);
            if !regardless && limit != 0 && new_total > 0 && new_total as u64 > limit {
                return false;
            }
            match header
                .total
                .compare_exchange_weak(total, new_total, AcqRel, Relaxed)
            {
                Ok(_) => break,
                Err(seen) => total = seen,
            }
        }
        header.stats.dynamic_shared_bytes.fetch_add(delta, Relaxed);
        raise_peak(&header.stats.peak, total.saturating_add(delta));
        true
    }

    /// Returns `bytes` of dynamic shared memory to the pool.
    pub fn release_shared(&self, bytes: u64) {
        let bytes = clamp_to_i64(bytes);
        let header = self.view.header;
        header.stats.dynamic_shared_bytes.fetch_sub(bytes, Relaxed);
        header.total.fetch_sub(bytes, AcqRel);
    }

    /// Returns up to `bytes` from `slot` to the pool: never more than the slot holds. A forked
    /// child's frees of memory it inherited would otherwise lower the total although the parent
    /// still holds that memory (copy-on-write: the child's free even copies the page).
    #[inline]
    pub fn release(&self, slot: &Slot, bytes: u64) {
        let bytes = clamp_to_i64(bytes);
        let mut held = slot.bytes.load(Relaxed);
        loop {
            let released = bytes.min(held.max(0));
            match slot
                .bytes
                .compare_exchange_weak(held, held - released, Relaxed, Relaxed)
            {
                Ok(_) => {
                    self.view.header.total.fetch_sub(released, AcqRel);
                    return;
                }
                Err(seen) => held = seen,
            }
        }
    }

    /// Counts a refused call of `size` bytes, refused for `cause`.
    pub fn record_denial(&self, slot: &Slot, size: u64, cause: RefusalCause) {
        let stats = &self.view.header.stats;
        let by_cause = match cause {
            RefusalCause::KernelTight => Some(&stats.kernel_denials),
            RefusalCause::BackendBudget => Some(&stats.budget_denials),
            RefusalCause::DomainLimit => Some(&stats.domain_limit_denials),
            RefusalCause::None => None,
        };
        if let Some(counter) = by_cause {
            counter.fetch_add(1, Relaxed);
        }
        slot.last_refusal_cause.store(cause as u32, Relaxed);
        stats.denied_allocations.fetch_add(1, Relaxed);
        stats.denied_bytes.fetch_add(size, Relaxed);
        slot.denials.fetch_add(1, Relaxed);
        slot.denied_bytes.fetch_add(size, Relaxed);
        slot.last_denied_size.store(size, Relaxed);
    }

    /// Counts a call that would have been refused, in report mode.
    pub fn record_overlimit_report(&self, slot: &Slot) {
        self.view
            .header
            .stats
            .overlimit_reports
            .fetch_add(1, Relaxed);
        slot.overlimit_reports.fetch_add(1, Relaxed);
    }

    /// Takes a slot for process `pid`, claimed at `claimed_at_ns` (`CLOCK_BOOTTIME`).
    ///
    /// A new process image (`replaces_image`: not a forked child) first looks for a slot already
    /// held by its pid: it belongs to the image this process replaced with `exec` (or to a dead
    /// process whose pid was reused), so its bytes go back to the pool and the slot is reused. A
    /// forked child skips that scan (its pid is new; an orphan with a reused pid is reaped by its
    /// start time). Otherwise the first free slot from the hint on is taken. With every slot taken
    /// the process is accounted in [`Header::overflow`], which is shared and never reaped.
    pub fn claim(&self, pid: i32, claimed_at_ns: u64, replaces_image: bool) -> &'a Slot {
        let slots = self.view.slots;
        if replaces_image {
            for slot in slots {
                if slot.pid.load(Relaxed) == pid
                    && self.pid_is_ours(slot)
                    && self.take_over(slot, pid)
                {
                    self.reclaim(slot);
                    return self.fill(slot, pid, claimed_at_ns);
                }
            }
        }
        let hint = &self.view.header.stats.free_slot_hint;
        let start = hint.load(Relaxed) as usize % slots.len();
        for index in (start..slots.len()).chain(0..start) {
            let slot = &slots[index];
            if slot.pid.load(Relaxed) == PID_FREE && self.take_over(slot, PID_FREE) {
                hint.store(index as u64 + 1, Relaxed);
                return self.fill(slot, pid, claimed_at_ns);
            }
        }
        self.view.header.stats.slot_overflows.fetch_add(1, Relaxed);
        &self.view.header.overflow
    }

    /// Frees the slots whose owner is gone (`is_alive(pid, claimed_at_ns)` false), returning their
    /// bytes to the pool. Returns how many slots were reaped.
    pub fn reap_dead(&self, mut is_alive: impl FnMut(i32, u64) -> bool) -> u32 {
        let mut reaped = 0;
        for slot in self.view.slots {
            let pid = slot.pid.load(Acquire);
            let claimed_at = slot.claimed_at_ns.load(Relaxed);
            if pid <= 0 || !self.pid_is_ours(slot) || is_alive(pid, claimed_at) {
                continue;
            }
            if self.take_over(slot, pid) {
                if slot.claimed_at_ns.load(Relaxed) != claimed_at {
                    // A new process with the same pid claimed the slot while we judged the
                    // old one: it is alive, give it back.
                    slot.pid.store(pid, Release);
                    continue;
                }
                self.reclaim(slot);
                self.free(slot);
                reaped += 1;
            }
        }
        if reaped > 0 {
            self.view
                .header
                .stats
                .reaped_slots
                .fetch_add(u64::from(reaped), Relaxed);
        }
        reaped
    }

    /// Returns a process's own slot when it exits cleanly.
    pub fn vacate(&self, slot: &Slot, pid: i32) {
        if core::ptr::eq(slot, &self.view.header.overflow) {
            return;
        }
        if self.take_over(slot, pid) {
            let bytes = slot.bytes.swap(0, Relaxed);
            self.view.header.total.fetch_sub(bytes, AcqRel);
            self.free(slot);
        }
    }

    /// The index of `slot`, one of this pool's slots (not the overflow slot).
    fn index_of(&self, slot: &Slot) -> usize {
        (slot as *const Slot as usize - self.view.slots.as_ptr() as usize)
            / core::mem::size_of::<Slot>()
    }

    /// Marks a taken-over slot free and lets the next claim start at it.
    fn free(&self, slot: &Slot) {
        let index = self.index_of(slot);
        slot.pid.store(PID_FREE, Release);
        self.view
            .header
            .stats
            .free_slot_hint
            .fetch_min(index as u64, Relaxed);
    }

    /// Marks a slot busy if it still holds `expected`; only the winner of this race touches it.
    fn take_over(&self, slot: &Slot, expected: i32) -> bool {
        slot.pid
            .compare_exchange(expected, PID_BUSY, Acquire, Relaxed)
            .is_ok()
    }

    /// Returns a taken-over slot's bytes to the pool, counting them as reclaimed orphan bytes.
    fn reclaim(&self, slot: &Slot) {
        let bytes = slot.bytes.swap(0, Relaxed);
        self.view.header.total.fetch_sub(bytes, AcqRel);
        if bytes > 0 {
            self.view
                .header
                .stats
                .reclaimed_orphan_bytes
                .fetch_add(bytes as u64, Relaxed);
        }
    }

    fn fill(&self, slot: &'a Slot, pid: i32, claimed_at_ns: u64) -> &'a Slot {
        self.view
            .header
            .stats
            .slot_high_water
            .fetch_max(self.index_of(slot) as u64 + 1, Relaxed);
        slot.kind.store(ProcessKind::Unclassified as u32, Relaxed);
        slot.claimed_at_ns.store(claimed_at_ns, Relaxed);
        slot.pid_namespace.store(self.pid_namespace, Relaxed);
        // A slot is free with zero bytes, unless its last owner released after vacating (a
        // thread still freeing while another one exits): such leftovers leave the total too.
        let leftover = slot.bytes.swap(0, Relaxed);
        if leftover != 0 {
            self.view.header.total.fetch_sub(leftover, AcqRel);
        }
        slot.peak.store(0, Relaxed);
        for counter in [
            &slot.allocations,
            &slot.denials,
            &slot.denied_bytes,
            &slot.last_denied_size,
            &slot.overlimit_reports,
            &slot.budget_bytes,
        ] {
            counter.store(0, Relaxed);
        }
        slot.budget_source.store(BudgetSource::None as u32, Relaxed);
        slot.last_refusal_cause
            .store(RefusalCause::None as u32, Relaxed);
        slot.pid.store(pid, Release);
        slot
    }
}

/// Raises `peak` to `value`; the plain load first spares the (usual) case of no new peak a
/// locked read-modify-write on a line other processes read.
#[inline]
fn raise_peak(peak: &AtomicI64, value: i64) {
    if value > peak.load(Relaxed) {
        peak.fetch_max(value, Relaxed);
    }
}

#[inline]
fn clamp_to_i64(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[inline]
fn add_signed(total: i64, bytes: u64) -> Option<i64> {
    total.checked_add(i64::try_from(bytes).ok()?)
}

/// `total + bytes`, if that stays within `limit` (a non-positive total always does).
#[inline]
fn within_limit(total: i64, bytes: u64, limit: u64) -> Option<i64> {
    add_signed(total, bytes).filter(|&new_total| new_total <= 0 || new_total as u64 <= limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::tests::{as_bytes, segment_buffer};
    use crate::layout::{initialise, SegmentView};

    fn with_pool(slot_count: u32, limit: u64, test: impl FnOnce(Pool<'_>)) {
        let mut buffer = segment_buffer(slot_count);
        let bytes = as_bytes(&mut buffer);
        // SAFETY: zeroed, aligned, sized for slot_count.
        unsafe { initialise(bytes.as_mut_ptr(), slot_count, 0, 1) };
        let view = SegmentView::new(bytes).unwrap();
        view.header.limit_bytes.store(limit, Relaxed);
        test(Pool::new(view));
    }

    #[test]
    fn reservations_stop_at_the_limit_and_release_returns_them() {
        with_pool(4, 1000, |pool| {
            let slot = pool.claim(10, 1, true);
            assert!(pool.try_reserve(slot, 600));
            assert!(pool.try_reserve(slot, 400));
            assert!(!pool.try_reserve(slot, 1), "the limit is inclusive");
            assert_eq!(pool.header().total.load(Relaxed), 1000);
            pool.release(slot, 700);
            assert!(pool.try_reserve(slot, 700));
            assert_eq!(slot.peak.load(Relaxed), 0, "peaks wait for the allocation");
            pool.record_peaks(slot);
            assert_eq!(slot.bytes.load(Relaxed), 1000);
            assert_eq!(slot.peak.load(Relaxed), 1000);
            assert_eq!(pool.header().stats.peak.load(Relaxed), 1000);
            assert!(!pool.try_reserve(slot, u64::MAX));
        });
    }

    #[test]
    fn no_limit_means_everything_is_granted() {
        with_pool(4, 0, |pool| {
            let slot = pool.claim(10, 1, true);
            assert!(pool.try_reserve(slot, 1 << 40));
            pool.reserve_regardless(slot, 5);
            assert_eq!(pool.header().total.load(Relaxed), (1 << 40) + 5);
        });
    }

    #[test]
    fn a_child_freeing_inherited_memory_releases_nothing() {
        with_pool(4, 1000, |pool| {
            let parent = pool.claim(10, 1, true);
            let child = pool.claim(11, 2, false);
            assert!(pool.try_reserve(parent, 900));
            assert!(pool.try_reserve(child, 50));
            pool.release(child, 300); // 50 of its own, 250 inherited from the parent
            assert_eq!(child.bytes.load(Relaxed), 0);
            assert_eq!(
                pool.header().total.load(Relaxed),
                900,
                "the parent's 900 still count"
            );
            assert!(!pool.try_reserve(child, 200));
        });
    }

    #[test]
    fn dead_slots_are_reaped_and_their_bytes_reclaimed() {
        with_pool(4, 1000, |pool| {
            let alive = pool.claim(10, 1, true);
            let dead = pool.claim(11, 2, true);
            assert!(pool.try_reserve(alive, 100));
            assert!(pool.try_reserve(dead, 800));
            assert!(!pool.try_reserve(alive, 200));
            let reaped = pool.reap_dead(|pid, start| pid == 10 && start == 1);
            assert_eq!(reaped, 1);
            assert_eq!(dead.pid.load(Relaxed), PID_FREE);
            assert_eq!(pool.header().total.load(Relaxed), 100);
            assert_eq!(
                pool.header().stats.reclaimed_orphan_bytes.load(Relaxed),
                800
            );
            assert_eq!(pool.header().stats.reaped_slots.load(Relaxed), 1);
            assert!(pool.try_reserve(alive, 200));
        });
    }

    #[test]
    fn exec_replaces_the_slot_of_its_pid() {
        with_pool(4, 0, |pool| {
            let before = pool.claim(10, 7, true);
            pool.reserve_regardless(before, 500);
            let after = pool.claim(10, 7, true);
            assert!(core::ptr::eq(before, after));
            assert_eq!(after.bytes.load(Relaxed), 0);
            assert_eq!(pool.header().total.load(Relaxed), 0);
            assert_eq!(
                pool.slots()
                    .iter()
                    .filter(|s| s.pid.load(Relaxed) == 10)
                    .count(),
                1
            );
        });
    }

    #[test]
    fn other_pid_namespaces_slots_are_neither_claimed_nor_reaped() {
        with_pool(4, 0, |pool| {
            let theirs = pool.in_pid_namespace(7).claim(10, 1, true);
            pool.in_pid_namespace(7).reserve_regardless(theirs, 100);
            let ours = pool.in_pid_namespace(8);
            let mine = ours.claim(10, 2, true);
            assert!(
                !core::ptr::eq(theirs, mine),
                "pid 10 of namespace 7 kept its slot"
            );
            assert_eq!(theirs.bytes.load(Relaxed), 100);
            assert_eq!(
                ours.reap_dead(|_, _| false),
                1,
                "only our own pid 10 is judged"
            );
            assert_eq!(theirs.pid.load(Relaxed), 10);
            assert_eq!(pool.header().total.load(Relaxed), 100);
        });
    }

    #[test]
    fn bytes_left_in_a_free_slot_leave_the_total_when_it_is_reused() {
        with_pool(2, 0, |pool| {
            let slot = pool.claim(5, 1, true);
            pool.reserve_regardless(slot, 64);
            pool.vacate(slot, 5);
            // A late release of the vacated process's other thread, then a late reservation.
            pool.reserve_regardless(slot, 32);
            assert_eq!(pool.header().total.load(Relaxed), 32);
            let reused = pool.claim(6, 1, true);
            assert!(core::ptr::eq(slot, reused));
            assert_eq!(pool.header().total.load(Relaxed), 0);
        });
    }

    #[test]
    fn freed_slots_are_found_again_from_the_hint() {
        with_pool(4, 0, |pool| {
            let first = pool.claim(1, 1, false);
            let second = pool.claim(2, 1, false);
            pool.vacate(first, 1);
            let third = pool.claim(3, 1, false);
            assert!(
                core::ptr::eq(first, third),
                "the freed slot is reused first"
            );
            let fourth = pool.claim(4, 1, false);
            assert!(!core::ptr::eq(fourth, second) && !core::ptr::eq(fourth, third));
        });
    }

    #[test]
    fn full_slots_overflow_into_the_shared_bucket() {
        with_pool(2, 0, |pool| {
            pool.claim(1, 1, true);
            pool.claim(2, 1, true);
            let third = pool.claim(3, 1, true);
            assert!(core::ptr::eq(third, &pool.header().overflow));
            assert_eq!(pool.header().stats.slot_overflows.load(Relaxed), 1);
            pool.vacate(third, 3); // never frees the shared bucket
            assert_eq!(pool.header().overflow.pid.load(Relaxed), PID_FREE);
        });
    }

    #[test]
    fn vacate_returns_bytes_and_frees_the_slot() {
        with_pool(2, 0, |pool| {
            let slot = pool.claim(5, 1, true);
            pool.reserve_regardless(slot, 64);
            pool.vacate(slot, 5);
            assert_eq!(slot.pid.load(Relaxed), PID_FREE);
            assert_eq!(pool.header().total.load(Relaxed), 0);
        });
    }

    #[test]
    fn dynamic_shared_memory_counts_in_the_total_without_a_slot() {
        with_pool(2, 1000, |pool| {
            let slot = pool.claim(5, 1, true);
            assert!(pool.try_reserve(slot, 600));
            assert!(pool.reserve_shared(400, false));
            assert!(!pool.reserve_shared(1, false));
            assert!(
                pool.reserve_shared(50, true),
                "a process that may not be refused"
            );
            assert_eq!(pool.header().total.load(Relaxed), 1050);
            assert_eq!(slot.bytes.load(Relaxed), 600);
            pool.release_shared(450);
            assert_eq!(pool.header().stats.dynamic_shared_bytes.load(Relaxed), 0);
            assert_eq!(pool.header().total.load(Relaxed), 600);
        });
    }

    #[test]
    fn denials_and_reports_are_counted() {
        with_pool(2, 10, |pool| {
            let slot = pool.claim(5, 1, true);
            pool.record_denial(slot, 4096, RefusalCause::BackendBudget);
            pool.record_overlimit_report(slot);
            let stats = &pool.header().stats;
            assert_eq!(stats.denied_allocations.load(Relaxed), 1);
            assert_eq!(stats.budget_denials.load(Relaxed), 1);
            assert_eq!(stats.domain_limit_denials.load(Relaxed), 0);
            assert_eq!(
                slot.last_refusal_cause.load(Relaxed),
                RefusalCause::BackendBudget as u32
            );
            assert_eq!(stats.denied_bytes.load(Relaxed), 4096);
            assert_eq!(stats.overlimit_reports.load(Relaxed), 1);
            assert_eq!(slot.last_denied_size.load(Relaxed), 4096);
        });
    }

    #[test]
    fn concurrent_threads_never_pass_the_limit() {
        use std::sync::atomic::AtomicU64;
        with_pool(4, 1 << 20, |pool| {
            let slot = pool.claim(1, 1, true);
            let granted = AtomicU64::new(0);
            std::thread::scope(|scope| {
                for _ in 0..4 {
                    scope.spawn(|| {
                        for _ in 0..10_000 {
                            if pool.try_reserve(slot, 1000) {
                                granted.fetch_add(1000, Relaxed);
                            }
                        }
                    });
                }
            });
            let total = pool.header().total.load(Relaxed);
            assert_eq!(total as u64, granted.load(Relaxed));
            assert!(total <= 1 << 20);
            assert!(total > (1 << 20) - 1000);
        });
    }
}
