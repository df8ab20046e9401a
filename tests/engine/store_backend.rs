//! Which backend `[gateway] database` selects, checked at load (`Backend::from_settings`, the
//! one place that decides): a SQLite file by default, PostgreSQL for a `postgres://` URL; the
//! database keys' refusals name the key and never repeat a password. No server needed.

/// A PostgreSQL password only ever comes from `database_password_env`: one in the URL is
/// refused at load, naming the key and not repeating the password; a silently downgrading
/// `sslmode` is refused; TLS is checked by default off loopback.
#[test]
fn database_urls_are_checked_at_load_and_hold_no_password() {
    use cstagate::store::postgres::SslMode;
    for (bad, key) in [
        ("database = 'postgres://gw:s3cr3t-pw@db.example.com/cstagate'", "`database`"),
        ("database = 'postgresql://gw@db.example.com/cstagate?password=s3cr3t-pw'", "`database`"),
        ("database = 'postgres://gw@db.example.com/cstagate?sslmode=prefer'", "`database`"),
        ("database = 'postgres://db.example.com/cstagate'", "`database`"),
        ("database = 'postgres://gw@db.example.com:notaport/cstagate'", "`database`"),
        ("database = 'gateway.db'\ndatabase_password_env = 'PG_PASSWORD'", "`database_password_env`"),
        ("database = 'gateway.db'\ndatabase_ca = '/etc/ssl/ca.pem'", "`database_ca`"),
        ("database = 'postgres://gw@127.0.0.1/cstagate'\ndatabase_ca = '/nonexistent/ca.pem'", "`database_ca`"),
    ] {
        let e = cstagate::config::Config::parse(&format!("[gateway]\n{bad}\n")).unwrap_err().to_string();
        assert!(e.contains(key), "{bad}: {e}");
        assert!(!e.contains("s3cr3t-pw"), "the password is repeated: {e}");
    }
    let backend = |url: &str| match cstagate::config::Config::parse(&format!("[gateway]\ndatabase = '{url}'\ndatabase_password_env = 'PG_PASSWORD'\n")).unwrap().gateway.database_backend().unwrap() {
        cstagate::store::Backend::Postgres(t) => t.ssl_mode(),
        cstagate::store::Backend::Sqlite(p) => panic!("{url} taken for a SQLite file {}", p.display()),
    };
    assert_eq!(backend("postgres://gw@db.example.com/cstagate"), SslMode::VerifyFull, "off the machine: TLS, verified");
    assert_eq!(backend("postgres://gw@10.0.0.5:5433/cstagate?sslmode=require"), SslMode::Require);
    assert_eq!(backend("postgres://gw@db.example.com/cstagate?sslmode=disable"), SslMode::Disable, "the operator's explicit choice");
    assert_eq!(backend("postgres://gw@127.0.0.1/cstagate"), SslMode::Disable, "loopback");
    assert_eq!(backend("postgres://gw@localhost/cstagate"), SslMode::Disable, "loopback");
    assert!(matches!(cstagate::config::Config::parse("").unwrap().gateway.database_backend().unwrap(), cstagate::store::Backend::Sqlite(_)), "SQLite by default");
}
