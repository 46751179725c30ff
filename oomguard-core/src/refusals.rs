//! The refusal record: a fixed-size ring in the shared segment, after the slots, where every
//! refusal leaves which statement of which process was refused, for whom, why, and who held the
//! memory at that moment — read back by `oomguard refusals`, the SQL view and the exporter.
//!
//! Written on the refusal path of the preload library, so nothing here allocates, locks, calls
//! out or can fail: a record is claimed with one `fetch_add` (its number) and one
//! compare-and-swap (its sequence word, see below), filled with relaxed stores and published.
//!
//! - **One statement, one record.** Repeated refusals of one statement in one process (the same
//!   statement text, query id and cause, in a row) update the record the process wrote last —
//!   its count, the latest time and numbers — instead of starting a new one, so a refusal storm
//!   cannot flush the history. A process remembers its last record in a [`LastRecord`]; if that
//!   record was reused by another refusal meanwhile, the next refusal starts a new one.
//! - **Sequence word (a seqlock).** `seq` is 0 while a record was never written, odd while a
//!   process writes it, and even once written; every write adds 2. A reader copies a record and
//!   keeps the copy only if `seq` was even, non-zero and unchanged around the copy. A writer that
//!   finds a record odd (another writer on it, or one killed while writing, which leaves it odd
//!   for good) takes the next number instead.
//! - **Top consumers** are found by a scan of the slots up to the highest slot ever claimed, once
//!   per new record (not per repeat).

use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{fence, AtomicU64};

use crate::budget::RefusalCause;
use crate::layout::{RefusalRecord, SegmentView, STATEMENT_BYTES};
use crate::ProcessKind;

/// The function a refused request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Call {
    /// Not known (a record written by another build).
    Other = 0,
    /// `malloc`.
    Malloc = 1,
    /// `calloc`.
    Calloc = 2,
    /// `realloc` or `reallocarray`.
    Realloc = 3,
    /// `posix_memalign`.
    PosixMemalign = 4,
    /// `aligned_alloc`.
    AlignedAlloc = 5,
    /// `memalign`.
    Memalign = 6,
    /// `valloc`.
    Valloc = 7,
    /// `pvalloc`.
    Pvalloc = 8,
    /// `ftruncate` of PostgreSQL dynamic shared memory.
    Ftruncate = 9,
    /// `posix_fallocate` of PostgreSQL dynamic shared memory.
    PosixFallocate = 10,
}

impl Call {
    const ALL: [Call; 11] = [
        Call::Other,
        Call::Malloc,
        Call::Calloc,
        Call::Realloc,
        Call::PosixMemalign,
        Call::AlignedAlloc,
        Call::Memalign,
        Call::Valloc,
        Call::Pvalloc,
        Call::Ftruncate,
        Call::PosixFallocate,
    ];

    /// The call of that C name (`Other` for any other name).
    pub fn from_name(name: &str) -> Call {
        Call::ALL
            .into_iter()
            .find(|call| call.name() == name)
            .unwrap_or(Call::Other)
    }

    /// Decodes a record's value; unknown values read as `Other`.
    pub fn from_raw(raw: u32) -> Call {
        Call::ALL.get(raw as usize).copied().unwrap_or(Call::Other)
    }

    /// The C function's name.
    pub fn name(self) -> &'static str {
        match self {
            Call::Other => "other",
            Call::Malloc => "malloc",
            Call::Calloc => "calloc",
            Call::Realloc => "realloc",
            Call::PosixMemalign => "posix_memalign",
            Call::AlignedAlloc => "aligned_alloc",
            Call::Memalign => "memalign",
            Call::Valloc => "valloc",
            Call::Pvalloc => "pvalloc",
            Call::Ftruncate => "ftruncate",
            Call::PosixFallocate => "posix_fallocate",
        }
    }
}

