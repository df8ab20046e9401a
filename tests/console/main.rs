//! The admin console (`/console/`) in a real headless Chromium, driven over WebDriver
//! (chromedriver) against the real gateway on loopback with the simulated PBX and IVR.
//!
//! One test binary per subject (cargo builds and links each `tests/*/main.rs` once); each
//! file below is one group of tests. Chromium and chromedriver are external programs: where
//! they are missing the tests print a notice and skip; CI installs them and sets
//! `CSTAGATE_REQUIRE_CHROMIUM=1`, which makes them mandatory.

#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;

mod browser;
mod console_admin;
mod console_tenant;
