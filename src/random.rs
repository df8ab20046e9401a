//! Secrets and ids from a CSPRNG, drawn in one place: the engine draws nothing itself (its
//! inputs carry the digits), so tests and fuzzers drive it deterministically.

/// Uniform random decimal digits from a CSPRNG (codes and context ids): `rand`'s thread-local
/// ChaCha12 generator, seeded and periodically reseeded from the operating system; each digit is
/// drawn without modulo bias.
pub fn digits(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..n).map(|_| char::from(b'0' + rng.random_range(0..10u8))).collect()
}

/// A random association id (128 bits, hex).
pub fn id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}
