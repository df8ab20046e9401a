//! A private PostgreSQL server for tests and benchmarks: `initdb` into a temporary directory,
//! `postgres` on a free loopback port with `fsync=on`, a database per test.
//!
//! The programs are found on `PATH` (`initdb`), then in `/usr/lib/postgresql/*/bin` (Debian's
//! packages do not put them on `PATH`). Logins: `trust` on the server's Unix socket (a directory
//! only its user can enter) for the test kit's own `psql`, `scram-sha-256` with a random password
//! over TCP, as a gateway logs in. Run as root (CI), the server runs as the `postgres` system user
//! (or `nobody`) through `runuser`, since PostgreSQL refuses to run as root.
//!
//! The server runs under a small shell that holds the test process's end of a pipe: when the
//! [`PgServer`] is dropped or the test process ends (a shared server in a `static` is never
//! dropped; a killed test never drops anything), the pipe closes, the shell stops the server with
//! a fast shutdown (SIGINT, as `pg_ctl stop -m fast`) and, for a shared one, removes its
//! directory. No server outlives its test binary.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long the server has to start, or to stop.
const START_LIMIT: Duration = Duration::from_secs(60);

/// The user the tests log in as (the cluster's superuser).
pub const USER: &str = "cstagate";

/// The watchdog: start `postgres` ($1 bin dir, $2 base dir, $3 port), stop it with SIGINT once
/// stdin closes, wait for it, and remove the base directory when $4 is 1 (before saying so on
/// stderr: once the test process is gone, that write kills the shell with SIGPIPE).
const WATCHDOG: &str = r#"exec 3<&0
"$1/postgres" -D "$2/data" -p "$3" -k "$2" -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on -c max_connections=200 -c shared_buffers=16MB 3<&- </dev/null &
pid=$!
( cat >/dev/null; kill -INT "$pid" ) <&3 >/dev/null 2>&1 &
exec 3<&-
wait "$pid"
status=$?
if [ "$4" = 1 ]; then rm -rf "$2"; fi
echo "cstagate-testkit: postgres exited ($status)" >&2
"#;

