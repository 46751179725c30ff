//! Per-process memory budgets: the value of PostgreSQL's `oomguard.backend_memory_limit`
//! setting and of `OOM_GUARD_BACKEND_LIMIT` (the default), and why a refusal happened.
//!
//! A budget bounds one process's own bytes (its slot), beside the container-wide limit that
//! bounds them all. Two grammars, because the two values live in two worlds:
//!
//! - `OOM_GUARD_BACKEND_LIMIT` is written next to the other `OOM_GUARD_*` values (a pod spec):
//!   the guard's sizes ([`crate::config::parse_size`]: `2Gi`, `2G` = 2·10^9, bytes) or a
//!   percentage of the domain limit (`25%`).
//! - `oomguard.backend_memory_limit` is written in PostgreSQL (`ALTER ROLE … SET`), so it also
//!   takes PostgreSQL's memory units — `B kB MB GB TB`, binary, case-sensitive as in PostgreSQL,
//!   a decimal fraction allowed (`1.5GB`, rounded down to a byte; PostgreSQL itself also takes
//!   exponents and hex, which are refused here) — besides the guard's forms and percentages.
//!   Budgets above 2^63 − 1 bytes are refused (the counters are signed).
//!   A bare number is refused there (except `0` and `-1`): PostgreSQL reads a bare memory
//!   number in the setting's own unit (kB for `work_mem`), the guard would read bytes, and a
//!   budget of 2048 bytes would fail every query. `0`, `-1`, `off` and `none` mean "no budget"
//!   (overriding the default); an empty value means "not set" (the default applies).

use core::fmt;

use crate::config::{parse_size, SizeError};

/// A budget as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// No budget (`0`, `-1`, `off`, `none`).
    Unlimited,
    /// A fixed number of bytes.
    Bytes(u64),
    /// Hundredths of a percent of the domain limit (`25%` is 2500, `0.5%` is 50).
    PercentOfLimit(u32),
}

/// The forms `oomguard.backend_memory_limit` accepts, quoted by its error line.
pub const SETTING_FORMS: &str = "a size with a PostgreSQL unit (512MB, 1.5GB, 2048kB) or the \
guard's (512Mi, 2Gi, 2G = 2*10^9), a percentage of the container-wide limit (25%), or 0/-1/off \
for no budget";

/// The forms `OOM_GUARD_BACKEND_LIMIT` accepts, quoted by its error.
pub const DEFAULT_FORMS: &str = "a size (512Mi, 2Gi, 2G = 2*10^9, 1073741824), a percentage of \
the container-wide limit (25%), or off";

/// Why a budget could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetError {
    /// Not a size.
    Size(SizeError),
    /// A percentage that is not a number above 0 and at most 100 with at most two decimals.
    Percent,
    /// A bare number in the PostgreSQL setting.
    NoUnit,
    /// A malformed number before a PostgreSQL unit (or a value too long to be a size).
    BadPostgresSize,
}

impl BudgetError {
    /// Why, without the accepted forms.
    pub fn reason(&self) -> &'static str {
        match self {
            BudgetError::Size(error) => error.reason(),
            BudgetError::Percent => {
                "a percentage must be above 0% and at most 100%, with at most two decimals"
            }
            BudgetError::NoUnit => {
                "a bare number has no unit here (PostgreSQL would read kB, the guard bytes): \
                 write 512MB or 2GB"
            }
            BudgetError::BadPostgresSize => "it is not a number followed by a unit (512MB, 1.5GB)",
        }
    }
}

impl fmt::Display for BudgetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl Budget {
    /// Parses `OOM_GUARD_BACKEND_LIMIT`: a guard size, a percentage, or `off`. `Ok(None)`:
    /// empty, i.e. not set (as an empty `OOM_GUARD_LIMIT` asks for the default; a template's
    /// `value: ""` must not switch a process to report mode).
    pub fn parse_default(text: &str) -> Result<Option<Budget>, BudgetError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if let Some(budget) = unlimited_word(text) {
            return Ok(Some(budget));
        }
        if let Some(number) = text.strip_suffix('%') {
            return parse_percent(number).map(Some);
        }
        parse_size(text)
            .map_err(BudgetError::Size)
            .and_then(within_range)
            .map(Some)
    }

    /// Parses `oomguard.backend_memory_limit`. `Ok(None)`: empty, i.e. not set.
    pub fn parse_setting(text: &str) -> Result<Option<Budget>, BudgetError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if let Some(budget) = unlimited_word(text) {
            return Ok(Some(budget));
        }
        if let Some(number) = text.strip_suffix('%') {
            return parse_percent(number).map(Some);
        }
        if let Some(bytes) = parse_postgres_size(text)? {
            return within_range(bytes).map(Some);
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BudgetError::NoUnit);
        }
        parse_size(text)
            .map_err(BudgetError::Size)
            .and_then(within_range)
            .map(Some)
    }

    /// The budget in bytes against a domain limit of `limit` (0: none), or `None` for no
    /// budget (unlimited, or a percentage without a limit to take it of).
    pub fn bytes(self, limit: u64) -> Option<u64> {
        match self {
            Budget::Unlimited => None,
            Budget::Bytes(bytes) => Some(bytes),
            Budget::PercentOfLimit(_) if limit == 0 => None,
            Budget::PercentOfLimit(hundredths) => {
                Some((u128::from(limit) * u128::from(hundredths) / 10_000).min(MAX_BYTES) as u64)
            }
        }
    }
}

