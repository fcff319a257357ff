//! A small capped element tree over quick-xml, shared by the description and SOAP codecs,
//! and a writer helper for the XML we produce.

use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Reader;
use quick_xml::Writer;

use super::http::MAX_RESPONSE;
use super::UpnpError;

/// Deepest element nesting accepted.
pub(crate) const MAX_DEPTH: usize = 32;
/// Most elements accepted in one document.
pub(crate) const MAX_ELEMENTS: usize = 4096;

/// One element: its local name (prefix stripped), its prefix, its namespace declarations,
/// its concatenated text and its child elements.
#[derive(Debug, Clone, Default)]
pub(crate) struct Element {
    pub name: String,
    pub prefix: Option<String>,
    /// (prefix, "" for the default namespace; URI)
    pub xmlns: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child with this local name (ASCII case-insensitive).
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// The trimmed text of the first child with this local name.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    /// The first element with this local name in a depth-first walk, self included.
    pub fn find(&self, name: &str) -> Option<&Element> {
        if self.name.eq_ignore_ascii_case(name) {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }

    /// The namespace URI this element's own prefix is declared with on itself.
    pub fn own_namespace(&self) -> Option<&str> {
        let prefix = self.prefix.as_deref().unwrap_or("");
        self.xmlns
            .iter()
            .find(|(p, _)| p == prefix)
            .map(|(_, uri)| uri.as_str())
    }
}

fn xml_err(e: impl std::fmt::Display) -> UpnpError {
    UpnpError::Xml(e.to_string())
}

fn open(start: &BytesStart<'_>) -> Result<Element, UpnpError> {
    let qname = start.name();
    let name = std::str::from_utf8(qname.local_name().as_ref())
        .map_err(xml_err)?
        .to_owned();
    let prefix = match qname.prefix() {
        Some(p) => Some(std::str::from_utf8(p.as_ref()).map_err(xml_err)?.to_owned()),
        None => None,
    };
    let mut xmlns = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(xml_err)?;
        let key = attr.key.as_ref();
        let declared = if key == b"xmlns" {
            Some("")
        } else {
            key.strip_prefix(b"xmlns:")
                .and_then(|p| std::str::from_utf8(p).ok())
        };
        if let Some(p) = declared {
            let value = attr.unescape_value().map_err(xml_err)?;
            xmlns.push((p.to_owned(), value.into_owned()));
        }
    }
    Ok(Element {
        name,
        prefix,
        xmlns,
        ..Element::default()
    })
}

/// Parses a whole document into its root element, within the size, depth and count caps.
pub(crate) fn parse(bytes: &[u8]) -> Result<Element, UpnpError> {
    if bytes.len() > MAX_RESPONSE {
        return Err(UpnpError::TooLarge);
    }
    let mut reader = Reader::from_reader(bytes);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let event = reader.read_event().map_err(xml_err)?;
        match event {
            Event::Start(ref s) | Event::Empty(ref s) => {
                if root.is_some() {
                    return Err(UpnpError::Xml("content after the root element".into()));
                }
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(UpnpError::TooLarge);
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(UpnpError::Xml("elements nested too deep".into()));
                }
                let el = open(s)?;
                if matches!(event, Event::Empty(_)) {
                    close(&mut stack, &mut root, el);
                } else {
                    stack.push(el);
                }
            }
            Event::End(_) => match stack.pop() {
                Some(el) => close(&mut stack, &mut root, el),
                None => return Err(UpnpError::Xml("unbalanced end tag".into())),
            },
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.decode().map_err(xml_err)?);
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&c.decode().map_err(xml_err)?);
                }
            }
            Event::GeneralRef(r) => {
                let Some(top) = stack.last_mut() else {
                    continue;
                };
                if r.is_char_ref() {
                    match r.resolve_char_ref().map_err(xml_err)? {
                        Some(c) => top.text.push(c),
                        None => return Err(UpnpError::Xml("bad character reference".into())),
                    }
                } else {
                    let name = r.decode().map_err(xml_err)?;
                    match quick_xml::escape::resolve_predefined_entity(&name) {
                        Some(s) => top.text.push_str(s),
                        None => return Err(UpnpError::Xml(format!("unknown entity &{name};"))),
                    }
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(UpnpError::Xml("unclosed element".into()));
    }
    root.ok_or(UpnpError::Xml("no root element".into()))
}

fn close(stack: &mut [Element], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None => *root = Some(el),
    }
}

/// Writes XML into a byte vector. Writing into a Vec cannot fail, so results are dropped.
pub(crate) struct XmlOut {
    w: Writer<Vec<u8>>,
}

impl XmlOut {
    pub fn new() -> Self {
        XmlOut {
            w: Writer::new(Vec::with_capacity(512)),
        }
    }

    /// `<?xml version="1.0"?>` and CRLF.
    pub fn decl(&mut self) -> &mut Self {
        let _ = self
            .w
            .write_event(Event::Decl(BytesDecl::new("1.0", None, None)));
        self.raw(b"\r\n")
    }

    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.w.get_mut().extend_from_slice(bytes);
        self
    }

    pub fn start(&mut self, name: &str, attrs: &[(&str, &str)]) -> &mut Self {
        let mut s = BytesStart::new(name);
        for a in attrs {
            s.push_attribute(*a);
        }
        let _ = self.w.write_event(Event::Start(s));
        self
    }

    pub fn end(&mut self, name: &str) -> &mut Self {
        let _ = self.w.write_event(Event::End(BytesEnd::new(name)));
        self
    }

    /// `<name>text</name>`, the text escaped; an empty text still gives an open and a close tag.
    pub fn leaf(&mut self, name: &str, text: &str) -> &mut Self {
        self.start(name, &[]);
        if !text.is_empty() {
            let _ = self.w.write_event(Event::Text(BytesText::new(text)));
        }
        self.end(name)
    }

    pub fn finish(self) -> Vec<u8> {
        self.w.into_inner()
    }
}
