//! The SQLite store's files on disk, beyond their modes on creation (`store_sqlite.rs`): modes
//! the owner already made private are left alone, and a file the store cannot inspect is an
//! error naming that file, never skipped.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cstagate::store::{SqliteStore, StoreError};

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cstagate-store-files-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// An operator who made the database 0700 (owner only, as some backup tools leave it) keeps that
/// mode: only bits for the group or others are a leak to fix.
#[test]
fn a_database_already_private_to_its_owner_keeps_its_mode() {
    let path = fresh_dir("owner-only").join("gateway.db");
    drop(SqliteStore::open(&path).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    drop(SqliteStore::open(&path).unwrap());
    assert_eq!(format!("{:o}", mode(&path)), "700");
}

/// A WAL path the store cannot look at (here a symbolic link to itself: ELOOP, not "not found")
/// stops the open with an error naming that file, rather than being taken for absent.
#[test]
fn a_database_file_that_cannot_be_inspected_is_an_error_naming_it() {
    let dir = fresh_dir("eloop");
    let path = dir.join("gateway.db");
    let wal = dir.join("gateway.db-wal");
    std::os::unix::fs::symlink(&wal, &wal).unwrap();
    match SqliteStore::open(&path) {
        Err(StoreError::File { path: p, source }) => {
            assert_eq!(p, wal.display().to_string());
            assert_ne!(source.kind(), std::io::ErrorKind::NotFound, "{source}");
        }
        Err(other) => panic!("the wrong error: {other}"),
        Ok(_) => panic!("a database beside an uninspectable WAL was opened"),
    }
}
