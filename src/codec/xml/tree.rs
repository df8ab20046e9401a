//! The XML document as a small borrowed tree, read with `quick-xml`, with the defences a wire
//! parser needs: UTF-8 only, no DTD (so no entity can be defined, let alone expanded: billion
//! laughs and external entities are refused before anything is read), only the five predefined
//! entities and character references, a depth cap, and an element cap. Names are local names:
//! whatever prefix or default namespace the PBX uses, `ns3:MakeCall` is `MakeCall`.
//!
//! Each element keeps its byte span in the document, so an element this codec does not know is
//! re-encoded verbatim (issue 17: unknown elements and private data survive).

use std::borrow::Cow;
use std::ops::Range;
use std::rc::Rc;

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::codec::ber::{DecodeError, ErrorKind};

/// How deep elements may nest. CSTA XML nests about five levels (event → connection → device);
/// vendor private data adds a few.
pub const MAX_XML_DEPTH: usize = 32;
/// How many elements one document may hold (a 64 KiB document of `<a/>` would hold 16,000).
pub const MAX_XML_ELEMENTS: usize = 4096;

/// One element: local name, raw attributes, trimmed text content, children, span.
#[derive(Debug, Clone, PartialEq)]
pub struct Element<'a> {
    pub name: &'a str,
    /// The attributes as written (namespace declarations included), for verbatim re-encoding.
    pub attrs: &'a str,
    /// The element's own text (character data and CDATA, entities resolved), trimmed of XML
    /// white space (pretty-printing), nothing else.
    pub text: Cow<'a, str>,
    pub children: Vec<Element<'a>>,
    /// Bytes of the whole element in the document, start tag to end tag.
    pub span: Range<usize>,
    /// The attributes (as written) of the ancestors that declare a namespace prefix
    /// (`xmlns:ns3="…"`), outermost first; `None` when none does. Kept so that a fragment copied
    /// verbatim into another document can carry the declarations of the prefixes it uses
    /// ([`Element::verbatim`]): the copy lands under our root, where `ns3` means nothing.
    pub scope: Option<Rc<[&'a str]>>,
}

