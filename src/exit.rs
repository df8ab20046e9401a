//! The exit codes of every `cstagate` command: one table, so that a script or a service manager
//! reads the same class of failure from the same number whatever the command. The README's
//! "Exit codes" table is this enum.

use std::process::ExitCode;

/// How a command ended. Each class of failure has one code across commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done: the command did what it was asked.
    Ok = 0,
    /// A failure of no class below (the demo's outcome was not the scenario's).
    Failure = 1,
    /// The command line is wrong: an unknown option or bad value (clap's own code), or what it
    /// names is not there (an input file that cannot be read, in no known format, a port no
    /// packet uses).
    Usage = 2,
    /// The PBX refused us: the ACSE association or the CSTA XML application session was
    /// rejected, or the session was terminated.
    Rejected = 3,
    /// Protocol error: the PBX answered with a CSTA error, or a trace holds APDUs that do not
    /// decode.
    Protocol = 4,
    /// The configuration is invalid: a key, a value, a reference, a secret or a file it names.
    Config = 5,
    /// Cannot start: a listen address in use or not ours, the database cannot be opened, no
    /// async runtime.
    CannotStart = 6,
    /// Connection failed: the PBX refused or did not answer, TLS failed, or it timed out.
    Connection = 7,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}
