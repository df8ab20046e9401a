//! The APDUs on a CSTA link: ACSE (X.227) association APDUs and ROSE (X.880) Invoke,
//! ReturnResult, ReturnError and Reject, with the CSTA argument decoded in a second step keyed
//! by the operation (the argument is an open type, brief §2.1), and the event report
//! (`cSTAEventReport`, ECMA-285 §4.4 / ECMA-217) with its dialect-specific event numbering.
//!
//! [`Apdu::decode`] is the codec's entry point: one framed APDU's bytes in, one typed value out,
//! or a [`DecodeError`] naming what was wrong and where. It never panics.

use bytes::Bytes;

use super::acse;
use super::ber::{DecodeError, ErrorKind, Reader, Result, Tag, Tlv, Writer};
use super::body::{Body, Form, Wrapping};
use super::operation::{Code, Operation};
use super::schemas::{self, EventKind};
use super::values::Dialect;

pub use super::universal_failure::{ErrorCategory, ErrorParameter, UniversalFailure};
use super::universal_failure::{decode_universal_failure, encode_universal_failure};

/// One APDU.
#[derive(Debug, Clone, PartialEq)]
pub enum Apdu {
    Aarq(Body),
    Aare(Body),
    Rlrq(Body),
    Rlre(Body),
    Abrt(Body),
    Invoke(Invoke),
    Result(ReturnResult),
    Error(ReturnError),
    Reject(Reject),
}

/// An operation as the rest of the program sees it: a known CSTA operation, or a code the
/// dialect does not name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    Known(Operation),
    Other(Code),
}

impl Op {
    fn from_code(code: Code, d: Dialect) -> Op {
        match code.operation(d) {
            Some(op) => Op::Known(op),
            None => Op::Other(code),
        }
    }
    pub fn known(&self) -> Option<Operation> {
        match self {
            Op::Known(o) => Some(*o),
            Op::Other(_) => None,
        }
    }
    pub fn name(&self, d: Dialect) -> String {
        match self {
            Op::Known(o) => o.name(d).to_owned(),
            Op::Other(c) => c.name(d),
        }
    }
    /// The wire code in `d`.
    ///
    /// # Errors
    /// If the dialect has no such operation.
    pub fn code(&self, d: Dialect) -> std::result::Result<Code, EncodeError> {
        match self {
            Op::Known(o) => o.code(d).map(Code::Local).ok_or(EncodeError::NotInDialect(o.name(Dialect::Phase3), d)),
            Op::Other(c) => Ok(c.clone()),
        }
    }
}