/// What the guard knows about one refusal.
#[derive(Debug, Clone, Copy)]
pub struct Refusal<'s> {
    /// Unix time in nanoseconds.
    pub unix_ns: u64,
    /// The refused process.
    pub pid: i32,
    /// Its kind.
    pub kind: ProcessKind,
    /// Why.
    pub cause: RefusalCause,
    /// The refused function.
    pub call: Call,
    /// PostgreSQL's database OID (0: none).
    pub database_oid: u32,
    /// The session user's OID (0: none).
    pub role_oid: u32,
    /// PostgreSQL's query id (0: none).
    pub query_id: u64,
    /// The statement's first bytes: at most [`STATEMENT_BYTES`] are kept; one more marks it cut.
    pub statement: &'s [u8],
    /// Bytes asked for.
    pub request_bytes: u64,
    /// The process's own bytes.
    pub process_bytes: u64,
    /// The process's budget (0: none).
    pub budget_bytes: u64,
    /// The domain's total.
    pub total_bytes: i64,
    /// The domain's limit.
    pub limit_bytes: u64,
}

impl Refusal<'_> {
    /// What makes two refusals "the same statement": text, query id and cause.
    fn key(&self) -> u64 {
        fnv1a(self.kept_statement())
            ^ self.query_id.rotate_left(17)
            ^ (self.cause as u64).rotate_left(47)
    }

    fn kept_statement(&self) -> &[u8] {
        &self.statement[..self.statement.len().min(STATEMENT_BYTES)]
    }
}

