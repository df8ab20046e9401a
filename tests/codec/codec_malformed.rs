//! Bad bytes give typed errors with offsets, never panics: truncation at every byte, corrupted
//! length octets, oversized lengths, deep nesting, wrong constructed bits, trailing bytes, and
//! arbitrary input (property tests with a decode → encode → decode oracle; their seed is printed
//! and `CSTAGATE_TEST_SEED=<u64>` replays it).

use crate::common;

use bytes::Bytes;
use common::{apdu, hex, traces};
use cstagate::codec::{Apdu, DecodeError, Dialect, ErrorKind, Framer, Framing};
use proptest::prelude::*;

fn decode(b: &[u8], d: Dialect) -> Result<Apdu, DecodeError> {
    Apdu::decode(&Bytes::copy_from_slice(b), d)
}

/// Whatever decodes must re-encode and decode to the same value (the round-trip oracle).
fn oracle(b: &[u8], d: Dialect) {
    if let Ok(a) = decode(b, d) {
        let again = a.to_vec(d).expect("a decoded APDU re-encodes");
        let b2 = decode(&again, d).expect("a re-encoded APDU decodes");
        assert_eq!(b2.to_vec(d).expect("re-encodes"), again);
    }
}

#[test]
fn every_truncation_of_every_capture_apdu_is_an_error() {
    for t in traces(".frames.tsv") {
        for f in &t.frames {
            let full = apdu(&t, f);
            for cut in 0..full.len() {
                let e = decode(&full[..cut], t.dialect).expect_err("truncated APDU must not decode");
                assert!(e.offset <= cut, "{}: offset {} past the input ({cut})", f.origin, e.offset);
            }
        }
    }
}

#[test]
fn corrupted_length_octets_never_panic_and_outer_ones_fail() {
    for t in traces(".frames.tsv") {
        for f in &t.frames {
            let full = apdu(&t, f).to_vec();
            for i in 0..full.len() {
                for v in [0x00u8, 0x01, 0x7F, 0x80, 0x81, 0x82, 0x84, 0x85, 0xFF, full[i].wrapping_add(1), full[i].wrapping_sub(1)] {
                    let mut m = full.clone();
                    m[i] = v;
                    let r = decode(&m, t.dialect);
                    if i == 1 && v != full[1] {
                        assert!(r.is_err(), "{}: outer length {v:#x} accepted", f.origin);
                    }
                    oracle(&m, t.dialect);
                }
            }
        }
    }
}

#[test]
fn oversized_lengths_deep_nesting_and_trailing_bytes_are_typed_errors() {
    let d = Dialect::Phase3;
    assert!(matches!(decode(&hex("A1 84 7F FF FF FF 02 01 01"), d).unwrap_err().kind, ErrorKind::LengthPastEnd { .. }));
    assert_eq!(decode(&hex("A1 85 01 00 00 00 00"), d).unwrap_err().kind, ErrorKind::LengthTooLong(5));
    let mut deep = vec![0xA1, 0x80, 0x02, 0x01, 0x01, 0x02, 0x01, 0x47];
    for _ in 0..40 {
        deep.extend([0x30, 0x80]);
    }
    deep.extend(std::iter::repeat_n(0u8, 82));
    assert_eq!(decode(&deep, d).unwrap_err().kind, ErrorKind::TooDeep);
    let e = decode(&hex("A4 06 02 01 05 81 01 01 00"), d).unwrap_err();
    assert_eq!((e.kind, e.offset), (ErrorKind::TrailingBytes(1), 8));
    // An invoke id as a constructed INTEGER.
    assert!(decode(&hex("A4 07 22 01 05 81 01 01"), d).is_err());
    // The connection of an event with its constructed bit cleared (4B instead of 6B).
    let e = decode(&hex("A1 1C 02 01 07 02 01 15 30 14 55 04 00 00 00 01 A0 0C B0 0A 4B 05 80 03 32 30 31 0A 01 2C"), d).unwrap_err();
    assert_eq!(e.kind, ErrorKind::MustBeConstructed("member"));
    assert_eq!(e.offset, 20, "{e}");
    // A missing mandatory member is named.
    let e = decode(&hex("A1 14 02 01 07 02 01 15 30 0C 55 04 00 00 00 01 A0 04 B0 02 0A 00"), d).unwrap_err();
    assert!(e.to_string().contains("initiatedConnection") || e.to_string().contains("cause"), "{e}");
    // A device number that is not IA5.
    assert!(decode(&hex("A1 0F 02 01 01 02 01 47 30 07 30 05 80 03 32 FF 31"), d).is_err());
}

#[test]
fn framer_errors_on_garbage_streams_and_never_panics() {
    for bytes in [vec![0x26u8, 0x00, 0x05], vec![0x00, 0x00], vec![0xFF, 0xFF, 0x00]] {
        let mut f = Framer::new(if bytes[0] == 0x26 { Framing::Siemens } else { Framing::TwoByteLength }).with_max_frame(1024);
        assert!(f.decode(&mut bytes::BytesMut::from(&bytes[..])).is_err());
    }
}

static ALL_APDUS: std::sync::LazyLock<Vec<(Dialect, Bytes)>> = std::sync::LazyLock::new(|| {
    traces(".frames.tsv").into_iter().flat_map(|t| t.frames.iter().map(|f| (t.dialect, apdu(&t, f))).collect::<Vec<_>>()).collect()
});

/// The property tests below draw their inputs from a seed printed at their start (shown with a
/// failing test's output); `CSTAGATE_TEST_SEED=<u64>` replays that run
/// (`CSTAGATE_TEST_SEED=… cargo test --test codec codec_malformed`).
fn config() -> ProptestConfig {
    ProptestConfig { cases: 4000, rng_seed: proptest::test_runner::RngSeed::Fixed(common::test_seed("codec_malformed property test")), ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200), p2 in any::<bool>()) {
        let d = if p2 { Dialect::Phase2 } else { Dialect::Phase3 };
        oracle(&data, d);
    }

    #[test]
    fn mutated_captures_never_panic(seed in any::<prop::sample::Index>(), pos in any::<prop::sample::Index>(), val in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let all = &*ALL_APDUS;
        let (d, b) = &all[seed.index(all.len())];
        let mut m = b.to_vec();
        let i = pos.index(m.len());
        m[i] = val;
        m.truncate(m.len() - cut.index(m.len() / 4 + 1));
        oracle(&m, *d);
    }

    #[test]
    fn any_split_of_a_stream_yields_the_same_apdus(cuts in proptest::collection::vec(1usize..40, 1..30)) {
        let t = &traces("panasonic-csta3-makecall-20160727.frames.tsv")[0];
        let stream: Vec<u8> = t.frames.iter().flat_map(|f| f.framed.clone().expect("ok").to_vec()).collect();
        let want: Vec<Bytes> = t.frames.iter().map(|f| apdu(t, f)).collect();
        let mut framer = Framer::new(Framing::TwoByteLength);
        let mut buf = bytes::BytesMut::new();
        let mut got = Vec::new();
        let mut pos = 0;
        let mut k = 0;
        while pos < stream.len() {
            let n = cuts[k % cuts.len()].min(stream.len() - pos);
            buf.extend_from_slice(&stream[pos..pos + n]);
            pos += n;
            k += 1;
            while let Some(a) = framer.decode(&mut buf).expect("valid stream") {
                got.push(a);
            }
        }
        prop_assert_eq!(got, want);
    }
}
