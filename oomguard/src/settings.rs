//! The guard's configuration, read once per process image from `OOM_GUARD_*` variables and the
//! configuration file (see `config_file`); a variable in the environment overrides the file.
//!
//! A malformed value is reported once on stderr, naming the variable and the accepted forms, and
//! the guard falls back to report mode: it never crashes the host process and never enforces a
//! value it could not read. In a setuid or setgid program (secure execution, where the
//! environment belongs to the user who started it) the environment is ignored: only the default
//! configuration file counts.

use core::ffi::{c_char, CStr};
use core::fmt::Write;

use oomguard_core::budget::{Budget, DEFAULT_FORMS};
use oomguard_core::config::{
    domain_is_valid, limit_is_auto, parse_refusal_records, parse_size, DOMAIN_FORMS, MODE_FORMS,
    REFUSAL_RECORDS_FORMS, REFUSE_FORMS,
};
use oomguard_core::layout::{ModeReason, DEFAULT_REFUSAL_RECORDS};
use oomguard_core::limit::Reserve;
use oomguard_core::{Mode, RefuseScope};

use crate::report::Line;

/// What the environment asks for.
pub struct Settings {
    /// `OOM_GUARD_MODE`, when given and valid.
    pub mode: Option<Mode>,
    /// `OOM_GUARD_LIMIT`, when given and valid.
    pub limit: Option<u64>,
    /// `OOM_GUARD_REFUSE` (default: every PostgreSQL process that runs a query or a job).
    pub scope: RefuseScope,
    /// A value could not be read: run in report mode.
    pub malformed: bool,
    /// Why, when `malformed`: a bad value, or the configuration file rejected.
    pub fallback_reason: ModeReason,
    /// `OOM_GUARD_DIR`: where segments live (default `/dev/shm`).
    pub dir: &'static CStr,
    /// `OOM_GUARD_DOMAIN`: the segment's name, when the default (per user and cgroup) won't do.
    pub domain: Option<&'static CStr>,
    /// `OOM_GUARD_RESERVE`, when given and valid (default: [`oomguard_core::limit::default_reserve`]).
    pub reserve: Option<Reserve>,
    /// `OOM_GUARD_BACKEND_LIMIT`, when given and valid: the budget of every refusable process
    /// whose `oomguard.backend_memory_limit` is not set.
    pub backend_limit: Option<Budget>,
    /// `OOM_GUARD_SHARED_MEMORY`, when given and valid (default: observed at run time).
    pub shared_memory: Option<u64>,
    /// `OOM_GUARD_CGROUP_ROOT`: where `/proc` and `/sys/fs/cgroup` are read from (default `/`;
    /// tests point it at fixture trees). Only valid during start-up: PostgreSQL later overwrites
    /// the environment's memory with its process titles, so keep a copy.
    pub cgroup_root: &'static CStr,
    /// `OOM_GUARD_TEST_INJECT` (environment only; tests): refuse about one in N refusable
    /// reservations at random, with this seed (see `inject`).
    pub inject: Option<(u64, u64)>,
    /// `OOM_GUARD_REFUSAL_RECORDS`: refusal records of a segment this process creates.
    pub refusal_records: u32,
}

const DEFAULT_DIR: &CStr = c"/dev/shm";
const DEFAULT_CGROUP_ROOT: &CStr = c"/";

/// The value of an environment variable, if set and the environment is ours to read.
/// `getenv` does not allocate.
fn env(name: &CStr) -> Option<&'static CStr> {
    if secure_execution() {
        return None;
    }
    // SAFETY: `name` is NUL-terminated; the environment outlives any use we make of the value
    // (read once at start-up, before the program could change it).
    let value: *const c_char = unsafe { libc::getenv(name.as_ptr()) };
    // SAFETY: a non-null getenv result is a NUL-terminated string.
    (!value.is_null()).then(|| unsafe { CStr::from_ptr(value) })
}

/// Whether this is a setuid/setgid program (`AT_SECURE`): its environment is not to be trusted.
fn secure_execution() -> bool {
    // SAFETY: getauxval has no preconditions.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// A setting: the environment's value, else the configuration file's.
fn var(name: &CStr) -> Option<&'static CStr> {
    env(name).or_else(|| crate::config_file::value(name.to_str().unwrap_or("")))
}

/// A setting's value as text; a value that is not UTF-8 reads as malformed text.
fn text(name: &CStr) -> Option<&'static str> {
    var(name).map(|value| value.to_str().unwrap_or("\u{fffd}"))
}

/// Loads the configuration file (`OOM_GUARD_CONFIG`, else the default path). Returns the
/// problem line to report, if the file exists but cannot be used.
fn load_config_file() -> Option<Line> {
    let explicit = env(c"OOM_GUARD_CONFIG").filter(|path| !path.is_empty());
    let path = explicit.unwrap_or(crate::config_file::DEFAULT_PATH);
    // SAFETY: called once, by the thread that starts the guard, before any setting is read.
    match unsafe { crate::config_file::load(path, explicit.is_some()) } {
        Ok(()) => None,
        Err(problem) => {
            let mut line = Line::new();
            let _ = write!(
                line,
                "the configuration file {} {problem}; its settings are ignored",
                path.to_str().unwrap_or("?")
            );
            Some(line)
        }
    }
}

