//! The `upgrade` scenario's server: started from a copy of the build next to this program (with
//! `--pid-file`), and upgraded in place by installing the other build at its path (a copy
//! renamed over it, as a package manager installs) and sending SIGUSR2 to the server the pid
//! file names. Each upgrade is followed by its events: the pid file names a new pid (the new
//! server is ready), the old pid is gone (reaped: this program is the subreaper of every
//! generation), and /status, now answered by the new server alone, reports the version of the
//! build just installed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::{stop_last, Replace, EXIT_LIMIT, READY_LIMIT};
use crate::client::Target;
use crate::procs;
use crate::report::Event;
use crate::spawn::{server_program, version_of, Install, ServerSetup, SpawnedServer};

/// How often the pid file is read while a new server starts.
const PID_FILE_POLL: Duration = Duration::from_millis(2);

/// The server being upgraded, and the two builds it alternates between.
pub struct Upgrades {
    /// The first generation, its temporary directory, the binary's path and the pid file.
    server: SpawnedServer,
    /// The build the server started from, then the one given by `--upgrade-to`.
    builds: [PathBuf; 2],
    /// The versions the two builds report.
    versions: [String; 2],
    /// The pid of the server serving now.
    current: u32,
    /// The last server has been stopped.
    stopped: bool,
}

impl Upgrades {
    /// Starts the first generation from a copy of the build next to this program, and waits
    /// until the pid file names it.
    pub async fn start(setup: &ServerSetup, upgrade_to: &Path) -> Result<Upgrades, String> {
        let first = server_program().map_err(|e| format!("cannot find this executable: {e}"))?;
        let versions = [version_of(&first)?, version_of(upgrade_to)?];
        let server = SpawnedServer::start(setup, Install::Copy).map_err(|e| e.to_string())?;
        let pid = server.pid();
        let pid_file = server.pid_file().expect("a copy has a pid file").to_owned();
        procs::poll_until(READY_LIMIT, PID_FILE_POLL, || {
            (read_pid(&pid_file) == Some(pid)).then_some(())
        })
        .await
        .ok_or_else(|| format!("the pid file never named the first server (pid {pid})"))?;
        Ok(Upgrades {
            server,
            builds: [first, upgrade_to.to_owned()],
            versions,
            current: pid,
            stopped: false,
        })
    }

    pub fn versions(&self) -> &[String] {
        &self.versions
    }

    /// Installs `build` at the server's path: copied next to it, then renamed over it (the
    /// running binary is not written to, and the path always holds a whole binary).
    fn install(&self, build: &Path) -> Result<(), String> {
        let path = self.server.program();
        let next = path.with_extension("next");
        std::fs::copy(build, &next)
            .and_then(|_| std::fs::rename(&next, path))
            .map_err(|e| {
                format!(
                    "cannot install {} at {}: {e}",
                    build.display(),
                    path.display()
                )
            })
    }

    /// Asks /status (on a new connection) until the server `pid` answers; its version.
    async fn status_version(&self, pid: u32) -> Result<String, String> {
        let target = self.target();
        let mut last = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match target.get_json("/status").await {
                Ok(status) if status["pid"].as_u64() == Some(pid.into()) => {
                    return Ok(status["version"].as_str().unwrap_or_default().to_owned());
                }
                Ok(status) => last = format!("answered by pid {}", status["pid"]),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("/status never answered from pid {pid}: {last}"))
    }
}

impl Replace for Upgrades {
    fn target(&self) -> Target {
        Target {
            addr: self.server.addr,
        }
    }

    fn current(&self) -> u32 {
        self.current
    }

    fn ls_root(&self) -> PathBuf {
        self.server.root()
    }

    async fn replace(&mut self, index: usize, clock: Instant) -> Result<Event, String> {
        let build = index % 2;
        self.install(&self.builds[build])?;
        let (from, pid_file) = (self.current, self.server.pid_file().expect("has one"));
        let t_s = clock.elapsed().as_secs_f64();
        let sent = Instant::now();
        procs::signal(from, Signal::USR2).map_err(|e| format!("SIGUSR2 to {from}: {e}"))?;
        let new_pid = || read_pid(pid_file).filter(|&pid| pid != from);
        let to = procs::poll_until(READY_LIMIT, PID_FILE_POLL, new_pid)
            .await
            .ok_or(format!(
                "no new pid in the pid file {READY_LIMIT:?} after SIGUSR2"
            ))?;
        let ready = sent.elapsed();
        procs::wait_gone(from, EXIT_LIMIT).await.ok_or(format!(
            "the old server (pid {from}) still runs {EXIT_LIMIT:?} after the new one was ready"
        ))?;
        let old_gone = sent.elapsed();
        self.current = to;
        let version = self.status_version(to).await?;
        if version != self.versions[build] {
            let want = &self.versions[build];
            return Err(format!("pid {to} reports version {version}, not {want}"));
        }
        Ok(Event {
            index,
            t_s,
            from_pid: from,
            to_pid: to,
            version: Some(version),
            ready_ms: ready.as_secs_f64() * 1e3,
            old_gone_ms: old_gone.as_secs_f64() * 1e3,
        })
    }

    async fn stop(&mut self) -> Result<(), String> {
        self.stopped = true;
        stop_last(self.current).await
    }
}

impl Drop for Upgrades {
    /// Interrupted: the server serving now is told to stop (it drains and exits by itself).
    fn drop(&mut self) {
        if !self.stopped {
            let _ = procs::signal(self.current, Signal::TERM);
        }
    }
}

/// The pid in a pid file, if it holds one.
fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
