//! The secrets the gateway draws (association codes, context ids, association ids): their form,
//! and that they are not predictable from one draw to the next. The statistical checks are set
//! so far from their limits that a CSPRNG never fails them (odds below 1e-20 per run), while any
//! constant, truncated or biased draw does.

use cstagate::random::{digits, id};

#[test]
fn codes_and_context_ids_are_exactly_the_asked_number_of_decimal_digits() {
    for n in [0, 1, 6, 16, 32] {
        let d = digits(n);
        assert_eq!(d.len(), n, "{d:?}");
        assert!(d.bytes().all(|b| b.is_ascii_digit()), "{d:?}");
    }
}

#[test]
fn every_decimal_digit_is_drawn_roughly_as_often_as_the_others() {
    // 20,000 digits: each expected 2,000 times; a count outside 1,500..2,500 is over 11 standard
    // deviations away (binomial sd = 42.4).
    let d = digits(20_000);
    for c in b'0'..=b'9' {
        let n = d.bytes().filter(|b| *b == c).count();
        assert!((1_500..=2_500).contains(&n), "digit {} drawn {n} times of 20,000", c as char);
    }
}

#[test]
fn two_draws_never_repeat() {
    let codes: std::collections::HashSet<String> = (0..1_000).map(|_| digits(16)).collect();
    assert_eq!(codes.len(), 1_000, "16-digit codes repeated");
}

#[test]
fn association_ids_are_128_random_bits_in_hex() {
    let ids: Vec<String> = (0..1_000).map(|_| id()).collect();
    for i in &ids {
        assert_eq!(i.len(), 32, "{i}");
        assert!(i.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{i}");
    }
    assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), ids.len(), "ids repeated");
    // Every nibble value appears at every position over 1,000 ids (each expected 62.5 times).
    for pos in 0..32 {
        let seen: std::collections::HashSet<u8> = ids.iter().map(|i| i.as_bytes()[pos]).collect();
        assert_eq!(seen.len(), 16, "position {pos} drew only {seen:?}");
    }
}
