//! The lifecycle scenarios: the server is replaced again and again under a steady mixed load
//! ([`super::load`]), and the report says what the clients saw and what was left behind.
//! - `upgrade` ([`upgrade`]): SIGUSR2 in-place upgrades, alternating between two builds that
//!   report different versions, followed through the pid file, /status and the old pid.
//! - `restart` ([`restart`]): this program is the launcher, as systemd is with a socket unit:
//!   it holds the listening socket, and each restart is SIGTERM, the old server's exit, a new
//!   server on the same socket, and its `READY=1`.
//!
//! Both need `--spawn` (they start their own servers, from the build next to this program, with
//! the same `--workers` and `--server-arg`s) and wait for each step by its event, with a bound,
//! never by a fixed sleep. The leak checks look at every process under this program (it is
//! made a child subreaper, see [`super::procs`]), leaving out the `--spawn` server of the
//! other scenarios.

mod restart;
mod upgrade;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::client::Target;
use super::load::{Load, LoadPlan};
use super::procs;
use super::report::{Event, Leaks, Lifecycle, Spread};
use super::scenarios::{make_files, wait_idle, Run};

/// Files in the small directory that the load lists.
const LS_FILES: usize = 20;
/// Longest wait for a new server to be ready (above the server's default `--upgrade-timeout`).
const READY_LIMIT: Duration = Duration::from_secs(40);
/// Longest wait for an old server to exit (above the default `--shutdown-grace`).
const EXIT_LIMIT: Duration = Duration::from_secs(20);
/// Longest wait, after the load, for the processes and descriptors to settle.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);
/// How often a settling check looks again.
const SETTLE_POLL: Duration = Duration::from_millis(50);

/// One way of replacing the server under load.
trait Replace {
    /// Where the servers listen: the same socket throughout.
    fn target(&self) -> Target;
    /// The server serving now.
    fn current(&self) -> u32;
    /// The servers' `--ls-root`.
    fn ls_root(&self) -> PathBuf;
    /// Replaces the current server; `index` counts from 1, `clock` is the run's.
    async fn replace(&mut self, index: usize, clock: Instant) -> Result<Event, String>;
    /// Stops the current server and reaps it.
    async fn stop(&mut self) -> Result<(), String>;
}

/// Stops the last server: SIGTERM, and SIGKILL if it has not exited within [`EXIT_LIMIT`].
async fn stop_last(pid: u32) -> Result<(), String> {
    match procs::stop(pid, EXIT_LIMIT).await {
        Some(_) => Ok(()),
        None => Err(format!(
            "pid {pid} did not exit within {EXIT_LIMIT:?}; killed"
        )),
    }
}

impl Run {
    /// The `upgrade` scenario.
    pub async fn upgrade(&mut self) -> Result<Lifecycle, String> {
        let plan = self.plan.lifecycle.clone();
        let setup = plan.server.as_ref().ok_or("upgrade: needs --spawn")?;
        let to = plan.upgrade_to.as_deref().ok_or(
            "upgrade: needs --upgrade-to PATH, a build that reports another version (README, \
             Deploying: upgrades and restarts under load)",
        )?;
        procs::become_subreaper().map_err(|e| format!("upgrade: {e}"))?;
        self.bar.set_message("upgrade: starting the server");
        let mut upgrades = upgrade::Upgrades::start(setup, to).await?;
        let versions = upgrades.versions().to_vec();
        Ok(self
            .lifecycle("upgrade", &mut upgrades, plan.upgrades, versions)
            .await)
    }

    /// The `restart` scenario.
    pub async fn restart(&mut self) -> Result<Lifecycle, String> {
        let plan = self.plan.lifecycle.clone();
        let setup = plan.server.as_ref().ok_or("restart: needs --spawn")?;
        procs::become_subreaper().map_err(|e| format!("restart: {e}"))?;
        self.bar.set_message("restart: starting the server");
        let mut restarts = restart::Restarts::start(setup).await?;
        let versions = vec![restarts.version().to_owned()];
        Ok(self
            .lifecycle("restart", &mut restarts, plan.restarts, versions)
            .await)
    }

    /// Baseline, load, `n` replacements, the checks after the load, the last stop.
    async fn lifecycle(
        &mut self,
        scenario: &'static str,
        servers: &mut impl Replace,
        n: usize,
        versions: Vec<String>,
    ) -> Lifecycle {
        let mut errors = Vec::new();
        let baseline = self.baseline(servers).await.unwrap_or_else(|e| {
            errors.push(format!("baseline: {e}"));
            BTreeMap::new()
        });
        let (events, load) = match make_files(&servers.ls_root(), LS_FILES) {
            Ok(dir) => {
                let name = dir.path().file_name().expect("a temp dir has a name");
                let ls_dir = name.to_string_lossy().into_owned();
                self.replace_under_load(scenario, servers, n, ls_dir, &mut errors)
                    .await
            }
            Err(e) => {
                errors.push(format!("cannot create the /ls directory: {e}"));
                (Vec::new(), Default::default())
            }
        };
        self.bar.set_message(format!("{scenario}: leak checks"));
        let mut leaks = self.leaks_after_load(servers, &baseline).await;
        if let Err(e) = servers.stop().await {
            errors.push(format!("stopping the last server: {e}"));
        }
        leaks.left_after_stop = self.left_after_stop().await;
        Lifecycle {
            scenario,
            asked: n,
            done: events.len(),
            versions,
            ready: Spread::of(events.iter().map(|e| e.ready_ms)),
            old_gone: Spread::of(events.iter().map(|e| e.old_gone_ms)),
            events,
            load,
            leaks,
            errors,
        }
    }

