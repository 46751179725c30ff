//! The guard's settings as the CLI sees them: a variable in the environment, else the guard's
//! configuration file (`OOM_GUARD_CONFIG`, else `/etc/oomguard/oomguard.conf`), read, parsed
//! and trusted as the preload library does. Deployments whose environment never reaches the
//! server (Spilo clears it; `/etc/ld.so.preload` needs none) may name `OOM_GUARD_DIR` in the
//! file alone: `oomguard status`, `limit`, `clean` and `exporter` must look where the guard
//! writes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oomguard_core::config::SETTING_NAMES;
use oomguard_core::config_file::{is_trusted, parse_line, Line, CAPACITY, UNTRUSTED};

use crate::segment::DEFAULT_DIR;

/// Names the configuration file (environment only).
pub const CONFIG_ENV: &str = "OOM_GUARD_CONFIG";
/// The configuration file unless `OOM_GUARD_CONFIG` names another.
pub const DEFAULT_CONFIG: &str = "/etc/oomguard/oomguard.conf";
/// Names the segment directory.
pub const DIR_ENV: &str = "OOM_GUARD_DIR";

/// The configuration file's settings (none when there is no file or it cannot be used).
#[derive(Debug, Default)]
pub struct GuardSettings {
    values: HashMap<&'static str, String>,
}

impl GuardSettings {
    /// Reads the file the environment names (or the default one). A file that cannot be used
    /// is named on stderr with the reason, as the guard would report it, and ignored.
    pub fn load() -> GuardSettings {
        let explicit = std::env::var_os(CONFIG_ENV).filter(|path| !path.is_empty());
        let path = explicit
            .as_deref()
            .map_or_else(|| PathBuf::from(DEFAULT_CONFIG), PathBuf::from);
        match Self::read(&path, explicit.is_some()) {
            Ok(settings) => settings,
            Err(problem) => {
                eprintln!(
                    "oomguard: warning: the configuration file {} {problem}; its settings are \
                     ignored (as the guard ignores them)",
                    path.display()
                );
                GuardSettings::default()
            }
        }
    }

    /// Reads `path`. A missing file is no problem unless it was asked for (`explicit`).
    pub fn read(path: &Path, explicit: bool) -> Result<GuardSettings, String> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(GuardSettings::default())
            }
            Err(error) => return Err(format!("cannot be read: {error}")),
        };
        let meta = file
            .metadata()
            .map_err(|error| format!("cannot be read: {error}"))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if !is_trusted(meta.is_file(), meta.uid(), euid, meta.permissions().mode()) {
            return Err(UNTRUSTED.to_owned());
        }
        let mut bytes = Vec::new();
        (&mut file)
            .take(CAPACITY as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|error| format!("cannot be read: {error}"))?;
        if bytes.len() > CAPACITY {
            return Err(format!("is larger than {CAPACITY} bytes"));
        }
        let mut values = HashMap::new();
        for (number, line) in bytes.split(|&b| b == b'\n').enumerate() {
            match parse_line(line) {
                Line::Nothing => {}
                Line::Malformed => {
                    return Err(format!(
                        "line {} is not KEY=VALUE with KEY one of {}",
                        number + 1,
                        SETTING_NAMES.join(", ")
                    ))
                }
                Line::Setting { key, value } => {
                    let text = String::from_utf8_lossy(&line[value]).into_owned();
                    values.insert(SETTING_NAMES[key], text);
                }
            }
        }
        Ok(GuardSettings { values })
    }

    /// A setting: the environment's value when the variable is set, else the file's.
    pub fn get(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name).or_else(|| self.values.get(name).map(OsString::from))
    }

    /// The segment directory: `given` (the command line, or `OOM_GUARD_DIR` in the
    /// environment), else the file's `OOM_GUARD_DIR`, else [`DEFAULT_DIR`]. Empty means unset.
    pub fn segment_dir(&self, given: Option<PathBuf>) -> PathBuf {
        given
            .filter(|dir| !dir.as_os_str().is_empty())
            .or_else(|| {
                self.values
                    .get(DIR_ENV)
                    .filter(|dir| !dir.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn file(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oomguard.conf");
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn the_files_directory_is_used_when_none_is_given() {
        let (_dir, path) = file("# comment\nOOM_GUARD_DIR = \"/run/oomguard\"\n", 0o644);
        let settings = GuardSettings::read(&path, true).unwrap();
        assert_eq!(settings.segment_dir(None), Path::new("/run/oomguard"));
        assert_eq!(
            settings.segment_dir(Some("/elsewhere".into())),
            Path::new("/elsewhere")
        );
        assert_eq!(
            GuardSettings::default().segment_dir(None),
            Path::new(DEFAULT_DIR)
        );
    }

    #[test]
    fn a_file_writable_by_others_or_malformed_is_refused_with_the_reason() {
        let (_dir, path) = file("OOM_GUARD_DIR=/run/oomguard\n", 0o664);
        let error = GuardSettings::read(&path, true).unwrap_err();
        assert!(error.contains("writable only by its owner"), "{error}");
        let (_dir, path) = file("OOM_GUARD_DIR=/a\nnonsense\n", 0o600);
        let error = GuardSettings::read(&path, true).unwrap_err();
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn a_missing_file_matters_only_when_named() {
        let missing = Path::new("/nonexistent/oomguard.conf");
        assert!(GuardSettings::read(missing, false).is_ok());
        assert!(GuardSettings::read(missing, true)
            .unwrap_err()
            .contains("cannot be read"));
    }
}
