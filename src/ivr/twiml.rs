//! The TwiML adapter's sans-IO parts: what Twilio and the platforms compatible with it send
//! (form-encoded webhooks signed with `X-Twilio-Signature`) and what they expect back (TwiML).
//! The route is `POST /v1/ivr/twiml` (`src/api/twiml.rs`); the dialogue is the engine's, as for
//! the other adapters.
//!
//! - **Signature**: `X-Twilio-Signature` = Base64(HMAC-SHA1(auth token, full URL, then each POST
//!   parameter's name and value, sorted by name)). A parameter sent several times is signed once
//!   per distinct value, values sorted (what the platform's own validators do). Every parameter
//!   counts, also those the gateway does not read, so the form is kept whole ([`parse_form`]).
//! - **Answers** are TwiML: a `<Gather>` around a `<Say>` whose `action` is the adapter's own
//!   public URL, or a `<Say>` and `<Hangup/>` at the end ([`render`]). Text is XML-escaped.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

use crate::association::IvrReply;

/// The header that carries the platform's signature.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";
/// The adapter's path, appended to `public_url` for the signature and the `action` URLs.
pub const PATH: &str = "/v1/ivr/twiml";
/// Parameters a request may carry at most (the platform sends about twenty).
pub const MAX_PARAMS: usize = 128;
/// The `CallStatus` values of a call that is over (the status callback): a hang-up.
pub const ENDED: [&str; 5] = ["completed", "busy", "failed", "no-answer", "canceled"];

/// What the adapter needs besides the dialogue: the auth token, the public base URL the platform
/// calls (the signature covers it) and the voices per language. No `Debug`: it holds a secret.
#[derive(Clone, Default)]
pub struct TwimlSettings {
    /// The platform's auth token, the HMAC key of its signatures.
    pub auth_token: String,
    /// `[gateway] public_url`, without a trailing `/`.
    pub public_url: String,
    /// `voice` of `<Say>` per language (`twiml_voices`); none: the platform's default voice.
    pub voices: std::collections::HashMap<String, String>,
}

impl TwimlSettings {
    /// The URL the platform posts to, signed and put in every `action`.
    pub fn url(&self) -> String {
        format!("{}{PATH}", self.public_url.trim_end_matches('/'))
    }
}

/// Why a form body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("the form is not `name=value&...` with valid percent-encoding")]
    Encoding,
    #[error("a form parameter is not UTF-8")]
    Utf8,
    #[error("more than {MAX_PARAMS} form parameters")]
    TooMany,
}

/// Parse an `application/x-www-form-urlencoded` body into its parameters, in order, repeated
/// names kept (`+` is a space; `%XX` must be two hex digits). Empty pieces (`a=1&&b=2`) are
/// skipped, a piece without `=` is a name with an empty value, as browsers and the platforms'
/// own libraries read them.
///
/// # Errors
/// Bad percent-encoding, a name or value that is not UTF-8, or more than [`MAX_PARAMS`].
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let mut out = Vec::new();
    for piece in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        if out.len() == MAX_PARAMS {
            return Err(FormError::TooMany);
        }
        let (name, value) = match piece.iter().position(|b| *b == b'=') {
            Some(i) => (&piece[..i], &piece[i + 1..]),
            None => (piece, &[][..]),
        };
        out.push((decode(name)?, decode(value)?));
    }
    Ok(out)
}

fn decode(s: &[u8]) -> Result<String, FormError> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let (Some(h), Some(l)) = (s.get(i + 1).and_then(|b| hex(*b)), s.get(i + 2).and_then(|b| hex(*b))) else { return Err(FormError::Encoding) };
                out.push(h << 4 | l);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| FormError::Utf8)
}