/// A ROSE argument or result value after the second decoding step.
#[derive(Debug, Clone, PartialEq)]
pub enum Argument {
    Absent,
    Body(Body),
    Event(EventReport),
    /// An operation the codec does not decode: the value's TLV, verbatim.
    Opaque(Bytes),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Invoke {
    /// `None` for the `absent` InvokeId alternative.
    pub invoke_id: Option<i64>,
    pub linked_id: Option<LinkedId>,
    pub op: Op,
    pub argument: Argument,
}

/// X.880 `linkedId CHOICE { present [0] IMPLICIT InvokeId, absent [1] IMPLICIT NULL }`: the
/// invoke this one is linked to, or the explicit `absent` (kept so that it re-encodes as it
/// came, FUZZING.md finding 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkedId {
    Present(i64),
    Absent,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReturnResult {
    pub invoke_id: Option<i64>,
    /// The operation and its result; `None` when the PBX returned no result SEQUENCE.
    pub result: Option<(Op, Argument)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReturnError {
    pub invoke_id: Option<i64>,
    pub code: Code,
    pub parameter: Option<ErrorParameter>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    pub invoke_id: Option<i64>,
    pub problem: RejectProblem,
}

/// X.880 Reject problem: which kind of APDU was rejected, and the problem number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectProblem {
    General(i64),
    Invoke(i64),
    ReturnResult(i64),
    ReturnError(i64),
}

impl RejectProblem {
    pub fn tag_number(self) -> u8 {
        match self {
            RejectProblem::General(_) => 0,
            RejectProblem::Invoke(_) => 1,
            RejectProblem::ReturnResult(_) => 2,
            RejectProblem::ReturnError(_) => 3,
        }
    }
    pub fn value(self) -> i64 {
        match self {
            RejectProblem::General(v) | RejectProblem::Invoke(v) | RejectProblem::ReturnResult(v) | RejectProblem::ReturnError(v) => v,
        }
    }
}

/// `cSTAEventReport` argument.
#[derive(Debug, Clone, PartialEq)]
pub struct EventReport {
    /// The monitor cross-reference id the event belongs to.
    pub xref: Bytes,
    pub event: Event,
    /// Report-level `CSTACommonArguments` (OXE puts its timestamp and private data here),
    /// verbatim.
    pub extensions: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Call { kind: EventKind, body: Body },
    /// Any other event (physical or logical device features, maintenance, vendor events,
    /// call-control kinds not decoded): the whole `EventSpecificInfo` TLV, verbatim.
    Other { group: u32, alternative: Option<u32>, raw: Bytes },
}

impl Event {
    pub fn kind(&self) -> Option<EventKind> {
        match self {
            Event::Call { kind, .. } => Some(*kind),
            Event::Other { .. } => None,
        }
    }
    pub fn body(&self) -> Option<&Body> {
        match self {
            Event::Call { body, .. } => Some(body),
            Event::Other { .. } => None,
        }
    }
}

/// Why an APDU could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("operation {0} does not exist in dialect {1:?}")]
    NotInDialect(&'static str, Dialect),
    #[error("event {0} does not exist in dialect {1:?}")]
    EventNotInDialect(&'static str, Dialect),
}

const APDU: &str = "APDU";

impl Apdu {
    /// Decode one APDU (the bytes of one frame, without the frame header).
    ///
    /// # Errors
    /// Malformed BER, an unknown APDU tag, trailing bytes, or a known operation whose argument
    /// does not match its type. Unknown operations and event kinds are not errors.
    pub fn decode(apdu: &Bytes, dialect: Dialect) -> Result<Apdu> {
        let mut r = Reader::new(apdu);
        let t = r.required(APDU)?;
        r.finish()?;
        Ok(match t.tag.0 {
            0x60 => Apdu::Aarq(Body::decode(&r, &t, acse::AARQ, dialect, "AARQ")?),
            0x61 => Apdu::Aare(Body::decode(&r, &t, acse::AARE, dialect, "AARE")?),
            0x62 => Apdu::Rlrq(Body::decode(&r, &t, acse::RLRQ, dialect, "RLRQ")?),
            0x63 => Apdu::Rlre(Body::decode(&r, &t, acse::RLRE, dialect, "RLRE")?),
            0x64 => Apdu::Abrt(Body::decode(&r, &t, acse::ABRT, dialect, "ABRT")?),
            0xA1 => Apdu::Invoke(decode_invoke(&r, &t, dialect).map_err(|e| e.within("Invoke"))?),
            0xA2 => Apdu::Result(decode_result(&r, &t, dialect).map_err(|e| e.within("ReturnResult"))?),
            0xA3 => Apdu::Error(decode_error(&r, &t).map_err(|e| e.within("ReturnError"))?),
            0xA4 => Apdu::Reject(decode_reject(&r, &t).map_err(|e| e.within("Reject"))?),
            _ => return Err(DecodeError::new(ErrorKind::UnexpectedTag { expected: "ACSE or ROSE APDU", found: t.tag }, t.start)),
        })
    }

    /// Encode canonically in `dialect`, appending to `out`.
    ///
    /// # Errors
    /// An operation or event the dialect does not have.
    pub fn encode(&self, dialect: Dialect, out: &mut Vec<u8>) -> std::result::Result<(), EncodeError> {
        // Resolve everything fallible first so the writer closures stay infallible.
        let mut w = Writer::new(out);
        match self {
            Apdu::Aarq(b) => b.encode(&mut w, acse::AARQ, dialect, Some(Tag(0x60))),
            Apdu::Aare(b) => b.encode(&mut w, acse::AARE, dialect, Some(Tag(0x61))),
            Apdu::Rlrq(b) => b.encode(&mut w, acse::RLRQ, dialect, Some(Tag(0x62))),
            Apdu::Rlre(b) => b.encode(&mut w, acse::RLRE, dialect, Some(Tag(0x63))),
            Apdu::Abrt(b) => b.encode(&mut w, acse::ABRT, dialect, Some(Tag(0x64))),
            Apdu::Invoke(i) => {
                let code = i.op.code(dialect)?;
                check_argument(&i.argument, dialect)?;
                w.constructed(Tag(0xA1), |w| {
                    invoke_id(w, i.invoke_id);
                    match i.linked_id {
                        Some(LinkedId::Present(l)) => w.integer(Tag(0x80), l),
                        Some(LinkedId::Absent) => w.null(Tag(0x81)),
                        None => {}
                    }
                    write_code(w, &code);
                    encode_argument(w, &i.op, &i.argument, dialect, false);
                });
            }
            Apdu::Result(res) => {
                let code = match &res.result {
                    Some((op, arg)) => {
                        check_argument(arg, dialect)?;
                        Some(op.code(dialect)?)
                    }
                    None => None,
                };
                w.constructed(Tag(0xA2), |w| {
                    invoke_id(w, res.invoke_id);
                    if let (Some((op, arg)), Some(code)) = (&res.result, &code) {
                        w.constructed(Tag::SEQUENCE, |w| {
                            write_code(w, code);
                            encode_argument(w, op, arg, dialect, true);
                        });
                    }
                });
            }
            Apdu::Error(e) => w.constructed(Tag(0xA3), |w| {
                invoke_id(w, e.invoke_id);
                write_code(w, &e.code);
                match &e.parameter {
                    Some(ErrorParameter::UniversalFailure(u)) => encode_universal_failure(w, u, dialect),
                    Some(ErrorParameter::Opaque(b)) => w.raw(b),
                    None => {}
                }
            }),
            Apdu::Reject(rj) => w.constructed(Tag(0xA4), |w| {
                invoke_id(w, rj.invoke_id);
                w.integer(Tag(0x80 | u32::from(rj.problem.tag_number())), rj.problem.value());
            }),
        }
        Ok(())
    }

    /// Encode into a new buffer.
    ///
    /// # Errors
    /// As [`Apdu::encode`].
    pub fn to_vec(&self, dialect: Dialect) -> std::result::Result<Vec<u8>, EncodeError> {
        let mut v = Vec::with_capacity(64);
        self.encode(dialect, &mut v)?;
        Ok(v)
    }

    /// The APDU's kind as named in `cstagate decode --json`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Apdu::Aarq(_) => "aarq",
            Apdu::Aare(_) => "aare",
            Apdu::Rlrq(_) => "rlrq",
            Apdu::Rlre(_) => "rlre",
            Apdu::Abrt(_) => "abrt",
            Apdu::Invoke(_) => "invoke",
            Apdu::Result(_) => "result",
            Apdu::Error(_) => "error",
            Apdu::Reject(_) => "reject",
        }
    }