/// FNV-1a of `bytes`; 0 for none.
fn fnv1a(bytes: &[u8]) -> u64 {
    if bytes.is_empty() {
        return 0;
    }
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The record a process wrote last, so that it can count repeats into it. One per process (a
/// forked child starts with [`LastRecord::forget`]), written by one thread at a time: PostgreSQL
/// is refused only on its main thread. (In another program refused on several threads at once,
/// with `OOM_GUARD_REFUSE=all`, a repeat may be counted into another thread's record.)
pub struct LastRecord {
    index: AtomicU64,
    /// The record's `seq` after our write; 0: none.
    seq: AtomicU64,
    key: AtomicU64,
}

impl LastRecord {
    /// No record yet.
    pub const fn new() -> LastRecord {
        LastRecord {
            index: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            key: AtomicU64::new(0),
        }
    }

    /// Forgets the record (in a forked child: the parent's record is not the child's).
    pub fn forget(&self) {
        self.seq.store(0, Relaxed);
    }
}

impl Default for LastRecord {
    fn default() -> LastRecord {
        LastRecord::new()
    }
}

/// Records `refusal` in `view`'s ring: counted into the process's last record if it is the
/// same statement and that record is still ours, else as a new record. Also sets the domain's
/// latest refusal time. Returns whether a record was written (false without a ring, or when
/// every record tried was being written by another process).
pub fn record(view: &SegmentView<'_>, last: &LastRecord, refusal: &Refusal<'_>) -> bool {
    let stats = &view.header.stats;
    stats
        .last_refusal_unix_ns
        .fetch_max(refusal.unix_ns, Relaxed);
    if view.records.is_empty() {
        return false;
    }
    let key = refusal.key();
    let last_seq = last.seq.load(Relaxed);
    if last_seq != 0 && last.key.load(Relaxed) == key {
        let index = last.index.load(Relaxed) as usize;
        if let Some(record) = view.records.get(index) {
            if record
                .seq
                .compare_exchange(last_seq, last_seq + 1, Acquire, Relaxed)
                .is_ok()
            {
                fence(Release);
                record.count.fetch_add(1, Relaxed);
                write_latest(record, refusal);
                record.seq.store(last_seq + 2, Release);
                last.seq.store(last_seq + 2, Relaxed);
                return true;
            }
        }
    }
    let top = top_consumers(view);
    // A few numbers at most: each one is skipped only while another process writes that record.
    for _ in 0..4 {
        let number = stats.refusal_records.fetch_add(1, Relaxed).wrapping_add(1);
        let index = ((number - 1) % view.records.len() as u64) as usize;
        let record = &view.records[index];
        let seq = record.seq.load(Relaxed);
        if seq % 2 == 1
            || record
                .seq
                .compare_exchange(seq, seq + 1, Acquire, Relaxed)
                .is_err()
        {
            continue;
        }
        fence(Release);
        write_new(record, number, refusal, &top);
        record.seq.store(seq + 2, Release);
        last.index.store(index as u64, Relaxed);
        last.key.store(key, Relaxed);
        last.seq.store(seq + 2, Relaxed);
        return true;
    }
    false
}

/// The fields a repeat updates.
fn write_latest(record: &RefusalRecord, refusal: &Refusal<'_>) {
    record.last_unix_ns.store(refusal.unix_ns, Relaxed);
    record.request_bytes.store(refusal.request_bytes, Relaxed);
    record.process_bytes.store(refusal.process_bytes, Relaxed);
    record.budget_bytes.store(refusal.budget_bytes, Relaxed);
    record.total_bytes.store(refusal.total_bytes, Relaxed);
    record.limit_bytes.store(refusal.limit_bytes, Relaxed);
}

fn write_new(record: &RefusalRecord, number: u64, refusal: &Refusal<'_>, top: &[Consumer; 3]) {
    record.number.store(number, Relaxed);
    record.first_unix_ns.store(refusal.unix_ns, Relaxed);
    record.count.store(1, Relaxed);
    write_latest(record, refusal);
    record.pid.store(refusal.pid, Relaxed);
    record.kind.store(refusal.kind as u32, Relaxed);
    record.cause.store(refusal.cause as u32, Relaxed);
    record.call.store(refusal.call as u32, Relaxed);
    record.database_oid.store(refusal.database_oid, Relaxed);
    record.role_oid.store(refusal.role_oid, Relaxed);
    record.query_id.store(refusal.query_id, Relaxed);
    let kept = refusal.kept_statement();
    for (cell, &byte) in record.statement.iter().zip(kept) {
        cell.store(byte, Relaxed);
    }
    record.statement_len.store(kept.len() as u32, Relaxed);
    let cut = refusal.statement.len() > STATEMENT_BYTES;
    record.flags.store(u32::from(cut), Relaxed);
    for (entry, consumer) in record.top.iter().zip(top) {
        entry.pid.store(consumer.pid, Relaxed);
        entry.kind.store(consumer.kind as u32, Relaxed);
        entry.bytes.store(consumer.bytes, Relaxed);
    }
}

/// One process and its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumer {
    /// Its pid (0: no entry).
    pub pid: i32,
    /// Its kind.
    pub kind: ProcessKind,
    /// Its bytes.
    pub bytes: i64,
}

impl Consumer {
    const NONE: Consumer = Consumer {
        pid: 0,
        kind: ProcessKind::Unclassified,
        bytes: 0,
    };
}

/// The three live slots with the most bytes, largest first (pid 0 where there are fewer).
pub fn top_consumers(view: &SegmentView<'_>) -> [Consumer; 3] {
    let scanned = (view.header.stats.slot_high_water.load(Relaxed) as usize).min(view.slots.len());
    let mut top = [Consumer::NONE; 3];
    for slot in &view.slots[..scanned] {
        let pid = slot.pid.load(Relaxed);
        if pid <= 0 {
            continue;
        }
        let candidate = Consumer {
            pid,
            kind: ProcessKind::from_raw(slot.kind.load(Relaxed)),
            bytes: slot.bytes.load(Relaxed),
        };
        if let Some(place) = top
            .iter()
            .position(|held| held.pid == 0 || candidate.bytes > held.bytes)
        {
            top.copy_within(place..2, place + 1);
            top[place] = candidate;
        }
    }
    top
}

/// A consistent copy of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordCopy {
    /// The record's number in the domain.
    pub number: u64,
    /// Unix time in nanoseconds of the first refusal.
    pub first_unix_ns: u64,
    /// Unix time in nanoseconds of the latest refusal.
    pub last_unix_ns: u64,
    /// Refusals counted.
    pub count: u64,
    /// The refused process.
    pub pid: i32,
    /// Its kind.
    pub kind: ProcessKind,
    /// Why.
    pub cause: RefusalCause,
    /// The refused function.
    pub call: Call,
    /// Database OID (0: none).
    pub database_oid: u32,
    /// Session user's OID (0: none).
    pub role_oid: u32,
    /// Query id (0: none).
    pub query_id: u64,
    /// Bytes asked for by the latest refused call.
    pub request_bytes: u64,
    /// The process's bytes at the latest refusal.
    pub process_bytes: u64,
    /// Its budget (0: none).
    pub budget_bytes: u64,
    /// The domain's total at the latest refusal.
    pub total_bytes: i64,
    /// The domain's limit at the latest refusal.
    pub limit_bytes: u64,
    /// The largest processes at the first refusal.
    pub top: [Consumer; 3],
    statement: [u8; STATEMENT_BYTES],
    statement_len: usize,
    /// The statement was longer than what is kept.
    pub statement_cut: bool,
}