/// Form-encode parameters as the platform does (the test kit's client side, and the README's).
pub fn encode_form(params: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => (b as char).to_string(),
                b' ' => "+".to_owned(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    params.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

/// The signature of a request to `url` with `params`: Base64(HMAC-SHA1(token, url + names and
/// values sorted by name)); a repeated name counts each of its distinct values once, sorted.
pub fn signature<K: AsRef<str>, V: AsRef<str>>(token: &str, url: &str, params: &[(K, V)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let Ok(mut mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(token.as_bytes()) else { return String::new() };
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The URL as the platform may have signed it: as configured, and with the scheme's default port
/// added or removed (the platforms' validators accept both, since a proxy may show either).
pub fn url_forms(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Some((scheme, rest)) = url.split_once("://") else { return out };
    let port = match scheme.to_ascii_lowercase().as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return out,
    };
    let (authority, path) = rest.find(['/', '?']).map_or((rest, ""), |i| rest.split_at(i));
    if let Some(host) = authority.strip_suffix(port) {
        out.push(format!("{scheme}://{host}{path}"));
    } else if !authority.rsplit_once(']').map_or(authority, |(_, p)| p).contains(':') {
        out.push(format!("{scheme}://{authority}{port}{path}"));
    }
    out
}

/// Whether `given` is the signature of `params` posted to `url` (or to its other form, see
/// [`url_forms`]), compared in constant time.
pub fn verify<K: AsRef<str>, V: AsRef<str>>(token: &str, url: &str, params: &[(K, V)], given: &str) -> bool {
    if token.trim().is_empty() {
        // An empty key would accept requests signed with the empty key: as good as none.
        return false;
    }
    url_forms(url).iter().fold(false, |ok, u| {
        let expected = signature(token, u, params);
        ok | (!expected.is_empty() && expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes())))
    })
}

/// Text for XML content and attribute values: the five special characters escaped, control
/// characters (never in a prompt) dropped.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The TwiML document of the engine's reply: a `<Gather>` posting the keyed digits back to
/// `action`, or the words and `<Hangup/>`. `language` (the reply's) and `voice` go on `<Say>`.
pub fn render(reply: &IvrReply, action: &str, language: &str, voice: Option<&str>) -> String {
    let say = if reply.say.is_empty() {
        String::new()
    } else {
        let voice = voice.map_or_else(String::new, |v| format!(" voice=\"{}\"", xml_escape(v)));
        format!("<Say language=\"{}\"{voice}>{}</Say>", xml_escape(language), xml_escape(&reply.say))
    };
    let body = match (&reply.gather, reply.hangup) {
        (Some(g), false) => format!(
            "<Gather input=\"dtmf\" numDigits=\"{}\" finishOnKey=\"{}\" timeout=\"{}\" action=\"{}\" method=\"POST\">{say}</Gather>",
            g.max_digits,
            xml_escape(&g.finish_on_key),
            g.timeout_ms.div_ceil(1000).max(1),
            xml_escape(action)
        ),
        _ => format!("{say}<Hangup/>"),
    };
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>{body}</Response>")
}

/// The answer to a status callback or a request that needs no words: an empty document.
pub fn empty() -> String {
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::association::Gather;

    /// Twilio's own worked example ("Validating requests", twilio.com/docs/usage/security; the
    /// same values and signatures in twilio-php `tests/Twilio/Unit/Security/RequestValidatorTest.php`
    /// and twilio-python's request-validator tests). Cross-checked with Python's `hmac` and
    /// `hashlib.sha1`.
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const PARAMS: [(&str, &str); 5] = [("CallSid", "CA1234567890ABCDE"), ("Caller", "+14158675309"), ("Digits", "1234"), ("From", "+14158675309"), ("To", "+18005551212")];

    #[test]
    fn the_platforms_published_example_signs_and_verifies() {
        assert_eq!(signature("12345", URL, &PARAMS), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        // Order of the form does not matter: the names are sorted.
        let mut shuffled = PARAMS.to_vec();
        shuffled.reverse();
        assert!(verify("12345", URL, &shuffled, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        assert!(!verify("12345", URL, &PARAMS, "FAIL"));
        assert!(!verify("12346", URL, &PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        assert!(!verify("12345", &format!("{URL}&x=1"), &PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        let mut tampered = PARAMS.to_vec();
        tampered[2].1 = "9999";
        assert!(!verify("12345", URL, &tampered, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        // An unknown parameter is signed too: adding one breaks the signature.
        let mut extra = PARAMS.to_vec();
        extra.push(("CallStatus", "in-progress"));
        assert!(!verify("12345", URL, &extra, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        // The empty key verifies nothing.
        assert!(!verify("", URL, &PARAMS, &signature("", URL, &PARAMS)));
    }

    #[test]
    fn repeated_names_and_default_ports_as_the_published_validators_take_them() {
        // twilio-php's `testValidateWithArrayAndDuplicates`: Digits = [5678, 1234, 1234].
        let repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234"), ("Digits", "1234")];
        assert_eq!(signature("12345", URL, &repeated), "IK+Dwps556ElfBT0I3Rgjkr1wJU=");
        // `testValidateAddsPortHttps` / `testValidateRemovesPortHttps`: signed with :443, or
        // configured with it.
        assert!(verify("12345", URL, &PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w="));
        assert!(verify("12345", "https://mycompany.com:443/myapp.php?foo=1&bar=2", &PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        assert_eq!(url_forms("http://[::1]:8080/x"), ["http://[::1]:8080/x"]);
        assert_eq!(url_forms("https://gw.example/v1"), ["https://gw.example/v1", "https://gw.example:443/v1"]);
    }

    #[test]
    fn forms_parse_as_the_platform_encodes_them_and_bad_ones_are_refused() {
        let body = encode_form(&PARAMS);
        assert_eq!(body, "CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212");
        let parsed = parse_form(body.as_bytes()).unwrap();
        assert_eq!(parsed.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(), PARAMS);
        assert_eq!(parse_form(b"a=x+y&&b&c=%C3%A9").unwrap(), [("a".into(), "x y".into()), ("b".into(), String::new()), ("c".into(), "é".into())]);
        assert_eq!(parse_form(b"a=%2"), Err(FormError::Encoding));
        assert_eq!(parse_form(b"a=%zz"), Err(FormError::Encoding));
        assert_eq!(parse_form(b"a=%ff"), Err(FormError::Utf8));
        assert_eq!(parse_form("a=1&".repeat(MAX_PARAMS + 1).as_bytes()), Err(FormError::TooMany));
        assert_eq!(parse_form(b"").unwrap(), []);
    }

    #[test]
    fn twiml_gathers_or_hangs_up_with_escaped_text() {
        let gather = IvrReply { prompt: "confirm_account", say: "The account <b>&\"x\" asks.".into(), language: "fr-FR".into(), gather: Some(Gather { max_digits: 1, finish_on_key: "#".into(), timeout_ms: 8000 }), hangup: false };
        assert_eq!(
            render(&gather, "https://gw.example/v1/ivr/twiml", "fr-FR", Some("Polly.Lea")),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Gather input=\"dtmf\" numDigits=\"1\" finishOnKey=\"#\" timeout=\"8\" action=\"https://gw.example/v1/ivr/twiml\" method=\"POST\"><Say language=\"fr-FR\" voice=\"Polly.Lea\">The account &lt;b&gt;&amp;&quot;x&quot; asks.</Say></Gather></Response>"
        );
        let bye = IvrReply { prompt: "bound", say: "Linked. Goodbye.".into(), language: "en-US".into(), gather: None, hangup: true };
        assert_eq!(render(&bye, "u", "en-US", None), "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Say language=\"en-US\">Linked. Goodbye.</Say><Hangup/></Response>");
        assert_eq!(xml_escape("a\u{7}b'"), "ab&apos;");
    }
}
