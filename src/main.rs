//! The `cstagate` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use cstagate::capture::{self, CapturedFrame};
use cstagate::codec::apdu::guess_dialect;
use cstagate::codec::{Dialect, Framing};
use cstagate::decode;

#[derive(Parser)]
#[command(name = "cstagate", version, about = "CSTA CTI gateway: PBX links and self-service extension association")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode PBX traces (.frames.tsv, hex lines, pcap/pcapng): one line or JSON object per APDU.
    Decode {
        /// PBX profile: framing and CSTA dialect. `auto` guesses both from the trace.
        #[arg(long, value_enum, default_value = "auto")]
        dialect: Profile,
        /// One JSON object per line instead of readable lines.
        #[arg(long)]
        json: bool,
        /// In pcaps, the PBX's CSTA TCP port (default: 2555, 7001, 8800 or 33333 when seen).
        #[arg(long)]
        port: Option<u16>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Profile {
    /// ECMA-285 Phase III, 2-byte length framing (Panasonic and most Phase III PBXs).
    Phase3,
    /// Alcatel OXE: Phase II, 2-byte length framing.
    Oxe,
    /// Siemens HiPath / OpenScape Business: Phase III, 0x26 framing.
    Hipath,
    /// Guess framing and dialect per file.
    Auto,
}

impl Profile {
    fn fixed(self) -> Option<(Framing, Dialect)> {
        match self {
            Profile::Phase3 => Some((Framing::TwoByteLength, Dialect::Phase3)),
            Profile::Oxe => Some((Framing::TwoByteLength, Dialect::Phase2)),
            Profile::Hipath => Some((Framing::Siemens, Dialect::Phase3)),
            Profile::Auto => None,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Decode { dialect, json, port, files } => run_decode(dialect, json, port, &files),
    }
}

fn run_decode(profile: Profile, json: bool, port: Option<u16>, files: &[PathBuf]) -> ExitCode {
    let mut failed = 0usize;
    let mut n = 0usize;
    let mut out = std::io::stdout().lock();
    for path in files {
        let frames = match capture::read_file(path, profile.fixed().map(|p| p.0), port) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("cstagate decode: {e}");
                failed += 1;
                continue;
            }
        };
        let (framing, dialect) = profile.fixed().unwrap_or_else(|| {
            let framing = capture::guess_framing(&frames);
            (framing, guess(&frames, framing))
        });
        for frame in &frames {
            n += 1;
            let result = decode::decode_frame(frame, framing, dialect);
            if result.is_err() {
                failed += 1;
            }
            let j = decode::to_json(n, frame, &result, dialect);
            let line = if json { j.to_string() } else { format!("{} [{}]", decode::to_line(&j), frame.origin) };
            // A closed pipe (`| head`) ends the output quietly.
            if writeln!(out, "{line}").is_err() {
                return ExitCode::from(if failed > 0 { 1 } else { 0 });
            }
        }
    }
    if failed > 0 {
        eprintln!("cstagate decode: {failed} APDU(s) or file(s) failed to decode");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The dialect the first discriminating APDU of a trace shows; Phase III when none does.
fn guess(frames: &[CapturedFrame], framing: Framing) -> Dialect {
    frames
        .iter()
        .filter_map(|f| f.framed.as_ref().ok().and_then(|b| capture::unframe(framing, b).ok()))
        .find_map(|apdu| guess_dialect(&apdu))
        .unwrap_or(Dialect::Phase3)
}