/// A budget setting packed into one `u64`, so that the preload library can keep
/// `OOM_GUARD_BACKEND_LIMIT` in a single atomic word: 0 for none, else a kind tag in the top byte
/// above the value (bytes, clamped to [`BudgetWord::VALUE_MASK`]; hundredths of a percent).
/// [`BudgetWord::decode`] reads any word, including ones no encoder wrote, without panicking.
pub struct BudgetWord;

impl BudgetWord {
    /// The word of "no budget given".
    pub const NONE: u64 = 0;
    const UNLIMITED: u64 = 1 << 56;
    const BYTES: u64 = 2 << 56;
    const PERCENT: u64 = 3 << 56;
    /// The bits that carry a value.
    pub const VALUE_MASK: u64 = (1 << 56) - 1;

    /// Packs `budget` (bytes above [`BudgetWord::VALUE_MASK`] are clamped to it; budgets are at
    /// most `i64::MAX` when parsed, far below).
    pub fn encode(budget: Option<Budget>) -> u64 {
        match budget {
            None => Self::NONE,
            Some(Budget::Unlimited) => Self::UNLIMITED,
            Some(Budget::Bytes(bytes)) => Self::BYTES | bytes.min(Self::VALUE_MASK),
            Some(Budget::PercentOfLimit(hundredths)) => {
                Self::PERCENT | (u64::from(hundredths) & Self::VALUE_MASK)
            }
        }
    }

    /// Unpacks a word; an unknown tag reads as no budget.
    pub fn decode(word: u64) -> Option<Budget> {
        let value = word & Self::VALUE_MASK;
        match word & !Self::VALUE_MASK {
            Self::UNLIMITED => Some(Budget::Unlimited),
            Self::BYTES => Some(Budget::Bytes(value)),
            Self::PERCENT => Some(Budget::PercentOfLimit(
                u32::try_from(value).unwrap_or(u32::MAX),
            )),
            _ => None,
        }
    }
}

/// Largest budget: what fits in the signed counters the segment, the CSV and PostgreSQL's
/// `bigint` carry.
const MAX_BYTES: u128 = i64::MAX as u128;

/// A size as a budget, if it is one the counters can carry.
fn within_range(bytes: u64) -> Result<Budget, BudgetError> {
    if u128::from(bytes) > MAX_BYTES {
        return Err(BudgetError::Size(SizeError::TooLarge));
    }
    Ok(Budget::Bytes(bytes))
}

fn unlimited_word(text: &str) -> Option<Budget> {
    ["0", "-1", "off", "none"]
        .iter()
        .any(|word| text.eq_ignore_ascii_case(word))
        .then_some(Budget::Unlimited)
}

/// `25`, `12.5`, `0.25` (the text before `%`) as hundredths of a percent, above 0 and ≤ 100%.
fn parse_percent(number: &str) -> Result<Budget, BudgetError> {
    let number = number.trim();
    let decimals = number
        .split_once('.')
        .map_or(0, |(_, fraction)| fraction.len());
    if decimals > 2 {
        return Err(BudgetError::Percent);
    }
    let hundredths = parse_decimal(number, 100).ok_or(BudgetError::Percent)?;
    if hundredths == 0 || hundredths > 10_000 {
        return Err(BudgetError::Percent);
    }
    Ok(Budget::PercentOfLimit(hundredths as u32))
}

/// `digits[.digits]` times `scale`, rounded down; `None` when malformed or too large.
fn parse_decimal(text: &str, scale: u64) -> Option<u64> {
    if !is_decimal(text) {
        return None;
    }
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    // All digits as one integer, divided by 10^(fraction digits) after scaling: exact.
    let mut digits: u128 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        digits = digits.checked_mul(10)?.checked_add(u128::from(b - b'0'))?;
    }
    let scaled = digits.checked_mul(u128::from(scale))? / 10u128.pow(fraction.len() as u32);
    u64::try_from(scaled).ok()
}