impl Settings {
    /// Reads the environment, reporting each bad value on stderr.
    pub fn from_env() -> Settings {
        let config_problem = load_config_file();
        let mut settings = Settings {
            mode: None,
            limit: None,
            scope: RefuseScope::Jobs,
            malformed: false,
            fallback_reason: ModeReason::Chosen,
            dir: var(c"OOM_GUARD_DIR")
                .filter(|dir| !dir.is_empty())
                .unwrap_or(DEFAULT_DIR),
            domain: var(c"OOM_GUARD_DOMAIN").filter(|name| !name.is_empty()),
            reserve: None,
            backend_limit: None,
            shared_memory: None,
            cgroup_root: var(c"OOM_GUARD_CGROUP_ROOT")
                .filter(|root| !root.is_empty())
                .unwrap_or(DEFAULT_CGROUP_ROOT),
            inject: None,
            refusal_records: DEFAULT_REFUSAL_RECORDS,
        };
        if let Some(line) = config_problem {
            settings.fallback_reason = ModeReason::ConfigFileRejected;
            settings.fall_back(line);
        }
        if let Some(domain) = settings.domain {
            if !domain_is_valid(domain.to_bytes()) {
                settings.domain = None;
                let value = domain.to_str().unwrap_or("\u{fffd}");
                settings.complain("OOM_GUARD_DOMAIN", value, DOMAIN_FORMS);
            }
        }
        // Never from the configuration file: a test switch must not survive in a deployment.
        if let Some(value) = env(c"OOM_GUARD_TEST_INJECT").filter(|value| !value.is_empty()) {
            let value = value.to_str().unwrap_or("\u{fffd}");
            match crate::inject::parse(value) {
                Some(inject) => settings.inject = Some(inject),
                None => settings.complain(
                    "OOM_GUARD_TEST_INJECT",
                    value,
                    "N or N:SEED (refuse about one in N refusable reservations; tests only)",
                ),
            }
        }
        if let Some(value) = text(c"OOM_GUARD_MODE") {
            match Mode::parse(value) {
                Some(mode) => settings.mode = Some(mode),
                None => settings.complain("OOM_GUARD_MODE", value, MODE_FORMS),
            }
        }
        if let Some(value) = text(c"OOM_GUARD_LIMIT") {
            if !limit_is_auto(value) {
                match parse_size(value) {
                    Ok(bytes) => settings.limit = Some(bytes),
                    Err(error) => {
                        let mut line = Line::new();
                        let _ = write!(line, "OOM_GUARD_LIMIT={value:?} is not a size: {error}");
                        settings.fall_back(line);
                    }
                }
            }
        }
        if let Some(value) = text(c"OOM_GUARD_REFUSE") {
            match RefuseScope::parse(value) {
                Some(scope) => settings.scope = scope,
                None => settings.complain("OOM_GUARD_REFUSE", value, REFUSE_FORMS),
            }
        }
        if let Some(value) = text(c"OOM_GUARD_RESERVE") {
            match Reserve::parse(value) {
                Ok(reserve) => settings.reserve = Some(reserve),
                Err(error) => {
                    let mut line = Line::new();
                    let _ = write!(line, "OOM_GUARD_RESERVE={value:?} is not valid: {error}");
                    settings.fall_back(line);
                }
            }
        }
        if let Some(value) = text(c"OOM_GUARD_BACKEND_LIMIT") {
            match Budget::parse_default(value) {
                Ok(budget) => settings.backend_limit = budget,
                Err(error) => {
                    let mut line = Line::new();
                    let _ = write!(
                        line,
                        "OOM_GUARD_BACKEND_LIMIT={value:?} is not valid: {error}; accepted forms \
                         are {DEFAULT_FORMS}"
                    );
                    settings.fall_back(line);
                }
            }
        }
        if let Some(value) = text(c"OOM_GUARD_REFUSAL_RECORDS") {
            match parse_refusal_records(value) {
                Some(records) => settings.refusal_records = records,
                None => {
                    settings.complain("OOM_GUARD_REFUSAL_RECORDS", value, REFUSAL_RECORDS_FORMS)
                }
            }
        }
        if let Some(value) = text(c"OOM_GUARD_SHARED_MEMORY") {
            match parse_size(value) {
                Ok(bytes) => settings.shared_memory = Some(bytes),
                Err(error) => {
                    let mut line = Line::new();
                    let _ = write!(
                        line,
                        "OOM_GUARD_SHARED_MEMORY={value:?} is not a size: {error}"
                    );
                    settings.fall_back(line);
                }
            }
        }
        settings
    }

    fn complain(&mut self, name: &str, value: &str, forms: &str) {
        let mut line = Line::new();
        let _ = write!(
            line,
            "{name}={value:?} is not valid: accepted values are {forms}"
        );
        self.fall_back(line);
    }

    fn fall_back(&mut self, mut line: Line) {
        let _ = write!(
            line,
            "; running in report mode (nothing is refused) until it is fixed"
        );
        line.emit();
        self.malformed = true;
        if self.fallback_reason == ModeReason::Chosen {
            self.fallback_reason = ModeReason::MalformedSetting;
        }
    }

    /// The mode this process runs in: malformed settings force report mode; without an explicit
    /// mode, the guard decides once the domain's limit is known: enforce if there is one (given or
    /// derived), else report.
    pub fn effective_mode(&self) -> Option<Mode> {
        if self.malformed {
            if self.mode == Some(Mode::Off) {
                return Some(Mode::Off);
            }
            return Some(Mode::Report);
        }
        match (self.mode, self.limit) {
            (Some(mode), _) => Some(mode),
            (None, Some(_)) => Some(Mode::Enforce),
            (None, None) => None,
        }
    }
}
