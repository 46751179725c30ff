//! A throwaway cluster whose server runs under the guard ([`GuardedCluster`]), as the demo, the
//! benchmarks and the server tests start it: the preload library staged where the server user
//! can read it, `LD_PRELOAD` and a private `OOM_GUARD_DIR` in the postmaster's environment, a
//! check that the postmaster really mapped the library, and the guard's segment of that cluster
//! read through `oomguard-segment`. Also the server log lines that tell a crash and reset
//! ([`CRASH_LOG_LINES`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use oomguard_segment::{self as segment, Segment, Snapshot};

use crate::cluster::{Cluster, ClusterOptions};
use crate::library::{pid_maps_library, stage_library};

/// Log lines the postmaster writes when a backend dies and it restarts everything.
pub const CRASH_LOG_LINES: [&str; 4] = [
    "was terminated by signal",
    "terminating any other active server processes",
    "all server processes terminated; reinitializing",
    "database system was interrupted",
];

/// A throwaway cluster whose server processes run under the guard.
pub struct GuardedCluster {
    /// The cluster (dropping it stops the server and removes its directory).
    pub cluster: Cluster,
    /// Where the guard's segment lives (`OOM_GUARD_DIR` of the server).
    pub segment_dir: PathBuf,
    /// The preload library as the server loads it (a readable copy in the cluster directory).
    pub library: PathBuf,
}

impl GuardedCluster {
    /// Creates a cluster and starts it with `library` preloaded and `guard_env` (`OOM_GUARD_*`)
    /// in its environment; `settings` override the cluster's defaults.
    pub fn start(
        library: &Path,
        guard_env: &[(&str, &str)],
        settings: &[(&str, &str)],
    ) -> Result<GuardedCluster> {
        Self::start_with(&ClusterOptions::default(), library, guard_env, settings)
    }

    /// [`GuardedCluster::start`] with the cluster created by `options` (e.g. in a cgroup).
    pub fn start_with(
        options: &ClusterOptions,
        library: &Path,
        guard_env: &[(&str, &str)],
        settings: &[(&str, &str)],
    ) -> Result<GuardedCluster> {
        let mut cluster = Cluster::create_temp(options)?;
        let base = cluster.base_dir().to_owned();
        let staged = stage_library(library, &base.join("lib"))
            .with_context(|| format!("could not stage {}", library.display()))?;
        let segment_dir = base.join("guard");
        std::fs::create_dir_all(&segment_dir)?;
        let user = cluster.server_user().clone();
        if user.switch {
            std::os::unix::fs::chown(&segment_dir, Some(user.uid), Some(user.gid)).with_context(
                || format!("could not give {} to {}", segment_dir.display(), user.name),
            )?;
        }
        let mut env = vec![
            ("LD_PRELOAD".to_owned(), staged.display().to_string()),
            (
                "OOM_GUARD_DIR".to_owned(),
                segment_dir.display().to_string(),
            ),
        ];
        env.extend(
            guard_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cluster.start(&env, &settings)?;
        let postmaster = cluster.postmaster_pid().context("no postmaster pid")?;
        if !pid_maps_library(postmaster, "liboomguard.so")? {
            bail!(
                "the postmaster (pid {postmaster}) does not have {} mapped: the dynamic loader \
                 ignored LD_PRELOAD (see {})",
                staged.display(),
                cluster.log_path().display()
            );
        }
        Ok(GuardedCluster {
            cluster,
            segment_dir,
            library: staged,
        })
    }

    /// The guard's segment of this cluster.
    pub fn segment(&self) -> Result<Segment> {
        let paths = segment::find(&self.segment_dir)?;
        let [path] = paths.as_slice() else {
            bail!(
                "expected one segment in {}, found {paths:?}",
                self.segment_dir.display()
            );
        };
        Ok(Segment::open(path)?)
    }

    /// The guard's numbers now.
    pub fn snapshot(&self) -> Result<Snapshot> {
        Ok(self.segment()?.snapshot()?)
    }

    /// Crash lines found in the server log, if any.
    pub fn crash_lines(&self) -> Result<Vec<String>> {
        let log = self.cluster.log_text()?;
        Ok(log
            .lines()
            .filter(|line| CRASH_LOG_LINES.iter().any(|crash| line.contains(crash)))
            .map(str::to_owned)
            .collect())
    }
}