    pub fn invoke_id(&self) -> Option<i64> {
        match self {
            Apdu::Invoke(i) => i.invoke_id,
            Apdu::Result(r) => r.invoke_id,
            Apdu::Error(e) => e.invoke_id,
            Apdu::Reject(r) => r.invoke_id,
            _ => None,
        }
    }

    // ---- constructors for what the gateway and the simulator send ----

    /// Invoke a CSTA service.
    pub fn invoke(invoke_id: i64, op: Operation, argument: Body) -> Apdu {
        Apdu::Invoke(Invoke { invoke_id: Some(invoke_id), linked_id: None, op: Op::Known(op), argument: Argument::Body(argument) })
    }

    /// Answer an invoke with a result.
    pub fn result(invoke_id: i64, op: Operation, result: Body) -> Apdu {
        Apdu::Result(ReturnResult { invoke_id: Some(invoke_id), result: Some((Op::Known(op), Argument::Body(result))) })
    }

    /// An event report invoke.
    pub fn event(invoke_id: i64, report: EventReport) -> Apdu {
        Apdu::event_with_id(Some(invoke_id), report)
    }

    /// An event report invoke whose invoke id may be absent (CSTA XML without a header).
    pub fn event_with_id(invoke_id: Option<i64>, report: EventReport) -> Apdu {
        Apdu::Invoke(Invoke { invoke_id, linked_id: None, op: Op::Known(Operation::EventReport), argument: Argument::Event(report) })
    }

