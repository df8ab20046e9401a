//! The Debian package (`cargo deb`, built by `.ci/run`): the binary, the hardened systemd unit,
//! the example configuration and the secrets file as conffiles (the env file mode 0600), and the
//! postinst that creates the service's user. Skipped with a notice where no package was built;
//! `CSTAGATE_REQUIRE_DEB=1` (CI) makes it mandatory. The example configuration itself is checked
//! everywhere.

use std::path::PathBuf;

/// The newest `target/debian/cstagate_*.deb`.
fn package() -> Option<PathBuf> {
    let dir = super::common::path("target/debian");
    std::fs::read_dir(dir).ok()?.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "deb") && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("cstagate_"))).max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

fn dpkg_deb(args: &[&str]) -> String {
    let out = std::process::Command::new("dpkg-deb").args(args).output().unwrap();
    assert!(out.status.success(), "dpkg-deb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_debian_package_holds_the_service_and_its_files() {
    let probe = "test -n \"$(ls target/debian/cstagate_*.deb 2>/dev/null)\" && command -v dpkg-deb";
    if !super::common::require_external("the Debian package (target/debian/cstagate_*.deb) and dpkg-deb", "CSTAGATE_REQUIRE_DEB", &["sh", "-c", &format!("cd {} && {probe}", env!("CARGO_MANIFEST_DIR"))], "cargo install cargo-deb --locked && cargo deb --locked --strip") {
        return;
    }
    let deb = package().expect("a package");
    let deb = deb.to_str().unwrap();
    let contents = dpkg_deb(&["-c", deb]);
    let entry = |path: &str| contents.lines().find(|l| l.ends_with(path)).unwrap_or_else(|| panic!("{path} not in the package:\n{contents}")).to_owned();
    assert!(entry("./usr/bin/cstagate").starts_with("-rwxr-xr-x"), "{contents}");
    assert!(entry("./etc/cstagate/env").starts_with("-rw-------"), "the secrets file is 0600: {contents}");
    entry("./etc/cstagate/gateway.toml");
    entry("/systemd/system/cstagate.service");
    let info = dpkg_deb(&["-I", deb]);
    assert!(info.contains("Package: cstagate"), "{info}");
    let dir = std::env::temp_dir().join(format!("cstagate-deb-{}", cstagate::random::id()));
    let control = dir.join("DEBIAN");
    std::fs::create_dir_all(&dir).unwrap();
    dpkg_deb(&["-e", deb, control.to_str().unwrap()]);
    let listed = std::fs::read_to_string(control.join("conffiles")).unwrap();
    for f in ["/etc/cstagate/gateway.toml", "/etc/cstagate/env"] {
        assert!(listed.lines().any(|l| l == f), "{f} is a conffile (kept on upgrade): {listed}");
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("useradd --system") && postinst.contains("cstagate"), "{postinst}");
    let files = dir.join("files");
    dpkg_deb(&["-x", deb, files.to_str().unwrap()]);
    let unit = ["lib", "usr/lib"].iter().map(|l| files.join(l).join("systemd/system/cstagate.service")).find(|p| p.exists()).expect("the unit");
    let unit = std::fs::read_to_string(unit).unwrap();
    for line in ["User=cstagate", "StateDirectory=cstagate", "ProtectSystem=strict", "NoNewPrivileges=yes", "ExecReload=/bin/kill -HUP $MAINPID", "EnvironmentFile=/etc/cstagate/env"] {
        assert!(unit.lines().any(|l| l == line), "the unit has {line}:\n{unit}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The example configuration the package installs is a valid configuration (only its secrets
/// are missing, as they are until the admin fills /etc/cstagate/env).
#[test]
fn the_packaged_example_configuration_validates() {
    let text = std::fs::read_to_string(super::common::path("packaging/gateway.toml")).unwrap();
    let config = cstagate::config::Config::parse(&text).unwrap_or_else(|e| panic!("packaging/gateway.toml: {e}"));
    assert_eq!(config.gateway.database, std::path::Path::new("/var/lib/cstagate/gateway.db"), "in the unit's StateDirectory");
    let env = std::fs::read_to_string(super::common::path("packaging/env")).unwrap();
    let mut named: Vec<&str> = [config.gateway.admin_token_env.as_deref(), config.gateway.ivr_secret_env.as_deref()].into_iter().flatten().chain(config.tenant.iter().map(|t| t.token_env.as_str())).collect();
    named.sort_unstable();
    let mut listed: Vec<&str> = env.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
    listed.sort_unstable();
    assert_eq!(listed, named, "packaging/env lists the variables gateway.toml names");
}
