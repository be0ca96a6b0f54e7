//! One `gatewayd run` in a lab's gateway namespace: starting, signalling,
//! killing and restarting it, and the CLI calls a test makes against it
//! (stats, reload, down). Every lab topology holds one.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::Netns;

pub struct Daemon {
    /// The gatewayd binary under test.
    pub gatewayd: PathBuf,
    /// The namespace it runs in (its ports live there).
    pub gw: Arc<Netns>,
    /// Node name (= lab prefix, unique), config file, scratch folder.
    pub node: String,
    pub config: PathBuf,
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    process: Option<Child>,
}

impl Daemon {
    /// A daemon not started yet, with `config_text` written to
    /// `<tmp>/<dir_name>/gateway.toml`.
    pub fn new(
        gatewayd: &Path,
        gw: Arc<Netns>,
        node: &str,
        dir_name: &str,
        config_text: &str,
    ) -> Result<Daemon> {
        let dir = std::env::temp_dir().join(dir_name);
        fs::create_dir_all(&dir)?;
        let config = dir.join("gateway.toml");
        fs::write(&config, config_text)?;
        Ok(Daemon {
            gatewayd: gatewayd.to_owned(),
            gw,
            node: node.to_owned(),
            config,
            run_dir: dir.join("run"),
            dir,
            process: None,
        })
    }

    /// `gatewayd` run inside the gateway namespace. `nsenter --net` (not
    /// `ip netns exec`) keeps the host's mounts, so the pins land in the
    /// host's /sys/fs/bpf where bpftool and a restarted daemon find them.
    pub fn gatewayd_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.gw.name()))
            .arg("--")
            .arg(&self.gatewayd)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(args);
        cmd
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("gatewayd.log")
    }

    /// Starts `gatewayd run` and waits until it answers on its control
    /// socket. Its log goes to `log_path()`.
    pub fn start_daemon(&mut self) -> Result<()> {
        self.start_daemon_with(&[])
    }

    /// `start_daemon` with extra `gatewayd run` arguments (e.g. `--fresh`).
    /// The log of an earlier run is kept: this run's log is appended.
    pub fn start_daemon_with(&mut self, extra: &[&str]) -> Result<()> {
        self.start_daemon_env(extra, &[])
    }

    /// `start_daemon_with` plus environment variables for gatewayd.
    pub fn start_daemon_env(&mut self, extra: &[&str], env: &[(&str, &str)]) -> Result<()> {
        if self.process.is_some() {
            bail!("daemon already running");
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let config = self.config.to_string_lossy().into_owned();
        let mut args = vec!["run", "-c", &config];
        args.extend_from_slice(extra);
        let mut cmd = self.gatewayd_cmd(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting gatewayd run")?;
        self.process = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.process.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.process = None;
                    bail!(
                        "gatewayd run exited ({status}) during start:\n{}",
                        self.log()
                    );
                }
            }
            if self.stats_json().is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("gatewayd did not come up in 20 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM and wait: the daemon exits cleanly; the datapath (pinned
    /// maps and XDP links) stays and keeps forwarding.
    pub fn stop_daemon(&mut self) -> Result<()> {
        if let Some(mut child) = self.process.take() {
            match terminate(&mut child, Duration::from_secs(10))? {
                Some(status) if status.success() => {}
                Some(status) => bail!("gatewayd exited with {status}:\n{}", self.log()),
                None => bail!("gatewayd did not stop within 10 s of SIGTERM"),
            }
        }
        Ok(())
    }

    /// `gatewayd down`: the running daemon (if any) detaches, removes its
    /// pins and exits. Returns gatewayd's output.
    pub fn down(&mut self) -> Result<String> {
        let out = self
            .gatewayd_cmd(&["down", "--node", &self.node])
            .output()?;
        if !out.status.success() {
            bail!("gatewayd down: {}", String::from_utf8_lossy(&out.stderr));
        }
        if let Some(mut child) = self.process.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait()? {
                    if !status.success() {
                        bail!("gatewayd exited with {status} after down:\n{}", self.log());
                    }
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("gatewayd did not exit within 10 s of `gatewayd down`");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sends `signal` to the running daemon.
    pub fn signal_daemon(&self, signal: i32) -> Result<()> {
        let child = self.process.as_ref().context("no daemon running")?;
        // nsenter execs gatewayd in place: the child's pid is gatewayd's.
        // SAFETY: signalling our own child.
        if unsafe { libc::kill(child.id() as i32, signal) } != 0 {
            bail!("kill: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGKILL, as a crash or an OOM kill would: nothing is cleaned up.
    pub fn kill_daemon(&mut self) -> Result<()> {
        let mut child = self.process.take().context("no daemon running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Replaces the lab's config file (the daemon reads it on reload).
    pub fn write_config(&self, text: &str) -> Result<()> {
        // Write then rename: a reload never reads a half-written file.
        let tmp = self.config.with_extension("tmp");
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &self.config)?;
        Ok(())
    }

    /// `gatewayd reload`; Err carries gatewayd's message.
    pub fn reload(&self) -> Result<()> {
        let out = self
            .gatewayd_cmd(&["reload", "--node", &self.node])
            .output()?;
        if !out.status.success() {
            bail!("gatewayd reload: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Where the daemon pins this node's maps and links.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new("/sys/fs/bpf/gatewayd").join(&self.node)
    }

    /// (link id, program id) of every pinned XDP link, by pin file name,
    /// as `bpftool link show pinned` reports them.
    pub fn pinned_links(&self) -> Result<std::collections::BTreeMap<String, (u64, u64)>> {
        let mut out = std::collections::BTreeMap::new();
        let dir = self.pin_dir().join("links");
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let text = crate::run(
                "bpftool",
                &["-j", "link", "show", "pinned", &path.to_string_lossy()],
            )?;
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let id = v["id"].as_u64().context("bpftool: no link id")?;
            let prog = v["prog_id"].as_u64().context("bpftool: no prog_id")?;
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            out.insert(name.into_owned(), (id, prog));
        }
        Ok(out)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `gatewayd stats --json` of the running daemon.
    pub fn stats_json(&self) -> Result<serde_json::Value> {
        let out = self
            .gatewayd_cmd(&["stats", "--json", "--node", &self.node])
            .output()?;
        if !out.status.success() {
            bail!("gatewayd stats: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `gatewayd stats` (the table).
    pub fn stats_table(&self) -> Result<String> {
        let out = self
            .gatewayd_cmd(&["stats", "--node", &self.node])
            .output()?;
        if !out.status.success() {
            bail!("gatewayd stats: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = terminate(&mut child, Duration::from_secs(5));
        }
        let _ = fs::remove_dir_all(&self.dir);
        // SIGTERM and kill -9 leave the pinned datapath; remove it with the lab.
        let _ = fs::remove_dir_all(self.pin_dir());
    }
}

/// SIGTERM, then up to `grace` for the process to exit; killed after that.
/// Returns its exit status, or None if it had to be killed.
fn terminate(child: &mut Child, grace: Duration) -> Result<Option<std::process::ExitStatus>> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(None)
}
