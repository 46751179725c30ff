//! Sessions with a cluster's server: how a client connects ([`Cluster::connect`], over the
//! cluster's unix socket as the [`SUPERUSER`]) and the questions the demo, the benchmarks and
//! the tests ask of a session about the server's processes ([`backend_pid`],
//! [`backend_pids_by_type`], [`checkpointer_pid`]).

use std::time::Duration;

use anyhow::{Context, Result};

use crate::cluster::{Cluster, SUPERUSER};

impl Cluster {
    /// The connection parameters [`Cluster::connect`] uses, for callers that want to tweak them.
    pub fn connection_config(&self, connect_timeout: Duration) -> postgres::Config {
        let mut config = postgres::Config::new();
        config
            .host_path(self.socket_dir())
            .port(self.port())
            .user(SUPERUSER)
            .dbname("postgres")
            .application_name("oomguard")
            .connect_timeout(connect_timeout);
        config
    }

    /// A client over the unix socket as the `postgres` superuser to database `postgres`.
    pub fn connect(&self) -> Result<postgres::Client> {
        self.connection_config(Duration::from_secs(10))
            .connect(postgres::NoTls)
            .with_context(|| {
                format!(
                    "could not connect to the cluster via {}",
                    self.socket_dir().display()
                )
            })
    }
}

/// `(pid, backend_type)` of every process in `pg_stat_activity` (client backends and auxiliary
/// processes such as `checkpointer`, `background writer`, `walwriter`, `autovacuum launcher`).
pub fn backend_pids_by_type(client: &mut postgres::Client) -> Result<Vec<(u32, String)>> {
    let rows = client
        .query(
            "SELECT pid, coalesce(backend_type, '') FROM pg_stat_activity ORDER BY pid",
            &[],
        )
        .context("could not query pg_stat_activity")?;
    rows.iter()
        .map(|row| {
            let pid: i32 = row.get(0);
            let kind: String = row.get(1);
            Ok((u32::try_from(pid).context("negative pid")?, kind))
        })
        .collect()
}

/// The pid of the session's own backend (`pg_backend_pid()`).
pub fn backend_pid(client: &mut postgres::Client) -> Result<i32> {
    Ok(client
        .query_one("SELECT pg_backend_pid()", &[])
        .context("could not ask for pg_backend_pid()")?
        .get(0))
}

/// The checkpointer's pid, from `pg_stat_activity` (it changes when the server resets after a
/// crash: the tests' crash detector).
pub fn checkpointer_pid(client: &mut postgres::Client) -> Result<u32> {
    backend_pids_by_type(client)?
        .into_iter()
        .find(|(_, kind)| kind == "checkpointer")
        .map(|(pid, _)| pid)
        .context("no checkpointer in pg_stat_activity")
}