    /// A universalFailure ReturnError.
    pub fn universal_failure(invoke_id: i64, category: ErrorCategory, value: Option<i64>) -> Apdu {
        Apdu::Error(ReturnError {
            invoke_id: Some(invoke_id),
            code: Code::Local(1),
            parameter: Some(ErrorParameter::UniversalFailure(UniversalFailure { category, value, explicit: None })),
        })
    }

    pub fn reject(invoke_id: Option<i64>, problem: RejectProblem) -> Apdu {
        Apdu::Reject(Reject { invoke_id, problem })
    }

    /// Give the argument or result this side originates the Phase II form `wrapping` when its
    /// type is one whose shape is unverified ([`Form::Bare`], asn1/README.md P8) and the body
    /// was built here; a decoded body keeps the form it came in. Anything else is unchanged.
    #[must_use]
    pub fn shaped(mut self, dialect: Dialect, wrapping: Wrapping) -> Apdu {
        let target = match &mut self {
            Apdu::Invoke(i) => i.op.known().map(|o| (schemas::argument(o, dialect), &mut i.argument)),
            Apdu::Result(ReturnResult { result: Some((op, arg)), .. }) => op.known().map(|o| (schemas::result(o, dialect), arg)),
            _ => None,
        };
        if let Some((Some(Form::Bare(_)), Argument::Body(b))) = target {
            b.wrapping.get_or_insert(wrapping);
        }
        self
    }

    /// The invoke id of a ReturnResult or ReturnError, read without decoding the rest: for an
    /// answer whose body does not decode, so that the request it answers can still be told.
    pub fn answer_invoke_id(apdu: &Bytes) -> Option<i64> {
        let mut r = Reader::new(apdu);
        let t = r.next().ok()??;
        if !matches!(t.tag.0, 0xA2 | 0xA3) {
            return None;
        }
        let mut s = r.enter(&t).ok()?;
        let id = s.next().ok()??;
        (id.tag == Tag::INTEGER).then(|| s.integer(&id, "invokeId").ok()).flatten()
    }
}

fn invoke_id(w: &mut Writer<'_>, id: Option<i64>) {
    match id {
        Some(i) => w.integer(Tag::INTEGER, i),
        None => w.null(Tag::NULL),
    }
}

fn write_code(w: &mut Writer<'_>, code: &Code) {
    match code {
        Code::Local(c) => w.integer(Tag::INTEGER, *c),
        Code::Global(oid) => w.primitive(Tag::OID, oid),
    }
}

fn check_argument(arg: &Argument, d: Dialect) -> std::result::Result<(), EncodeError> {
    if let Argument::Event(EventReport { event: Event::Call { kind, .. }, .. }) = arg {
        if kind.position(d).is_none() {
            return Err(EncodeError::EventNotInDialect(kind.name(), d));
        }
    }
    Ok(())
}