/// Where `initdb`, `postgres` and `psql` are, if anywhere.
pub fn find_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("initdb")).find(|f| f.is_file()));
    if let Some(dir) = on_path.and_then(|f| std::fs::canonicalize(f).ok()).and_then(|f| f.parent().map(Path::to_path_buf)) {
        if dir.join("postgres").is_file() {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("initdb").is_file() && bin.join("postgres").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Whether the PostgreSQL tests can run: the programs are found. Otherwise a notice on stderr
/// and `false` (the test is skipped), unless `CSTAGATE_REQUIRE_POSTGRES=1` (CI), which makes a
/// missing server a failure.
pub fn available() -> bool {
    if find_bin().is_some() {
        return true;
    }
    assert!(std::env::var("CSTAGATE_REQUIRE_POSTGRES").as_deref() != Ok("1"), "PostgreSQL is required (CSTAGATE_REQUIRE_POSTGRES=1) but no initdb was found on PATH or in /usr/lib/postgresql/*/bin; install it: apt-get install postgresql");
    let _ = writeln!(std::io::stderr(), "NOTICE: PostgreSQL not found (no initdb on PATH or in /usr/lib/postgresql/*/bin): this test is SKIPPED. Install it (apt-get install postgresql) to run it; CSTAGATE_REQUIRE_POSTGRES=1 makes it mandatory, as in CI.");
    false
}

/// The server shared by a test binary (or a benchmark), started on first use; `None` (with the
/// notice of [`available`]) when PostgreSQL is not installed.
///
/// # Panics
/// PostgreSQL is installed but the server does not start.
pub fn shared() -> Option<&'static PgServer> {
    static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();
    SERVER.get_or_init(|| available().then(|| PgServer::start_shared().unwrap_or_else(|e| panic!("private PostgreSQL: {e}")))).as_ref()
}

/// A private PostgreSQL server (see the module doc).
pub struct PgServer {
    bin: PathBuf,
    base: PathBuf,
    port: u16,
    password: String,
    /// The system user it runs as, when the tests run as root.
    run_as: Option<String>,
    /// Remove the base directory when it stops (a shared server: nothing else will).
    shared: bool,
    watchdog: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl PgServer {
    /// A server of its own (for a test that stops and restarts it); stopped and removed on drop.
    ///
    /// # Errors
    /// No PostgreSQL, `initdb` fails, or the server is not ready in time (with its log).
    pub fn start() -> Result<PgServer, String> {
        PgServer::init(false)
    }

    fn start_shared() -> Result<PgServer, String> {
        PgServer::init(true)
    }

    fn init(shared: bool) -> Result<PgServer, String> {
        let bin = find_bin().ok_or("no PostgreSQL found")?;
        let base = std::env::temp_dir().join(format!("cstagate-pg-{}-{}", std::process::id(), crate::random::id()));
        std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        }
        let run_as = if is_root() { Some(system_user()?) } else { None };
        let password = crate::random::id();
        let pwfile = base.join("pw");
        std::fs::write(&pwfile, &password).map_err(|e| e.to_string())?;
        if let Some(user) = &run_as {
            let (uid, gid) = ids(user)?;
            for p in [&base, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", p.display()))?;
            }
        }
        let data = base.join("data");
        let out = command(&run_as, &bin.join("initdb"))
            .args(["-D".as_ref(), data.as_os_str(), "-U".as_ref(), USER.as_ref(), "--auth-local=trust".as_ref(), "--auth-host=scram-sha-256".as_ref(), "-E".as_ref(), "UTF8".as_ref(), "--locale=C".as_ref(), "--no-sync".as_ref()])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        let _ = std::fs::remove_file(&pwfile);
        if !out.status.success() {
            return Err(format!("initdb failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        }
        let mut s = PgServer { bin, base, port: 0, password, run_as, shared, watchdog: None, log: Arc::default() };
        // A port that was free a moment ago may be taken by then: a few tries.
        let mut last = String::new();
        for _ in 0..3 {
            s.port = free_port()?;
            match s.run() {
                Ok(()) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Start the server (again) on its port and wait until it accepts connections.
    ///
    /// # Errors
    /// It exits or is not ready within a minute: its log.
    pub fn run(&mut self) -> Result<(), String> {
        if self.watchdog.is_some() {
            return Ok(());
        }
        let mut child = command(&self.run_as, Path::new("/bin/sh"))
            .args(["-c", WATCHDOG, "sh"])
            .arg(&self.bin)
            .arg(&self.base)
            .arg(self.port.to_string())
            .arg(if self.shared { "1" } else { "0" })
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start postgres: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("database system is ready to accept connections") {
                    let _ = ready_tx.send(true);
                }
                if line.contains("cstagate-testkit: postgres exited") {
                    let _ = ready_tx.send(false);
                }
                let mut l = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if l.len() >= 200 {
                    l.remove(0);
                }
                l.push(line);
            }
            let _ = ready_tx.send(false);
        });
        self.watchdog = Some(child);
        match ready.recv_timeout(START_LIMIT) {
            Ok(true) => Ok(()),
            _ => {
                self.stop();
                Err(format!("postgres did not start on port {}:\n{}", self.port, self.log()))
            }
        }
    }

    /// Stop the server (fast shutdown: sessions are ended, what was committed is on disk) and
    /// wait until it has exited.
    pub fn stop(&mut self) {
        let Some(mut child) = self.watchdog.take() else { return };
        drop(child.stdin.take());
        let end = Instant::now() + START_LIMIT;
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Serve TLS from now on with the certificate chain and key in these PEM files (copied into
    /// the server's directory, the key readable by the server's user only), applied by a
    /// configuration reload (`ssl` needs no restart). Clients that ask for TLS get it; the
    /// others still connect in clear (the server's `pg_hba.conf` is `host`, not `hostssl`).
    ///
    /// # Errors
    /// A file cannot be copied, or the server refuses the settings (its message).
    pub fn enable_tls(&self, cert: &Path, key: &Path) -> Result<(), String> {
        let (cert_to, key_to) = (self.base.join("server.crt"), self.base.join("server.key"));
        for (from, to, mode) in [(cert, &cert_to, 0o644), (key, &key_to, 0o600)] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::copy(from, to).map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))?;
            std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
            if let Some(user) = &self.run_as {
                let (uid, gid) = ids(user)?;
                std::os::unix::fs::chown(to, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", to.display()))?;
            }
        }
        let quote = |p: &Path| p.display().to_string().replace('\'', "''");
        for sql in [format!("ALTER SYSTEM SET ssl_cert_file = '{}'", quote(&cert_to)), format!("ALTER SYSTEM SET ssl_key_file = '{}'", quote(&key_to)), "ALTER SYSTEM SET ssl = on".to_owned(), "SELECT pg_reload_conf()".to_owned()] {
            self.psql("postgres", &sql)?;
        }
        // The reload is asynchronous: wait until the server says TLS is on (or gave up on it).
        let end = Instant::now() + START_LIMIT;
        while Instant::now() < end {
            if self.psql("postgres", "SHOW ssl")?.trim() == "on" {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("the server did not turn TLS on:\n{}", self.log()))
    }

    /// The server's log so far (its last 200 lines).
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).join("\n")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of [`USER`] (over TCP).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgres://cstagate@127.0.0.1:port/db`: over TCP with the password (no `sslmode`:
    /// loopback, so `disable`).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The URL of `db` over the server's Unix socket, where no password is asked.
    pub fn socket_url(&self, db: &str) -> String {
        let dir: String = self.base.display().to_string().bytes().map(|b| if b == b'/' { "%2F".to_owned() } else { (b as char).to_string() }).collect();
        format!("postgres://{USER}@{dir}:{}/{db}", self.port)
    }

    /// A new, empty database (`hint` and a random suffix) and its name.
    ///
    /// # Panics
    /// The server refuses (its message in the panic).
    pub fn database(&self, hint: &str) -> String {
        let name = format!("t_{}_{}", hint.chars().filter(char::is_ascii_alphanumeric).take(30).collect::<String>().to_lowercase(), &crate::random::id()[..8].to_lowercase());
        self.psql("postgres", &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        name
    }

    /// Run `sql` in `db` with `psql` over the Unix socket: its output (unaligned, tuples only),
    /// or its error with the SQLSTATE (`ERROR:  23001: …`).
    ///
    /// # Errors
    /// The statement failed, or `psql` could not run.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "-h"])
            .arg(&self.base)
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", db, "-c", "\\set VERBOSITY verbose", "-c", sql])
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The unprivileged user a root test process runs the server as: `postgres` (Debian's package
/// creates it), else `nobody`.
fn system_user() -> Result<String, String> {
    ["postgres", "nobody"].iter().find(|u| ids(u).is_ok()).map(|u| (*u).to_owned()).ok_or_else(|| "running as root, and neither a postgres nor a nobody user to run PostgreSQL as".into())
}

fn ids(user: &str) -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let o = Command::new("id").args([flag, user]).output().map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&o.stdout).trim().parse().map_err(|_| format!("no user {user}"))
    };
    Ok((id("-u")?, id("-g")?))
}

/// `program`, through `runuser -u user --` when a user is given.
fn command(run_as: &Option<String>, program: &Path) -> Command {
    match run_as {
        None => Command::new(program),
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program);
            c
        }
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| e.to_string())
}