impl<'a> Element<'a> {
    pub fn child(&self, name: &str) -> Option<&Element<'a>> {
        self.children.iter().find(|c| c.name == name)
    }
    /// The trimmed text of the named child.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_ref())
    }
    /// The value of attribute `name` (by local name), unescaped; `None` when absent or malformed.
    pub fn attr(&self, name: &str) -> Option<String> {
        let start = quick_xml::events::BytesStart::from_content(self.attrs, 0);
        start.attributes().flatten().find(|a| a.key.local_name().as_ref() == name).and_then(|a| a.normalized_value(quick_xml::XmlVersion::Implicit1_0).ok().map(Cow::into_owned))
    }
    /// The attributes to keep when the element is written again: all of them as written, unless
    /// they are only namespace declarations and schema locations (which the encoder writes itself).
    /// A prefix they use that an ancestor declares gets its declaration appended, so that they
    /// mean the same wherever they are written.
    pub fn kept_attrs(&self) -> Cow<'a, str> {
        let start = quick_xml::events::BytesStart::from_content(self.attrs, 0);
        let own = start.attributes().flatten().any(|a| {
            let k = a.key.as_ref();
            !(k.starts_with("xmlns") || k.starts_with("xsi:"))
        });
        if !own {
            return Cow::Borrowed("");
        }
        let decls = self.inherited_declarations(self.attrs);
        if decls.is_empty() { Cow::Borrowed(self.attrs) } else { Cow::Owned(format!("{}{decls}", self.attrs)) }
    }

    /// The element's bytes in `doc` (the document it was parsed from), to be written verbatim
    /// elsewhere: as they came, plus, in the start tag, the declarations of the prefixes the
    /// fragment uses that only an ancestor declared. Without them `<ns3:vendor>` under a root
    /// `ns3:MakeCall xmlns:ns3="…"` would be written under our root with `ns3` undeclared: not
    /// namespace-well-formed, and no longer the vendor's element.
    pub fn verbatim(&self, doc: &bytes::Bytes) -> bytes::Bytes {
        let frag = doc.slice(self.span.clone());
        if self.scope.is_none() {
            return frag;
        }
        let Ok(text) = std::str::from_utf8(&frag) else { return frag };
        let decls = self.inherited_declarations(text);
        if decls.is_empty() {
            return frag;
        }
        let name_end = text.char_indices().skip(1).find(|&(_, c)| c.is_ascii_whitespace() || c == '/' || c == '>').map_or(text.len(), |(i, _)| i);
        let mut v = Vec::with_capacity(frag.len() + decls.len());
        v.extend_from_slice(&frag[..name_end]);
        v.extend_from_slice(decls.as_bytes());
        v.extend_from_slice(&frag[name_end..]);
        bytes::Bytes::from(v)
    }

    /// ` xmlns:p="…"` for each prefix `p` that `text` uses (as `<p:`, `</p:` or ` p:`) and an
    /// ancestor declares but this element does not (the innermost declaration wins). A prefix
    /// used only in text content may be declared needlessly, which is harmless.
    fn inherited_declarations(&self, text: &str) -> String {
        let mut out = String::new();
        let Some(scope) = &self.scope else { return out };
        let mut done: Vec<String> = declared_prefixes(self.attrs).into_iter().map(|(p, _)| p).collect();
        for attrs in scope.iter().rev() {
            for (p, v) in declared_prefixes(attrs) {
                if done.contains(&p) || !uses_prefix(text, &p) {
                    continue;
                }
                let q = if v.contains('"') { '\'' } else { '"' };
                out.push_str(&format!(" xmlns:{p}={q}{v}{q}"));
                done.push(p);
            }
        }
        out
    }
}

/// The prefixes `attrs` declares, with their values as written.
fn declared_prefixes(attrs: &str) -> Vec<(String, String)> {
    let start = quick_xml::events::BytesStart::from_content(attrs, 0);
    start
        .attributes()
        .flatten()
        .filter_map(|a| {
            let p = a.key.as_ref().strip_prefix("xmlns:").filter(|p| !p.is_empty())?;
            Some((p.to_owned(), a.value.as_ref().to_owned()))
        })
        .collect()
}

/// Whether `text` uses prefix `p` on an element or attribute name.
fn uses_prefix(text: &str, p: &str) -> bool {
    let b = text.as_bytes();
    text.match_indices(p).any(|(i, _)| b.get(i + p.len()) == Some(&b':') && (i == 0 || matches!(b[i - 1], b'<' | b'/') || b[i - 1].is_ascii_whitespace()))
}

fn err(kind: ErrorKind, at: u64) -> DecodeError {
    DecodeError::new(kind, usize::try_from(at).unwrap_or(usize::MAX)).within("CSTA XML")
}