fn encode_argument(w: &mut Writer<'_>, op: &Op, arg: &Argument, d: Dialect, is_result: bool) {
    match arg {
        Argument::Absent => {}
        Argument::Opaque(b) => w.raw(b),
        Argument::Event(ev) => encode_event_report(w, ev, d),
        Argument::Body(body) => {
            let form = op.known().and_then(|o| if is_result { schemas::result(o, d) } else { schemas::argument(o, d) });
            match form {
                Some(f) => body.encode(w, f, d, None),
                // A body for an operation without a schema: only its raw members can be written.
                None => body.encode(w, Form::Sequence(&[]), d, None),
            }
        }
    }
}

fn decode_invoke_id(r: &mut Reader<'_>) -> Result<Option<i64>> {
    let t = r.required("invokeId")?;
    match t.tag {
        Tag::INTEGER => Ok(Some(r.integer(&t, "invokeId")?)),
        Tag::NULL => {
            r.null(&t, "invokeId")?;
            Ok(None)
        }
        _ => Err(DecodeError::new(ErrorKind::UnexpectedTag { expected: "invokeId INTEGER or NULL", found: t.tag }, t.start)),
    }
}

fn decode_code(r: &Reader<'_>, t: &Tlv) -> Result<Code> {
    match t.tag {
        Tag::INTEGER => Ok(Code::Local(r.integer(t, "operation code")?)),
        Tag::OID => Ok(Code::Global(r.octets(t, "operation code")?)),
        _ => Err(DecodeError::new(ErrorKind::UnexpectedTag { expected: "operation code", found: t.tag }, t.start)),
    }
}

fn decode_invoke(r: &Reader<'_>, t: &Tlv, d: Dialect) -> Result<Invoke> {
    t.constructed("Invoke")?;
    let mut s = r.enter(t)?;
    let invoke_id = decode_invoke_id(&mut s)?;
    let mut next = s.required("opcode")?;
    let mut linked_id = None;
    if next.tag == Tag(0x80) {
        linked_id = Some(LinkedId::Present(s.integer(&next, "linkedId")?));
        next = s.required("opcode")?;
    } else if next.tag == Tag(0x81) {
        s.null(&next, "linkedId")?;
        linked_id = Some(LinkedId::Absent);
        next = s.required("opcode")?;
    }
    let op = Op::from_code(decode_code(&s, &next)?, d);
    let argument = match s.next()? {
        None => Argument::Absent,
        Some(a) => decode_argument(&s, &a, &op, d, false)?,
    };
    s.finish()?;
    Ok(Invoke { invoke_id, linked_id, op, argument })
}

fn decode_argument(r: &Reader<'_>, a: &Tlv, op: &Op, d: Dialect, is_result: bool) -> Result<Argument> {
    let Some(known) = op.known() else { return Ok(Argument::Opaque(r.raw(a))) };
    if known == Operation::EventReport && !is_result {
        return Ok(Argument::Event(decode_event_report(r, a, d).map_err(|e| e.within("CSTAEventReportArgument"))?));
    }
    let form = if is_result { schemas::result(known, d) } else { schemas::argument(known, d) };
    match form {
        // An argument or result that is a SEQUENCE comes as a universal SEQUENCE (30), or as the
        // NULL of a result without data: only event bodies and ACSE APDUs are implicitly tagged.
        // Any other tag would go out again as 30, so it is an error, not a silent rewrite
        // (FUZZING.md finding 6).
        Some(Form::Sequence(_)) if a.tag != Tag::SEQUENCE && a.tag != Tag::NULL => {
            Err(DecodeError::new(ErrorKind::UnexpectedTag { expected: "SEQUENCE", found: a.tag }, a.start).within(known.name(d)))
        }
        Some(f) => Ok(Argument::Body(Body::decode(r, a, f, d, known.name(d))?)),
        None => Ok(Argument::Opaque(r.raw(a))),
    }
}

