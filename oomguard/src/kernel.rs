//! What the kernel says: finding the domain's memory cgroup once, deriving the limit from it
//! (cgroup limit − PostgreSQL shared memory − reserve), and reading the cgroup's real usage (and
//! the limit, which an in-place resize changes) now and then, so the guard can tighten when the
//! kernel sees less headroom than the guard's own count suggests.
//!
//! Cost: discovery (`/proc/self/cgroup`, `/proc/self/mountinfo`, the limits up the tree, about
//! 8 KiB of stack) runs once per domain, in the first guarded process. Readings (`memory.current`
//! or `usage_in_bytes`, `memory.stat`, the event counters: a few dozen system calls, tens of
//! microseconds) run at most once per [`READ_INTERVAL_NS`] for the whole domain, and only inside
//! a slow path (a batch reservation), never on the malloc fast path.

use core::fmt::Write;
use core::sync::atomic::Ordering::Relaxed;

use oomguard_core::cgroup::{self, own_cgroup, v1, v2, CgroupError, Level, LimitSource};
use oomguard_core::layout::{CgroupState, Header, SharedMemorySource, CGROUP_DIR_CAPACITY};
use oomguard_core::limit::{apply_derived, record_reserve, set_cgroup_limit};

use crate::report::Line;
use crate::settings::Settings;
use crate::sysfs::{Root, SysFs};
use oomguard_core::units::Bytes;

/// Minimum time between two readings of the cgroup's numbers, domain-wide.
pub const READ_INTERVAL_NS: u64 = 100_000_000;

/// Where `/proc` and the cgroup files are read from (`OOM_GUARD_CGROUP_ROOT`).
static ROOT: Root = Root::new();

/// At the start of a process image: keeps the cgroup root, and if this is the first process of
/// the domain, finds the cgroup and records the limit's inputs. Says once on stderr why, if it
/// cannot.
pub fn discover(header: &Header, settings: &Settings) {
    // SAFETY: called while the guard starts, before anything reads the root.
    if !unsafe { ROOT.set(settings.cgroup_root) } {
        let mut line = Line::new();
        let _ = write!(
            line,
            "OOM_GUARD_CGROUP_ROOT is longer than 256 bytes; ignored"
        );
        line.emit();
    }
    let inputs = &header.limit_inputs;
    if let Some(bytes) = settings.shared_memory {
        inputs.shared_memory_bytes.store(bytes, Relaxed);
        inputs
            .shared_memory_source
            .store(SharedMemorySource::Environment as u32, Relaxed);
        apply_derived(header);
    }
    if inputs
        .cgroup_state
        .compare_exchange(
            CgroupState::Unknown as u32,
            CgroupState::Discovering as u32,
            Relaxed,
            Relaxed,
        )
        .is_err()
    {
        return; // another process found it (or is finding it) for the whole domain
    }
    let fs = SysFs::new(&ROOT);
    let found = own_cgroup(&fs).and_then(|cgroup| {
        let limit = cgroup.effective_limit(&fs)?;
        Ok((cgroup, limit))
    });
    let (cgroup, limit) = match found {
        Ok(found) => found,
        Err(error) => {
            inputs
                .cgroup_state
                .store(CgroupState::Failed as u32, Relaxed);
            let mut line = Line::new();
            let _ = write!(
                line,
                "cannot read this process's memory cgroup ({error}): no derived limit and no \
                 kernel readings; set OOM_GUARD_LIMIT"
            );
            line.emit();
            return;
        }
    };
    let (origin, levels_up) = match limit.source {
        LimitSource::Cgroup { up } => (0, u32::from(up)),
        LimitSource::Hierarchical => (1, 0),
        LimitSource::MemTotal => (2, 0),
    };
    inputs.mem_total_bytes.store(limit.mem_total, Relaxed);
    inputs.cgroup_limit_origin.store(origin, Relaxed);
    inputs.cgroup_levels_up.store(levels_up, Relaxed);
    record_reserve(header, settings.reserve);
    let state = match cgroup.version() {
        cgroup::Version::V1 => CgroupState::V1,
        cgroup::Version::V2 => CgroupState::V2,
    };
    if !inputs.set_cgroup_dir(cgroup.dir().as_bytes()) {
        inputs
            .cgroup_state
            .store(CgroupState::Failed as u32, Relaxed);
        let mut line = Line::new();
        let _ = write!(
            line,
            "the cgroup path is longer than {CGROUP_DIR_CAPACITY} bytes; no kernel readings"
        );
        line.emit();
    } else {
        inputs.cgroup_state.store(state as u32, Relaxed);
    }
    if let Some(derived) = set_cgroup_limit(header, limit.bytes) {
        report_derived(header, derived);
    }
}

/// Says on stderr, once, that the inputs leave no room for a limit.
pub fn report_derived(header: &Header, derived: u64) {
    if derived != 0 {
        return;
    }
    let inputs = &header.limit_inputs;
    let mut line = Line::new();
    let _ = write!(
        line,
        "the cgroup limit {} minus shared memory {} minus reserve {} leaves no room: accounting \
         only; set OOM_GUARD_LIMIT or a smaller OOM_GUARD_RESERVE",
        Bytes(inputs.cgroup_limit_bytes.load(Relaxed) as i64),
        Bytes(inputs.shared_memory_bytes.load(Relaxed) as i64),
        Bytes(inputs.reserve_bytes.load(Relaxed) as i64),
    );
    line.emit();
}