impl RecordCopy {
    /// The statement's first bytes as recorded (possibly cut inside a UTF-8 sequence).
    pub fn statement(&self) -> &[u8] {
        &self.statement[..self.statement_len]
    }
}

/// Copies record `record` if it holds a complete, stable record (see the module documentation).
pub fn read(record: &RefusalRecord) -> Option<RecordCopy> {
    for _ in 0..8 {
        let before = record.seq.load(Acquire);
        if before == 0 {
            return None;
        }
        if before % 2 == 1 {
            core::hint::spin_loop();
            continue;
        }
        let copy = copy(record);
        fence(Acquire);
        if record.seq.load(Relaxed) == before {
            return Some(copy);
        }
    }
    None
}

fn copy(record: &RefusalRecord) -> RecordCopy {
    let mut statement = [0u8; STATEMENT_BYTES];
    let statement_len = (record.statement_len.load(Relaxed) as usize).min(STATEMENT_BYTES);
    for (byte, cell) in statement.iter_mut().zip(&record.statement[..statement_len]) {
        *byte = cell.load(Relaxed);
    }
    let mut top = [Consumer::NONE; 3];
    for (consumer, entry) in top.iter_mut().zip(&record.top) {
        *consumer = Consumer {
            pid: entry.pid.load(Relaxed),
            kind: ProcessKind::from_raw(entry.kind.load(Relaxed)),
            bytes: entry.bytes.load(Relaxed),
        };
    }
    RecordCopy {
        number: record.number.load(Relaxed),
        first_unix_ns: record.first_unix_ns.load(Relaxed),
        last_unix_ns: record.last_unix_ns.load(Relaxed),
        count: record.count.load(Relaxed),
        pid: record.pid.load(Relaxed),
        kind: ProcessKind::from_raw(record.kind.load(Relaxed)),
        cause: RefusalCause::from_raw(record.cause.load(Relaxed)),
        call: Call::from_raw(record.call.load(Relaxed)),
        database_oid: record.database_oid.load(Relaxed),
        role_oid: record.role_oid.load(Relaxed),
        query_id: record.query_id.load(Relaxed),
        request_bytes: record.request_bytes.load(Relaxed),
        process_bytes: record.process_bytes.load(Relaxed),
        budget_bytes: record.budget_bytes.load(Relaxed),
        total_bytes: record.total_bytes.load(Relaxed),
        limit_bytes: record.limit_bytes.load(Relaxed),
        top,
        statement,
        statement_len,
        statement_cut: record.flags.load(Relaxed) & 1 != 0,
    }
}