/// The document with the characters XML 1.0 does not allow (`Char`, §2.2) replaced, lengths
/// kept: C0 controls other than tab, LF and CR by `?`, U+FFFE and U+FFFF by U+FFFD. No XML can
/// carry them, so no encoder could write them back; refusing the document instead would drop a
/// whole event (a hang-up) for a stray byte in a display name. The writer writes these
/// characters the same way, so a decoded message and its encoding agree (fuzz finding 9). The
/// frame is returned as it is, without a copy, when it holds none (the usual case).
pub fn without_forbidden_characters(doc: bytes::Bytes) -> bytes::Bytes {
    let forbidden = |d: &[u8], i: usize| -> usize {
        match d[i] {
            b if b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r') => 1,
            0xEF if d.get(i + 1) == Some(&0xBF) && matches!(d.get(i + 2), Some(0xBE | 0xBF)) => 3,
            _ => 0,
        }
    };
    // Fast path, one pass in 32-byte blocks the compiler vectorises: does any byte even look
    // like the start of a forbidden character (a byte below 0x20, or 0xEF, the lead byte of
    // U+FFFE/U+FFFF)? Only a block that does is looked at byte by byte (pretty-printed documents
    // hit on their line ends).
    let suspect = |b: u8| (b < 0x20) | (b == 0xEF);
    let first = doc.chunks(32).enumerate().find_map(|(k, block)| {
        if !block.iter().fold(false, |acc, &b| acc | suspect(b)) {
            return None;
        }
        (k * 32..k * 32 + block.len()).find(|&i| forbidden(&doc, i) > 0)
    });
    let Some(first) = first else { return doc };
    let mut v = doc.to_vec();
    let mut i = first;
    while i < v.len() {
        match forbidden(&v, i) {
            1 => v[i] = b'?',
            3 => v[i + 2] = 0xBD,
            _ => {}
        }
        i += 1;
    }
    bytes::Bytes::from(v)
}