/// Whether `text` is `digits[.digits]` (at most 18 decimals).
fn is_decimal(text: &str) -> bool {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits_only = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    !whole.is_empty()
        && !text.ends_with('.')
        && fraction.len() <= 18
        && digits_only(whole)
        && digits_only(fraction)
}

/// A size with one of PostgreSQL's memory units (`B kB MB GB TB`, binary, case-sensitive as in
/// PostgreSQL), `Ok(None)` when the text does not end with one.
fn parse_postgres_size(text: &str) -> Result<Option<u64>, BudgetError> {
    const UNITS: [(&str, u64); 5] = [
        ("kB", 1 << 10),
        ("MB", 1 << 20),
        ("GB", 1 << 30),
        ("TB", 1 << 40),
        ("B", 1),
    ];
    let Some((number, multiplier)) = UNITS
        .iter()
        .find_map(|&(unit, multiplier)| Some((text.strip_suffix(unit)?, multiplier)))
    else {
        return Ok(None);
    };
    // `1KB`, `2 B`…: strip_suffix("B") also matches the guard's `KiB`/`MiB`, which are not
    // PostgreSQL's and go to the guard's parser.
    let number = number.trim_end();
    if number.ends_with(|c: char| c.is_ascii_alphabetic()) {
        return Ok(None);
    }
    match parse_decimal(number, multiplier) {
        Some(0) => Err(BudgetError::Size(SizeError::Zero)),
        Some(bytes) => Ok(Some(bytes)),
        None if is_decimal(number) => Err(BudgetError::Size(SizeError::TooLarge)),
        None => Err(BudgetError::BadPostgresSize),
    }
}

/// Where a process's budget came from (`Slot::budget_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum BudgetSource {
    /// No budget applies.
    None = 0,
    /// `OOM_GUARD_BACKEND_LIMIT`.
    Default = 1,
    /// PostgreSQL's `oomguard.backend_memory_limit` (role, database, session, transaction…).
    Setting = 2,
    /// The setting is malformed (said once on stderr): the default applies, if any.
    MalformedSetting = 3,
}

impl BudgetSource {
    /// Decodes the slot value; unknown values read as `None`.
    pub fn from_raw(raw: u32) -> BudgetSource {
        match raw {
            1 => BudgetSource::Default,
            2 => BudgetSource::Setting,
            3 => BudgetSource::MalformedSetting,
            _ => BudgetSource::None,
        }
    }

    /// The name used by the CLI and in refusal lines.
    pub fn name(self) -> &'static str {
        match self {
            BudgetSource::None => "none",
            BudgetSource::Default => "OOM_GUARD_BACKEND_LIMIT",
            BudgetSource::Setting => "oomguard.backend_memory_limit",
            BudgetSource::MalformedSetting => "malformed_setting",
        }
    }
}

/// Which limit a refusal kept (`Slot::last_refusal_cause`, the exporter's `cause` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RefusalCause {
    /// Nothing was refused yet.
    None = 0,
    /// The container-wide total would pass the domain's limit.
    DomainLimit = 1,
    /// The kernel's numbers showed no headroom in the cgroup.
    KernelTight = 2,
    /// The process's own bytes would pass its budget.
    BackendBudget = 3,
}

impl RefusalCause {
    /// Every cause a refusal can have, in the exporter's order.
    pub const ALL: [RefusalCause; 3] = [
        RefusalCause::DomainLimit,
        RefusalCause::KernelTight,
        RefusalCause::BackendBudget,
    ];

    /// Decodes the slot value; unknown values read as `None`.
    pub fn from_raw(raw: u32) -> RefusalCause {
        match raw {
            1 => RefusalCause::DomainLimit,
            2 => RefusalCause::KernelTight,
            3 => RefusalCause::BackendBudget,
            _ => RefusalCause::None,
        }
    }

