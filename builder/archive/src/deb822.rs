//! A small zero-copy reader for Debian's deb822 control format (Release,
//! Packages, apt `.sources`): blank-line separated stanzas of `Field: value`
//! lines, where lines starting with a space or tab continue the value.
//!
//! Values borrow from the input, so a 60 000-stanza Packages file is parsed
//! without copying it.

/// One stanza: fields in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stanza<'a> {
    fields: Vec<(&'a str, &'a str)>,
}

impl<'a> Stanza<'a> {
    /// The value of a field (names compare case-insensitively, as in dpkg),
    /// trimmed; multi-line values keep their inner newlines.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    pub fn fields(&self) -> &[(&'a str, &'a str)] {
        &self.fields
    }
}

/// Splits `text` into stanzas. Lines without a colon outside a continuation
/// are ignored rather than fatal: signature armour and stray text never
/// reach here, since callers pass only verified content.
pub fn parse(text: &str) -> Vec<Stanza<'_>> {
    let mut stanzas = Vec::new();
    let mut current = Stanza::default();
    // Byte range of the value being built, so continuation lines extend it.
    let mut open: Option<(&str, usize, usize)> = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let content = line.trim_end_matches(['\n', '\r']);
        if content.trim().is_empty() {
            if let Some((k, s, e)) = open.take() {
                current.fields.push((k, &text[s..e]));
            }
            if !current.fields.is_empty() {
                stanzas.push(std::mem::take(&mut current));
            }
            continue;
        }
        if content.starts_with([' ', '\t']) {
            if let Some((_, _, e)) = open.as_mut() {
                *e = start + content.len();
            }
            continue;
        }
        if let Some((k, s, e)) = open.take() {
            current.fields.push((k, &text[s..e]));
        }
        if let Some(colon) = content.find(':') {
            let name = content[..colon].trim();
            open = Some((name, start + colon + 1, start + content.len()));
        }
    }
    if let Some((k, s, e)) = open.take() {
        current.fields.push((k, &text[s..e]));
    }
    if !current.fields.is_empty() {
        stanzas.push(current);
    }
    stanzas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanzas_fields_and_continuations() {
        let text = "Package: a\nDepends: b,\n c\nDescription: x\n more\n .\n end\n\n\nPackage: b\r\nVersion: 1\r\n";
        let s = parse(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].get("package"), Some("a"));
        assert_eq!(s[0].get("Depends"), Some("b,\n c"));
        assert_eq!(s[1].get("Version"), Some("1"));
        assert_eq!(s[1].get("Missing"), None);
    }
}