/// Parse one document into its root element.
///
/// # Errors
/// Not UTF-8, not well-formed, a DTD or an unknown entity, nesting past [`MAX_XML_DEPTH`], more
/// than [`MAX_XML_ELEMENTS`] elements, no root or a second root.
pub fn parse(doc: &[u8]) -> Result<Element<'_>, DecodeError> {
    let text = std::str::from_utf8(doc).map_err(|e| err(ErrorKind::XmlNotUtf8, e.valid_up_to() as u64))?;
    // A byte-order mark is allowed before the declaration.
    let body_at = if text.starts_with('\u{feff}') { 3 } else { 0 };
    let mut r = Reader::from_str(&text[body_at..]);
    r.config_mut().check_end_names = true;
    r.config_mut().check_comments = false;
    let mut stack: Vec<Element<'_>> = Vec::with_capacity(8);
    // The namespace scope of the children of each open element (see `Element::scope`).
    let mut scopes: Vec<Option<Rc<[&str]>>> = Vec::with_capacity(8);
    let mut root: Option<Element<'_>> = None;
    let mut count = 0usize;
    // A start tag begins where the reader stood before reading it (text is an event of its own),
    // not at the last '<' before its end: quick-xml ends a tag at the first '>' outside quotes
    // and lets a '<' through, so `<a x="1"<b>` would otherwise be taken for `<b>` (fuzz finding
    // 10). XML allows no '<' inside a tag at all: such a tag is refused.
    let open = |e: &quick_xml::events::BytesStart<'_>, before: u64, after: usize, src: &str| -> Option<(usize, usize)> {
        let start = usize::try_from(before).ok()?;
        let tag = src.get(start..after)?;
        if !tag.starts_with('<') || tag[1..].contains('<') {
            return None;
        }
        let name_len = e.name().as_ref().len();
        Some((start, name_len))
    };
    loop {
        let before = r.buffer_position();
        let ev = r.read_event().map_err(|e| err(ErrorKind::XmlSyntax(e.to_string()), r.error_position().max(before) + body_at as u64))?;
        let after = usize::try_from(r.buffer_position()).unwrap_or(usize::MAX);
        let src = &text[body_at..];
        match ev {
            Event::Start(e) | Event::Empty(e) => {
                let empty = src.as_bytes().get(after.wrapping_sub(2)) == Some(&b'/');
                count += 1;
                if count > MAX_XML_ELEMENTS {
                    return Err(err(ErrorKind::XmlTooLarge(MAX_XML_ELEMENTS), before + body_at as u64));
                }
                if root.is_some() && stack.is_empty() {
                    return Err(err(ErrorKind::XmlSyntax("a second root element".into()), before + body_at as u64));
                }
                let Some((start, name_len)) = open(&e, before, after, src) else {
                    return Err(err(ErrorKind::XmlSyntax("'<' inside a start tag".into()), before + body_at as u64));
                };
                let raw: &str = &src[start + 1..after - if empty { 2 } else { 1 }];
                let qname = raw.get(..name_len).unwrap_or(raw);
                let name = qname.rsplit(':').next().unwrap_or(qname);
                let attrs = raw.get(name_len..).unwrap_or("");
                // quick-xml reads attributes lazily: check them here, so that a start tag with a
                // malformed or duplicate attribute is refused rather than kept (and written
                // again verbatim) as it came.
                // A reference in a value must resolve, as in text (no entity but the five).
                if !attrs.trim_start().is_empty() {
                    for a in e.attributes().with_checks(true) {
                        let a = a.map_err(|e| err(ErrorKind::XmlSyntax(format!("attribute: {e}")), before + body_at as u64))?;
                        a.normalized_value(quick_xml::XmlVersion::Implicit1_0).map_err(|_| err(ErrorKind::XmlEntity, before + body_at as u64))?;
                    }
                }
                let scope = scopes.last().cloned().flatten();
                let el = Element { name, attrs, text: Cow::Borrowed(""), children: Vec::new(), span: start + body_at..after + body_at, scope };
                if empty {
                    push(&mut stack, &mut root, el);
                } else {
                    if stack.len() >= MAX_XML_DEPTH {
                        return Err(err(ErrorKind::XmlTooDeep(MAX_XML_DEPTH), before + body_at as u64));
                    }
                    let inner = if attrs.contains("xmlns:") {
                        Some(el.scope.iter().flat_map(|s| s.iter().copied()).chain(std::iter::once(attrs)).collect::<Rc<[&str]>>())
                    } else {
                        el.scope.clone()
                    };
                    scopes.push(inner);
                    stack.push(el);
                }
            }
            Event::End(_) => {
                let Some(mut el) = stack.pop() else {
                    return Err(err(ErrorKind::XmlSyntax("end tag without start tag".into()), before + body_at as u64));
                };
                scopes.pop();
                el.span.end = after + body_at;
                if let Cow::Owned(s) = &mut el.text {
                    let t = s.trim_matches(is_xml_space);
                    if t.len() != s.len() {
                        *s = t.to_owned();
                    }
                } else if let Cow::Borrowed(s) = el.text {
                    el.text = Cow::Borrowed(s.trim_matches(is_xml_space));
                }
                push(&mut stack, &mut root, el);
            }
            Event::Text(t) => {
                let Some(top) = stack.last_mut() else {
                    if t.trim_matches(is_xml_space).is_empty() {
                        continue;
                    }
                    return Err(err(ErrorKind::XmlSyntax("text outside the root element".into()), before + body_at as u64));
                };
                let s = t.into_inner();
                append(&mut top.text, s);
            }
            Event::CData(c) => {
                let Some(top) = stack.last_mut() else {
                    return Err(err(ErrorKind::XmlSyntax("CDATA outside the root element".into()), before + body_at as u64));
                };
                append(&mut top.text, c.into_inner());
            }
            Event::GeneralRef(g) => {
                let resolved: Option<char> = if g.is_char_ref() {
                    g.resolve_char_ref().ok().flatten()
                } else {
                    match g.as_ref() {
                        "amp" => Some('&'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "quot" => Some('"'),
                        "apos" => Some('\''),
                        _ => None,
                    }
                };
                let Some(c) = resolved else {
                    return Err(err(ErrorKind::XmlEntity, before + body_at as u64));
                };
                // A reference to a character XML 1.0 does not allow reads as the character
                // itself would (see `without_forbidden_characters`).
                let c = match c {
                    c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => '?',
                    '\u{fffe}' | '\u{ffff}' => '\u{fffd}',
                    c => c,
                };
                let Some(top) = stack.last_mut() else {
                    return Err(err(ErrorKind::XmlSyntax("reference outside the root element".into()), before + body_at as u64));
                };
                owned(&mut top.text).push(c);
            }
            // No DTD: nothing can define an entity, nothing can point outside the document.
            Event::DocType(_) => return Err(err(ErrorKind::XmlDoctype, before + body_at as u64)),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(err(ErrorKind::XmlSyntax("document ends inside an element".into()), text.len() as u64));
    }
    root.ok_or_else(|| err(ErrorKind::XmlSyntax("no root element".into()), 0))
}

/// XML's white space (§2.3 `S`): what pretty-printing adds around text. Not Unicode's: a
/// no-break space or an NEL in a display name is content (`str::trim` would drop it).
fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn push<'a>(stack: &mut [Element<'a>], root: &mut Option<Element<'a>>, el: Element<'a>) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None => *root = Some(el),
    }
}