/// Reads the cgroup's numbers into the header if no process did for [`READ_INTERVAL_NS`], and
/// sets or clears `tight`: tight while the kernel's unreclaimable memory (anon + shmem) is within
/// the reserve of the cgroup limit. `now_ns` is read only when a cgroup is known.
///
/// The gate is inlined into every reservation; the reading itself (a stack buffer for the path,
/// file reads) is out of line, so a reservation that reads nothing pays for neither.
#[inline(always)]
pub fn refresh(header: &Header, now_ns: impl FnOnce() -> u64) {
    let version = match CgroupState::from_raw(header.limit_inputs.cgroup_state.load(Relaxed)) {
        CgroupState::V1 => cgroup::Version::V1,
        CgroupState::V2 => cgroup::Version::V2,
        _ => return,
    };
    let snapshot = &header.cgroup;
    let now_ns = now_ns();
    let next = snapshot.next_read_ns.load(Relaxed);
    if now_ns < next
        || snapshot
            .next_read_ns
            .compare_exchange(next, now_ns + READ_INTERVAL_NS, Relaxed, Relaxed)
            .is_err()
    {
        return;
    }
    read_into(header, version);
}

/// The reading [`refresh`] found due.
#[cold]
#[inline(never)]
fn read_into(header: &Header, version: cgroup::Version) {
    let inputs = &header.limit_inputs;
    let snapshot = &header.cgroup;
    let mut dir = [0u8; CGROUP_DIR_CAPACITY];
    let len = inputs.cgroup_dir(&mut dir);
    let level = Level {
        dir: &dir[..len],
        up: 0,
    };
    let fs = SysFs::new(&ROOT);
    match read(&fs, version, level) {
        Ok(reading) => {
            snapshot.usage_bytes.store(reading.usage, Relaxed);
            snapshot.anon_bytes.store(reading.anon, Relaxed);
            snapshot.file_bytes.store(reading.file, Relaxed);
            snapshot.shmem_bytes.store(reading.shmem, Relaxed);
            snapshot.max_events.store(reading.max_events, Relaxed);
            snapshot.oom_kill_events.store(reading.oom_kills, Relaxed);
            follow_limit(header, &fs, version, &dir[..len]);
            let cgroup_limit = inputs.cgroup_limit_bytes.load(Relaxed);
            snapshot.limit_bytes.store(cgroup_limit, Relaxed);
            let headroom = cgroup_limit.saturating_sub(inputs.reserve_bytes.load(Relaxed));
            let tight = reading.anon.saturating_add(reading.shmem) > headroom;
            snapshot.tight.store(u32::from(tight), Relaxed);
            snapshot.read_at_unix_seconds.store(unix_seconds(), Relaxed);
        }
        Err(_) => {
            snapshot.read_errors.fetch_add(1, Relaxed);
        }
    }
}

/// Follows a change of the limit that applies (an in-place pod resize rewrites `memory.max`):
/// re-reads the cgroup level it came from and, if it changed, re-derives reserve and limit. A
/// smaller limit appearing at another level is not seen until the domain starts again.
fn follow_limit(header: &Header, fs: &SysFs<'_>, version: cgroup::Version, own_dir: &[u8]) {
    let inputs = &header.limit_inputs;
    if inputs.cgroup_limit_origin.load(Relaxed) != 0 {
        return; // MemTotal or v1's hierarchical limit: nothing of ours to watch
    }
    let mut dir = own_dir;
    for _ in 0..inputs.cgroup_levels_up.load(Relaxed) {
        match dir.iter().rposition(|&b| b == b'/') {
            Some(slash) => dir = &dir[..slash],
            None => return,
        }
    }
    let level = Level { dir, up: 0 };
    let limit = match version {
        cgroup::Version::V2 => v2::read_max(fs, level),
        cgroup::Version::V1 => v1::read_limit_in_bytes(fs, level),
    };
    let Ok(Some(bytes)) = limit else {
        return;
    };
    let bytes = bytes.min(inputs.mem_total_bytes.load(Relaxed));
    if bytes == inputs.cgroup_limit_bytes.load(Relaxed) {
        return;
    }
    if let Some(derived) = set_cgroup_limit(header, bytes) {
        report_derived(header, derived);
    }
}

/// One reading of the cgroup.
struct Reading {
    usage: u64,
    anon: u64,
    file: u64,
    shmem: u64,
    max_events: u64,
    oom_kills: u64,
}

fn read(
    fs: &SysFs<'_>,
    version: cgroup::Version,
    level: Level<'_>,
) -> Result<Reading, CgroupError> {
    Ok(match version {
        cgroup::Version::V2 => {
            let stat = v2::read_stat(fs, level)?;
            let events = v2::read_events(fs, level)?;
            Reading {
                usage: v2::read_current(fs, level)?,
                anon: stat.anon,
                file: stat.file,
                shmem: stat.shmem,
                max_events: events.max,
                oom_kills: events.oom_kill,
            }
        }
        cgroup::Version::V1 => {
            let stat = v1::read_stat(fs, level)?.summary();
            Reading {
                usage: v1::read_usage_in_bytes(fs, level)?,
                anon: stat.anon,
                file: stat.file,
                shmem: stat.shmem.unwrap_or(0),
                max_events: v1::read_failcnt(fs, level)?,
                oom_kills: v1::read_oom_control(fs, level)?.oom_kill.unwrap_or(0),
            }
        }
    })
}

fn unix_seconds() -> u64 {
    // SAFETY: an all-zero timespec is valid; CLOCK_REALTIME_COARSE is served by the vDSO.
    let mut now: libc::timespec = unsafe { core::mem::zeroed() };
    // SAFETY: `now` is writable.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) };
    now.tv_sec as u64
}