/// Every complete record of `view`'s ring, in no particular order (sort by `number`).
pub fn read_all<'a>(view: &SegmentView<'a>) -> impl Iterator<Item = RecordCopy> + 'a {
    view.records.iter().filter_map(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::tests::{as_bytes, segment_buffer_with};
    use crate::layout::{initialise, SegmentView};
    use crate::pool::Pool;

    fn refusal(statement: &[u8], unix_ns: u64) -> Refusal<'_> {
        Refusal {
            unix_ns,
            pid: 4242,
            kind: ProcessKind::ClientBackend,
            cause: RefusalCause::DomainLimit,
            call: Call::Malloc,
            database_oid: 5,
            role_oid: 10,
            query_id: 77,
            statement,
            request_bytes: 1 << 20,
            process_bytes: 3 << 20,
            budget_bytes: 0,
            total_bytes: 9 << 20,
            limit_bytes: 10 << 20,
        }
    }

    fn with_ring(records: u32, test: impl FnOnce(SegmentView<'_>)) {
        let mut buffer = segment_buffer_with(8, records);
        let bytes = as_bytes(&mut buffer);
        // SAFETY: the buffer is zeroed, aligned and large enough.
        unsafe { initialise(bytes.as_mut_ptr(), 8, records, 1) };
        test(SegmentView::new(bytes).expect("valid"));
    }

    fn sorted(view: &SegmentView<'_>) -> std::vec::Vec<RecordCopy> {
        let mut records: std::vec::Vec<_> = read_all(view).collect();
        records.sort_by_key(|record| record.number);
        records
    }

    #[test]
    fn a_refusal_reads_back_whole() {
        with_ring(4, |view| {
            let pool = Pool::new(view);
            for (pid, bytes) in [(11, 5_i64), (12, 50), (13, 7), (14, 30)] {
                let slot = pool.claim(pid, 1, false);
                slot.bytes.store(bytes, Relaxed);
            }
            let last = LastRecord::new();
            assert!(record(&view, &last, &refusal(b"SELECT 1", 100)));
            let records = sorted(&view);
            assert_eq!(records.len(), 1);
            let copy = records[0];
            assert_eq!(copy.number, 1);
            assert_eq!(copy.statement(), b"SELECT 1");
            assert!(!copy.statement_cut);
            assert_eq!((copy.pid, copy.database_oid, copy.role_oid), (4242, 5, 10));
            assert_eq!((copy.query_id, copy.count), (77, 1));
            assert_eq!(copy.call, Call::Malloc);
            assert_eq!(copy.cause, RefusalCause::DomainLimit);
            let top: std::vec::Vec<_> = copy.top.iter().map(|c| (c.pid, c.bytes)).collect();
            assert_eq!(top, [(12, 50), (14, 30), (13, 7)]);
            assert_eq!(view.header.stats.last_refusal_unix_ns.load(Relaxed), 100);
        });
    }

    #[test]
    fn a_storm_of_one_statement_is_one_record() {
        with_ring(4, |view| {
            let last = LastRecord::new();
            record(&view, &last, &refusal(b"SELECT a", 1));
            record(&view, &last, &refusal(b"SELECT b", 2));
            for time in 3..5003 {
                record(&view, &last, &refusal(b"SELECT storm", time));
            }
            let records = sorted(&view);
            let statements: std::vec::Vec<_> = records.iter().map(|r| r.statement()).collect();
            assert_eq!(
                statements,
                [&b"SELECT a"[..], &b"SELECT b"[..], &b"SELECT storm"[..]]
            );
            assert_eq!(records[2].count, 5000);
            assert_eq!(
                (records[2].first_unix_ns, records[2].last_unix_ns),
                (3, 5002)
            );
        });
    }

    #[test]
    fn the_ring_keeps_the_latest_and_a_reused_record_is_not_counted_into() {
        with_ring(2, |view| {
            let mine = LastRecord::new();
            let other = LastRecord::new();
            record(&view, &mine, &refusal(b"mine", 1));
            record(&view, &other, &refusal(b"x", 2));
            record(&view, &other, &refusal(b"y", 3)); // reuses record 1's place
            record(&view, &mine, &refusal(b"mine", 4)); // not into "y": a new record
            let records = sorted(&view);
            let kept: std::vec::Vec<_> = records
                .iter()
                .map(|r| (r.number, r.statement(), r.count))
                .collect();
            assert_eq!(kept, [(3, &b"y"[..], 1), (4, &b"mine"[..], 1)]);
        });
    }

    #[test]
    fn long_statements_are_cut_and_marked() {
        with_ring(1, |view| {
            let long = [b'x'; STATEMENT_BYTES + 1];
            record(&view, &LastRecord::new(), &refusal(&long, 1));
            let copy = sorted(&view)[0];
            assert_eq!(copy.statement().len(), STATEMENT_BYTES);
            assert!(copy.statement_cut);
        });
    }

    #[test]
    fn without_a_ring_only_the_time_is_kept() {
        with_ring(0, |view| {
            assert!(!record(&view, &LastRecord::new(), &refusal(b"s", 9)));
            assert_eq!(read_all(&view).count(), 0);
            assert_eq!(view.header.stats.last_refusal_unix_ns.load(Relaxed), 9);
        });
    }

    #[test]
    fn records_being_written_are_skipped_by_readers_and_writers() {
        with_ring(2, |view| {
            record(&view, &LastRecord::new(), &refusal(b"a", 1));
            // A writer killed while writing record 2's place leaves it odd.
            view.records[1].seq.store(1, Relaxed);
            assert_eq!(read(&view.records[1]), None);
            assert!(record(&view, &LastRecord::new(), &refusal(b"b", 2)));
            let kept: std::vec::Vec<_> = sorted(&view).iter().map(|r| r.number).collect();
            assert_eq!(
                kept,
                [3],
                "number 2 skipped the odd record, 3 reused record 1's"
            );
        });
    }

    #[test]
    fn readers_never_see_a_half_written_record() {
        // Each writer's refusals carry one value in every numeric field and the statement:
        // a copy that mixes two writes shows two values.
        with_ring(3, |view| {
            let stop = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|scope| {
                let reader = scope.spawn(|| {
                    let mut seen = 0;
                    while !stop.load(Relaxed) || seen == 0 {
                        for copy in read_all(&view) {
                            let value = copy.query_id;
                            assert_eq!(copy.request_bytes, value);
                            assert_eq!(copy.total_bytes, value as i64);
                            assert_eq!(copy.last_unix_ns, value);
                            assert_eq!(copy.statement(), value.to_le_bytes());
                            seen += 1;
                        }
                    }
                    seen
                });
                let writers: std::vec::Vec<_> = (0..3u64)
                    .map(|writer| {
                        let view = &view;
                        scope.spawn(move || {
                            let last = LastRecord::new();
                            for round in 0..200_000u64 {
                                let value = writer * 1_000_000 + round / 3;
                                let text = value.to_le_bytes();
                                let mut one = refusal(&text, value);
                                one.query_id = value;
                                one.request_bytes = value;
                                one.total_bytes = value as i64;
                                record(view, &last, &one);
                            }
                        })
                    })
                    .collect();
                for writer in writers {
                    writer.join().expect("writer");
                }
                stop.store(true, Relaxed);
                assert!(reader.join().expect("reader") > 0);
            });
        });
    }

    #[test]
    fn call_names_round_trip() {
        for call in Call::ALL {
            assert_eq!(Call::from_name(call.name()), call);
            assert_eq!(Call::from_raw(call as u32), call);
        }
        assert_eq!(Call::from_raw(999), Call::Other);
    }
}
