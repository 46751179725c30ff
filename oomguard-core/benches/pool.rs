//! Criterion benchmarks of the accounting core: the operations the preload library runs at a batch
//! boundary (`try_reserve`, `release`), at a refusal (`try_reserve` at the limit), for dynamic
//! shared memory (`reserve_shared`), at process start and exit (`claim` + `vacate`) and before a
//! refusal or by the CLI (`reap_dead` over every slot).
//!
//! Everything runs on a segment in an ordinary heap buffer (zeroed, 128-byte aligned, initialised
//! with [`initialise`]), the way the unit tests of `layout.rs` build one, with the production
//! geometry of [`SLOT_COUNT`] slots. Single-threaded: the uncontended cost of each operation.
//!
//! `cargo bench -p oomguard-core` runs them; `cargo bench -p oomguard-core -- reap` a subset.

use std::hint::black_box;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use oomguard_core::layout::{initialise, segment_size, Line, SegmentView, SLOT_COUNT};
use oomguard_core::pool::Pool;

/// What a thread reserves at a batch boundary (`oomguard/src/guard.rs`: `BATCH`, 128 KiB).
const BATCH: u64 = 128 << 10;
/// A generous limit, as in the whole-process benchmarks.
const LIMIT: u64 = 8 << 30;
/// Reservations made before their bytes are handed back (outside the timed part).
const CHUNK: u64 = 1024;
/// Slots held by other processes while claiming (a PostgreSQL instance with some backends).
const OTHER_PROCESSES: i32 = 64;

/// A zeroed, 128-byte aligned, initialised segment of `slot_count` slots.
struct Segment {
    lines: Vec<Line<[u8; 128]>>,
}

impl Segment {
    fn new(slot_count: u32) -> Segment {
        let lines = segment_size(slot_count).div_ceil(128);
        let mut segment = Segment {
            lines: (0..lines).map(|_| Line([0u8; 128])).collect(),
        };
        // SAFETY: the buffer is zeroed, aligned to 128 (Line's alignment), at least
        // segment_size(slot_count) bytes long and not shared with anyone.
        unsafe { initialise(segment.lines.as_mut_ptr() as *mut u8, slot_count, 0, 1) };
        segment
    }

    fn pool(&self, limit: u64) -> Pool<'_> {
        // SAFETY: Line<[u8; 128]> is 128 plain bytes without padding; the slice borrows self.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.lines.as_ptr() as *const u8, self.lines.len() * 128)
        };
        let view = SegmentView::new(bytes).expect("an initialised segment validates");
        view.header.limit_bytes.store(limit, Relaxed);
        Pool::new(view)
    }
}

/// Times `op` run `iters` times, in chunks of [`CHUNK`] calls, running `before(n)` and `after(n)`
/// around each chunk of `n` calls outside the timed part (so reservations never pile up to the
/// limit, and releases return bytes that were reserved).
fn timed_in_chunks(
    iters: u64,
    mut before: impl FnMut(u64),
    mut op: impl FnMut(),
    mut after: impl FnMut(u64),
) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        before(n);
        let start = Instant::now();
        for _ in 0..n {
            op();
        }
        elapsed += start.elapsed();
        after(n);
        left -= n;
    }
    elapsed
}

fn pool_benches(c: &mut Criterion) {
    let segment = Segment::new(SLOT_COUNT);
    let pool = segment.pool(LIMIT);
    for pid in 1..=OTHER_PROCESSES {
        pool.claim(pid, pid as u64, false);
    }
    let me = OTHER_PROCESSES + 1;
    let slot = pool.claim(me, 1, false);

    let mut group = c.benchmark_group("pool");

    group.bench_function("try_reserve granted (batch boundary)", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(
                iters,
                |_| {},
                || assert!(pool.try_reserve(slot, black_box(BATCH))),
                |n| pool.release(slot, n * BATCH),
            )
        })
    });

    group.bench_function("release (batch boundary)", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(
                iters,
                |n| assert!(pool.try_reserve(slot, n * BATCH)),
                || pool.release(slot, black_box(BATCH)),
                |_| {},
            )
        })
    });

    group.bench_function("try_reserve + release pair", |b| {
        b.iter(|| {
            assert!(pool.try_reserve(slot, black_box(BATCH)));
            pool.release(slot, black_box(BATCH));
        })
    });

    group.bench_function("reserve_shared granted", |b| {
        b.iter_custom(|iters| {
            timed_in_chunks(
                iters,
                |_| {},
                || assert!(pool.reserve_shared(black_box(BATCH), false)),
                |n| pool.release_shared(n * BATCH),
            )
        })
    });

    group.bench_function("claim + vacate (forked child)", |b| {
        b.iter(|| {
            let mine = pool.claim(black_box(me + 1), 2, false);
            pool.vacate(mine, me + 1);
        })
    });

    group.bench_function("claim + vacate (new image: scans for its pid)", |b| {
        b.iter(|| {
            let mine = pool.claim(black_box(me + 1), 2, true);
            pool.vacate(mine, me + 1);
        })
    });

    group.bench_function("reap_dead, 4096 slots, 65 live", |b| {
        b.iter(|| {
            let reaped = pool.reap_dead(|pid, _| black_box(pid) > 0);
            assert_eq!(reaped, 0);
        })
    });
    assert_eq!(pool.header().total.load(Relaxed), 0, "benches left bytes");

    // Refusal: a second segment whose total sits exactly at the limit.
    let full = Segment::new(SLOT_COUNT);
    let full_pool = full.pool(LIMIT);
    let full_slot = full_pool.claim(1, 1, false);
    assert!(full_pool.try_reserve(full_slot, LIMIT));
    group.bench_function("try_reserve refused at the limit", |b| {
        b.iter(|| assert!(!full_pool.try_reserve(full_slot, black_box(BATCH))))
    });

    // Every slot taken by a live process: the longest scan reap_dead makes.
    let crowded = Segment::new(SLOT_COUNT);
    let crowded_pool = crowded.pool(LIMIT);
    for pid in 1..=SLOT_COUNT as i32 {
        crowded_pool.claim(pid, pid as u64, false);
    }
    group.bench_function("reap_dead, 4096 slots, all live", |b| {
        b.iter(|| {
            let reaped = crowded_pool
                .reap_dead(|pid, claimed_at| black_box(pid) as u64 == black_box(claimed_at));
            assert_eq!(reaped, 0);
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = pool_benches
}
criterion_main!(benches);
