//! A PostgreSQL cluster of a test's own, for tests that stop and start the server (the shared test
//! server cannot be stopped under the other tests). Run as the `postgres` user when the tests run as
//! root, as Postgres refuses to run as root.

use std::path::PathBuf;
use std::process::Command;

use crate::helpers::free_port;

pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_root: bool,
}

impl Cluster {
    /// Initialises a cluster with a database `edgemesh` and starts it.
    pub fn start() -> Self {
        let bin = PathBuf::from(
            std::env::var("EDGEMESH_PG_BIN")
                .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_owned()),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        let as_root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        if as_root {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        let cluster = Self {
            dir,
            bin,
            port: free_port(),
            as_root,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
            ],
        );
        cluster.start_server();
        cluster.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.port.to_string(),
                "-U",
                "postgres",
                "edgemesh",
            ],
        );
        cluster
    }

    fn data(&self) -> String {
        self.dir
            .path()
            .join("data")
            .to_str()
            .expect("utf-8")
            .to_owned()
    }

    /// Runs a PostgreSQL tool as the cluster's owner.
    fn output(&self, tool: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
        let program = self.bin.join(tool);
        if self.as_root {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .output()
        } else {
            Command::new(&program).args(args).output()
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let output = self.output(tool, args).expect(tool);
        assert!(
            output.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/edgemesh", self.port)
    }

    pub fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                log.to_str().expect("utf-8"),
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// Stops the server at once (`-m fast`: sessions are ended, as a crash or a failover would).
    pub fn stop_server(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.output(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }
}

/// PostgreSQL on another host: a cluster of the test's own in a network namespace, reached across a
/// veth pair through a relay that adds `rtt_ms` of round-trip delay (scripts/remote-postgres.sh).
pub struct Remote {
    dir: tempfile::TempDir,
    /// `postgres://postgres@<address in the namespace>:5432/edgemesh`.
    pub url: String,
}

impl Remote {
    pub fn start(rtt_ms: u32) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = Command::new(script())
            .args([
                "start".as_ref(),
                dir.path().as_os_str(),
                rtt_ms.to_string().as_ref(),
            ])
            .output()
            .expect("scripts/remote-postgres.sh");
        let remote = Self {
            url: String::from_utf8_lossy(&output.stdout).trim().to_owned(),
            dir,
        };
        assert!(
            output.status.success() && remote.url.starts_with("postgres://"),
            "PostgreSQL in a network namespace (needs root and iproute2): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        remote
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

fn script() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/remote-postgres.sh")
}