    /// The name used by the CLI and as the exporter's label value.
    pub fn name(self) -> &'static str {
        match self {
            RefusalCause::None => "none",
            RefusalCause::DomainLimit => "domain_limit",
            RefusalCause::KernelTight => "kernel_tight",
            RefusalCause::BackendBudget => "backend_budget",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_units_are_binary_like_postgres() {
        let setting = |text| Budget::parse_setting(text);
        assert_eq!(setting("2GB"), Ok(Some(Budget::Bytes(2 << 30))));
        assert_eq!(setting("512MB"), Ok(Some(Budget::Bytes(512 << 20))));
        assert_eq!(setting("2048kB"), Ok(Some(Budget::Bytes(2 << 20))));
        assert_eq!(setting("1TB"), Ok(Some(Budget::Bytes(1 << 40))));
        assert_eq!(setting("4096B"), Ok(Some(Budget::Bytes(4096))));
        assert_eq!(setting(" 1.5GB "), Ok(Some(Budget::Bytes(3 << 29))));
        assert_eq!(setting("100 MB"), Ok(Some(Budget::Bytes(100 << 20))));
    }

    #[test]
    fn the_guards_forms_and_percentages_too() {
        let setting = |text| Budget::parse_setting(text);
        assert_eq!(setting("2Gi"), Ok(Some(Budget::Bytes(2 << 30))));
        assert_eq!(setting("512MiB"), Ok(Some(Budget::Bytes(512 << 20))));
        assert_eq!(setting("2G"), Ok(Some(Budget::Bytes(2_000_000_000))));
        assert_eq!(setting("25%"), Ok(Some(Budget::PercentOfLimit(2500))));
        assert_eq!(setting("0.5%"), Ok(Some(Budget::PercentOfLimit(50))));
        assert_eq!(setting(""), Ok(None));
        for off in ["0", "-1", "off", "OFF", "none"] {
            assert_eq!(setting(off), Ok(Some(Budget::Unlimited)), "{off}");
        }
    }

    #[test]
    fn malformed_settings_say_why() {
        let setting = |text| Budget::parse_setting(text);
        assert_eq!(setting("2048"), Err(BudgetError::NoUnit));
        assert_eq!(
            setting("2gb"),
            Err(BudgetError::Size(SizeError::UnknownSuffix))
        );
        assert_eq!(setting("1.GB"), Err(BudgetError::BadPostgresSize));
        assert_eq!(setting("-5MB"), Err(BudgetError::BadPostgresSize));
        assert_eq!(setting("0MB"), Err(BudgetError::Size(SizeError::Zero)));
        assert_eq!(
            setting("lots"),
            Err(BudgetError::Size(SizeError::NotANumber))
        );
        assert_eq!(setting("150%"), Err(BudgetError::Percent));
        assert_eq!(setting("0%"), Err(BudgetError::Percent));
        assert_eq!(setting("x%"), Err(BudgetError::Percent));
        assert_eq!(
            setting("99999999999TB"),
            Err(BudgetError::Size(SizeError::TooLarge))
        );
        // Fits in 64 bits, not in the signed counters (the CSV's bigint): refused.
        assert_eq!(
            setting("16000000TB"),
            Err(BudgetError::Size(SizeError::TooLarge))
        );
        assert_eq!(setting("12.345%"), Err(BudgetError::Percent));
    }

    #[test]
    fn the_default_keeps_the_guards_grammar() {
        let default = |text| Budget::parse_default(text);
        assert_eq!(default("1Gi"), Ok(Some(Budget::Bytes(1 << 30))));
        assert_eq!(default("268435456"), Ok(Some(Budget::Bytes(1 << 28))));
        assert_eq!(default("25%"), Ok(Some(Budget::PercentOfLimit(2500))));
        assert_eq!(default("off"), Ok(Some(Budget::Unlimited)));
        assert_eq!(
            default("1GB"),
            Err(BudgetError::Size(SizeError::AmbiguousSuffix))
        );
        assert_eq!(default(" "), Ok(None), "empty is not set");
    }

    #[test]
    fn bytes_against_the_limit() {
        assert_eq!(Budget::PercentOfLimit(2500).bytes(1 << 30), Some(1 << 28));
        assert_eq!(Budget::PercentOfLimit(2500).bytes(0), None);
        assert_eq!(Budget::Bytes(5).bytes(0), Some(5));
        assert_eq!(Budget::Unlimited.bytes(1 << 30), None);
        assert_eq!(
            Budget::PercentOfLimit(10_000).bytes(u64::MAX),
            Some(i64::MAX as u64),
            "capped to what the signed counters carry"
        );
    }

    #[test]
    fn raw_values_round_trip() {
        for cause in RefusalCause::ALL {
            assert_eq!(RefusalCause::from_raw(cause as u32), cause);
        }
        assert_eq!(RefusalCause::from_raw(77), RefusalCause::None);
        for source in [
            BudgetSource::Default,
            BudgetSource::Setting,
            BudgetSource::MalformedSetting,
        ] {
            assert_eq!(BudgetSource::from_raw(source as u32), source);
        }
    }
}