    /// The first server's descriptors, once it is idle and they have settled.
    async fn baseline(&self, servers: &impl Replace) -> Result<BTreeMap<String, usize>, String> {
        let (pid, _) = wait_idle(servers.target(), Duration::from_secs(20)).await?;
        let mut last = None;
        let deadline = Instant::now() + SETTLE_LIMIT;
        while Instant::now() < deadline {
            tokio::time::sleep(SETTLE_POLL).await;
            let now = procs::fds(pid).ok_or(format!("cannot read /proc/{pid}/fd"))?;
            if last.as_ref() == Some(&now) {
                return Ok(now);
            }
            last = Some(now);
        }
        last.ok_or_else(|| "no descriptor count".to_owned())
    }

    /// The load, with `n` replacements in it, each after a pause; stops at the first that
    /// fails (its error is recorded).
    async fn replace_under_load(
        &mut self,
        scenario: &str,
        servers: &mut impl Replace,
        n: usize,
        ls_dir: String,
        errors: &mut Vec<String>,
    ) -> (Vec<Event>, super::report::LoadReport) {
        let plan = &self.plan.lifecycle;
        let limit = plan.pause * (n as u32 + 2) + (READY_LIMIT + EXIT_LIMIT) * n as u32;
        let load = Load::start(LoadPlan {
            target: servers.target(),
            clients: plan.clients,
            pause: self.plan.probe_pause,
            ls_dir,
            limit,
            clock: self.clock,
        });
        let pause = plan.pause;
        let mut events = Vec::new();
        tokio::time::sleep(pause).await;
        for index in 1..=n {
            self.bar
                .set_message(format!("{scenario}: {index}/{n} under load"));
            match servers.replace(index, self.clock).await {
                Ok(event) => events.push(event),
                Err(e) => {
                    errors.push(format!("{scenario} {index}: {e}"));
                    break;
                }
            }
            tokio::time::sleep(pause).await;
        }
        (events, load.finish().await)
    }

    /// Waits (bounded) until only the last server and its workers are left under this program
    /// and the server's descriptors are back to `baseline`; reports what it saw last.
    async fn leaks_after_load(
        &self,
        servers: &impl Replace,
        baseline: &BTreeMap<String, usize>,
    ) -> Leaks {
        let server = servers.current();
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let workers = match wait_idle(servers.target(), Duration::from_secs(10)).await {
                Ok((_, workers)) => workers,
                Err(_) => Vec::new(),
            };
            // Time for the server to close the connection /status came on.
            tokio::time::sleep(SETTLE_POLL).await;
            let leaks = self.look_for_leaks(server, &workers, baseline);
            let clean = leaks.zombies.is_empty() && leaks.ls.is_empty() && leaks.strays.is_empty();
            if (clean && leaks.fds_diff.is_empty()) || Instant::now() >= deadline {
                return leaks;
            }
        }
    }

    /// One look at the processes under this program and at `server`'s descriptors.
    fn look_for_leaks(
        &self,
        server: u32,
        workers: &[u32],
        baseline: &BTreeMap<String, usize>,
    ) -> Leaks {
        let mut leaks = Leaks::default();
        for p in procs::descendants(std::process::id(), &self.others()) {
            let expected = p.pid == server || (p.ppid == server && workers.contains(&p.pid));
            if p.is_zombie() {
                leaks.zombies.push(p.describe());
            } else if p.name == "ls" {
                leaks.ls.push(p.describe());
            } else if !expected {
                leaks.strays.push(p.describe());
            }
        }
        let now = procs::fds(server).unwrap_or_default();
        leaks.fds_baseline = baseline.values().sum();
        leaks.fds_final = now.values().sum();
        let kinds: std::collections::BTreeSet<&String> =
            baseline.keys().chain(now.keys()).collect();
        for kind in kinds {
            let (before, after) = (baseline.get(kind), now.get(kind));
            if before != after {
                let (b, a) = (before.copied().unwrap_or(0), after.copied().unwrap_or(0));
                leaks.fds_diff.push(format!("{kind} {b} -> {a}"));
            }
        }
        leaks
    }

    /// After the last server was stopped: whatever is still under this program, once the
    /// stragglers had [`SETTLE_LIMIT`] to go. Those are then killed (and reaped, when they are
    /// this program's children), so that one run's leak does not show in the next scenario.
    async fn left_after_stop(&self) -> Vec<String> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        let left = loop {
            let left = procs::descendants(std::process::id(), &self.others());
            if left.is_empty() || Instant::now() >= deadline {
                break left;
            }
            tokio::time::sleep(SETTLE_POLL).await;
        };
        for p in &left {
            let _ = procs::signal(p.pid, rustix::process::Signal::KILL);
            if p.ppid == std::process::id() {
                procs::wait_gone(p.pid, Duration::from_secs(1)).await;
            }
        }
        left.iter().map(procs::Proc::describe).collect()
    }

    /// The processes under this program that are not the lifecycle's: the `--spawn` server of
    /// the other scenarios.
    fn others(&self) -> Vec<u32> {
        self.server_pid.into_iter().collect()
    }
}