fn append<'a>(text: &mut Cow<'a, str>, more: Cow<'a, str>) {
    if text.is_empty() {
        *text = more;
    } else if !more.is_empty() {
        owned(text).push_str(&more);
    }
}

/// The text as an owned string to add to, made with room for what usually follows: text split
/// by references (`N&lt;+4989…&gt;;noa=int` arrives as five pieces) would otherwise grow its
/// buffer piece by piece.
fn owned<'s>(text: &'s mut Cow<'_, str>) -> &'s mut String {
    if let Cow::Borrowed(b) = *text {
        let mut s = String::with_capacity(b.len() + 48);
        s.push_str(b);
        *text = Cow::Owned(s);
    }
    text.to_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_text_spans_and_attributes() {
        let doc = br#"<?xml version="1.0"?><ns3:A xmlns:ns3="urn:x"><b typeOfNumber="x:y"> 20&amp;05 </b><c/><d><![CDATA[<q>]]></d></ns3:A>"#;
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "A");
        assert_eq!(root.children.iter().map(|c| c.name).collect::<Vec<_>>(), ["b", "c", "d"]);
        assert_eq!(root.children[0].text, "20&05");
        assert_eq!(root.children[0].attr("typeOfNumber").as_deref(), Some("x:y"));
        assert_eq!(&doc[root.children[1].span.clone()], b"<c/>");
        assert_eq!(root.children[2].text, "<q>");
        assert_eq!(&doc[root.span.clone()], &doc[21..]);
    }

    #[test]
    fn hostile_documents_are_refused_with_a_defined_error() {
        let lol = br#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><l>&b;</l>"#;
        assert_eq!(parse(lol).unwrap_err().kind, ErrorKind::XmlDoctype);
        let xxe = br#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>"#;
        assert_eq!(parse(xxe).unwrap_err().kind, ErrorKind::XmlDoctype);
        assert_eq!(parse(b"<x>&e;</x>").unwrap_err().kind, ErrorKind::XmlEntity);
        let deep = "<a>".repeat(MAX_XML_DEPTH + 1) + &"</a>".repeat(MAX_XML_DEPTH + 1);
        assert_eq!(parse(deep.as_bytes()).unwrap_err().kind, ErrorKind::XmlTooDeep(MAX_XML_DEPTH));
        let wide = format!("<a>{}</a>", "<b/>".repeat(MAX_XML_ELEMENTS));
        assert_eq!(parse(wide.as_bytes()).unwrap_err().kind, ErrorKind::XmlTooLarge(MAX_XML_ELEMENTS));
        assert_eq!(parse(b"<a>\xff</a>").unwrap_err().kind, ErrorKind::XmlNotUtf8);
        assert!(matches!(parse(b"<a><b></a>").unwrap_err().kind, ErrorKind::XmlSyntax(_)));
        assert!(matches!(parse(b"<a/><b/>").unwrap_err().kind, ErrorKind::XmlSyntax(_)));
        assert!(matches!(parse(b"<a>").unwrap_err().kind, ErrorKind::XmlSyntax(_)));
        assert!(matches!(parse(b"").unwrap_err().kind, ErrorKind::XmlSyntax(_)));
    }
}
