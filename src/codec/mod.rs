//! The CSTA codec, sans-IO: bytes in, typed messages out, and back. No tokio, no clock, no
//! randomness.
//!
//! Layers, bottom up:
//! - [`framing`]: APDU boundaries on the TCP stream (2-byte length; Siemens `0x26`; the Alcatel
//!   `'B'`/`'P'` preamble).
//! - [`ber`]: X.690 BER tag-length-value reading and canonical writing.
//! - [`apdu`]: ACSE (X.227) and ROSE (X.880) APDUs; CSTA arguments decoded in a second step
//!   keyed by the operation ([`operation`]'s table); event reports.
//! - [`body`] and [`schemas`]: the member tables of each CSTA type per dialect (ECMA-285 Phase
//!   III; ECMA-217/218 Phase II as OXE speaks it), mapped onto one dialect-neutral model of
//!   [`values`].
//!
//! - [`xml`]: the third wire dialect, CSTA XML (ECMA-323, sessions of ECMA-354), mapped onto
//!   the same model.
//!
//! The ASN.1 modules in `asn1/` are the source of truth these tables follow; a test decodes every
//! capture and vector with an independent ASN.1 implementation compiled from them and compares.

pub mod acse;
mod acse_values;
pub mod apdu;
pub mod ber;
pub mod body;
pub mod framing;
pub mod names;
pub mod operation;
pub mod schemas;
pub mod values;
mod universal_failure;
pub mod xml;

pub use apdu::{Apdu, Argument, Event, EventReport, Invoke, LinkedId, Op, Reject, RejectProblem, ReturnError, ReturnResult};
pub use ber::{DecodeError, ErrorKind};
pub use body::{Body, Field, FieldName, Value, Wrapping};
pub use framing::{Framer, Framing};
pub use operation::{Code, Operation};
pub use schemas::EventKind;
pub use values::{ConnectionId, DeviceId, DeviceIdentifier, DeviceRef, Dialect, LocalDevice};
