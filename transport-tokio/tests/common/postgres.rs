//! A PostgreSQL server of the test's own (the Debian package `postgresql`): a fresh cluster in
//! a temporary directory, on a free loopback port, stopped and removed when dropped. Needs
//! root (the server runs as the `postgres` user).

use std::path::PathBuf;
use std::process::Command;

/// A running (or stopped, see [`Postgres::stop`]) test server.
pub struct Postgres {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    pub port: u16,
    /// The network namespace it runs in (None: the test's own).
    netns: Option<String>,
}

/// The directory of the newest installed server's programs.
fn installed() -> Option<PathBuf> {
    let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    bins.sort();
    bins.pop()
}

fn run_as_postgres(netns: Option<&str>, args: &[&str]) -> Result<(), String> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "runuser"]);
            c
        }
        None => Command::new("runuser"),
    };
    let out = cmd
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Postgres {
    /// Starts a fresh server with a database `burrow`; None (after printing SKIPPED, or failing
    /// when BURROW_REQUIRE_INTEROP is set) without root or the package.
    pub fn start(test: &str) -> Option<Postgres> {
        Self::start_in(test, None)
    }

    /// [`Postgres::start`] inside network namespace `netns` (its loopback), when given.
    pub fn start_in(test: &str, netns: Option<&str>) -> Option<Postgres> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let (true, Some(bin)) = (root, installed()) else {
            assert!(
                std::env::var_os("BURROW_REQUIRE_INTEROP").is_none(),
                "{test} needs root and postgresql"
            );
            eprintln!("SKIPPED {test}: needs root and PostgreSQL (package postgresql)");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("burrow-pg-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&dir)
            .status()
            .unwrap()
            .success());
        let data = dir.join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Postgres {
            bin,
            dir,
            data,
            port,
            netns: netns.map(str::to_owned),
        };
        pg.as_postgres(&[
            pg.bin.join("initdb").to_str().unwrap(),
            "-D",
            pg.data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ])
        .unwrap();
        pg.start_again().unwrap();
        pg.as_postgres(&[
            pg.bin.join("createdb").to_str().unwrap(),
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "burrow",
        ])
        .unwrap();
        Some(pg)
    }

    fn as_postgres(&self, args: &[&str]) -> Result<(), String> {
        run_as_postgres(self.netns.as_deref(), args)
    }

    /// The URL of database `burrow`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/burrow", self.port)
    }

    /// Starts the server (again, after [`Postgres::stop`]), waiting until it accepts
    /// connections.
    pub fn start_again(&self) -> Result<(), String> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        self.as_postgres(&[
            self.bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            self.data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            self.dir.join("pg.log").to_str().unwrap(),
            "-w",
            "start",
        ])
    }

    /// Stops the server the way an administrator's restart does (`-m fast`: sessions are
    /// ended, nothing committed is lost).
    pub fn stop(&self) -> Result<(), String> {
        self.as_postgres(&[
            self.bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            self.data.to_str().unwrap(),
            "-m",
            "fast",
            "-w",
            "stop",
        ])
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.as_postgres(&[
            self.bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            self.data.to_str().unwrap(),
            "-m",
            "immediate",
            "stop",
        ]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