fn decode_result(r: &Reader<'_>, t: &Tlv, d: Dialect) -> Result<ReturnResult> {
    t.constructed("ReturnResult")?;
    let mut s = r.enter(t)?;
    let invoke_id = decode_invoke_id(&mut s)?;
    let result = match s.next()? {
        None => None,
        Some(seq) => {
            seq.expect(Tag::SEQUENCE, "result SEQUENCE")?;
            let mut rs = s.enter(&seq)?;
            let code_t = rs.required("opcode")?;
            let op = Op::from_code(decode_code(&rs, &code_t)?, d);
            let value = match rs.next()? {
                None => Argument::Absent,
                Some(v) => decode_argument(&rs, &v, &op, d, true)?,
            };
            rs.finish()?;
            Some((op, value))
        }
    };
    s.finish()?;
    Ok(ReturnResult { invoke_id, result })
}

fn decode_error(r: &Reader<'_>, t: &Tlv) -> Result<ReturnError> {
    t.constructed("ReturnError")?;
    let mut s = r.enter(t)?;
    let invoke_id = decode_invoke_id(&mut s)?;
    let code_t = s.required("errcode")?;
    let code = decode_code(&s, &code_t)?;
    let parameter = match s.next()? {
        None => None,
        Some(p) if code == Code::Local(1) => Some(decode_universal_failure(&s, &p)?),
        Some(p) => Some(ErrorParameter::Opaque(s.raw(&p))),
    };
    s.finish()?;
    Ok(ReturnError { invoke_id, code, parameter })
}

fn decode_reject(r: &Reader<'_>, t: &Tlv) -> Result<Reject> {
    t.constructed("Reject")?;
    let mut s = r.enter(t)?;
    let invoke_id = decode_invoke_id(&mut s)?;
    let p = s.required("problem")?;
    let v = s.integer(&p, "problem")?;
    let problem = match p.tag.0 {
        0x80 => RejectProblem::General(v),
        0x81 => RejectProblem::Invoke(v),
        0x82 => RejectProblem::ReturnResult(v),
        0x83 => RejectProblem::ReturnError(v),
        _ => return Err(DecodeError::new(ErrorKind::UnexpectedTag { expected: "problem [0..3]", found: p.tag }, p.start)),
    };
    s.finish()?;
    Ok(Reject { invoke_id, problem })
}

fn decode_event_report(r: &Reader<'_>, a: &Tlv, d: Dialect) -> Result<EventReport> {
    a.expect(Tag::SEQUENCE, "CSTAEventReportArgument SEQUENCE")?;
    let mut s = r.enter(a)?;
    let x = s.required("crossRefIdentifier")?;
    x.expect(Tag(0x55), "crossRefIdentifier [APPLICATION 21]")?;
    let xref = s.octets(&x, "crossRefIdentifier")?;
    let info = s.required("eventSpecificInfo")?;
    if info.tag.class() != 2 || !info.tag.constructed() {
        return Err(DecodeError::new(ErrorKind::UnexpectedTag { expected: "eventSpecificInfo [0..7]", found: info.tag }, info.start));
    }
    let event = decode_event(&s, &info, d)?;
    let mut extensions = None;
    if let Some(e) = s.next()? {
        e.expect(Tag(0x7E), "extensions")?;
        extensions = Some(s.raw(&e));
    }
    s.finish()?;
    Ok(EventReport { xref, event, extensions })
}

fn decode_event(r: &Reader<'_>, info: &Tlv, d: Dialect) -> Result<Event> {
    let group = info.tag.number();
    let mut g = r.enter(info)?;
    let alt = g.required("event")?;
    g.finish()?;
    let other = || Event::Other { group, alternative: Some(alt.tag.number()), raw: r.raw(info) };
    let (Ok(group8), Ok(alt8)) = (u8::try_from(group), u8::try_from(alt.tag.number())) else { return Ok(other()) };
    if alt.tag.class() != 2 || !alt.tag.constructed() {
        return Ok(other());
    }
    let Some(kind) = EventKind::from_position(group8, alt8, d) else { return Ok(other()) };
    let form = kind.form(d);
    let body = match d {
        // [n] IMPLICIT SEQUENCE: the alternative's tag replaces the SEQUENCE tag.
        Dialect::Phase3 => Body::decode(&g, &alt, form, d, kind.name())?,
        // [n] EXPLICIT: a SEQUENCE inside the alternative.
        Dialect::Phase2 => {
            let mut e = g.enter(&alt)?;
            let seq = e.required(kind.name())?;
            e.finish()?;
            seq.expect(Tag::SEQUENCE, "event SEQUENCE")?;
            Body::decode(&e, &seq, form, d, kind.name())?
        }
    };
    Ok(Event::Call { kind, body })
}

fn encode_event_report(w: &mut Writer<'_>, ev: &EventReport, d: Dialect) {
    w.constructed(Tag::SEQUENCE, |w| {
        w.primitive(Tag(0x55), &ev.xref);
        match &ev.event {
            Event::Other { raw, .. } => w.raw(raw),
            Event::Call { kind, body } => {
                // check_argument() has made sure the kind exists in this dialect.
                let (group, alt) = kind.position(d).unwrap_or((0, 0));
                w.constructed(Tag::context(group, true), |w| match d {
                    Dialect::Phase3 => body.encode(w, kind.form(d), d, Some(Tag::context(alt, true))),
                    Dialect::Phase2 => w.constructed(Tag::context(alt, true), |w| body.encode(w, kind.form(d), d, None)),
                });
            }
        }
        if let Some(e) = &ev.extensions {
            w.raw(e);
        }
    });
}

/// Guess the dialect from one APDU's bytes, where they tell: the systemStatus and DTMF opcodes,
/// an event body's tagging (Phase III implicit `6B` first, Phase II explicit `30`), or the form of
/// a device in MonitorStart/MakeCall/SnapshotDevice. `None` when the APDU does not discriminate.
pub fn guess_dialect(apdu: &Bytes) -> Option<Dialect> {
    let inv = match Apdu::decode(apdu, Dialect::Phase3) {
        Ok(Apdu::Invoke(i)) => i,
        Ok(Apdu::Result(_)) | Ok(_) => return None,
        Err(_) => return match Apdu::decode(apdu, Dialect::Phase2) {
            Ok(Apdu::Invoke(_)) => Some(Dialect::Phase2),
            _ => None,
        },
    };
    match inv.op {
        Op::Other(Code::Local(52 | 19)) => Some(Dialect::Phase2),
        Op::Known(Operation::SystemStatus | Operation::GenerateDigits) => Some(Dialect::Phase3),
        Op::Known(Operation::EventReport) => match inv.argument {
            Argument::Event(EventReport { event: Event::Call { .. }, .. }) => Some(Dialect::Phase3),
            Argument::Event(EventReport { event: Event::Other { raw, .. }, .. }) => {
                // Phase II call events are A0 { An { 30 ... } }.
                (first_inner_tags(&raw) == Some((Tag(0xA0), Tag::SEQUENCE))).then_some(Dialect::Phase2)
            }
            _ => None,
        },
        Op::Known(Operation::MonitorStart | Operation::MakeCall | Operation::SnapshotDevice) => Some(Dialect::Phase3),
        _ => None,
    }
}

/// The tag of a TLV and the tag of the first TLV inside its first child.
fn first_inner_tags(raw: &Bytes) -> Option<(Tag, Tag)> {
    let mut r = Reader::new(raw);
    let outer = r.next().ok()??;
    let mut g = r.enter(&outer).ok()?;
    let alt = g.next().ok()??;
    if !alt.tag.constructed() {
        return None;
    }
    let inner = g.enter(&alt).ok()?.next().ok()??;
    Some((outer.tag, inner.tag))
}
