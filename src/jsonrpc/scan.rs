//! A one-pass reader of the JSON-RPC envelope, for the message as clients and servers send
//! it. serde_json, reading the same members into borrowed `RawValue`s, spends most of its time
//! on machinery per token (visitors, field matching, raw-value capture); this reads the bytes
//! once and notes where each envelope member's value lies.
//!
//! It answers only when it is sure: `Some` for text serde_json reads as the same envelope,
//! `None` for anything unusual (an escaped member name, a `\u` escape, a repeated member, deep
//! nesting, any syntax error). On `None` the caller asks serde_json, whose answer is the
//! reference; the `jsonrpc_envelope` fuzz target holds the two to the same answers.

/// The envelope members of one message: each value's JSON text, without the whitespace around
/// it, borrowed from the message.
#[derive(Default)]
pub(super) struct Fields<'a> {
    pub jsonrpc: Option<&'a str>,
    /// `Some("null")` when the member is present with `null`.
    pub id: Option<&'a str>,
    pub method: Option<&'a str>,
    pub params: Option<&'a str>,
    pub result: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// Nesting this reader follows before it leaves the text to serde_json (which allows 128).
const DEPTH: usize = 64;
// What this reader answers for is never too deep for the gateway.
const _: () = assert!(DEPTH <= super::MAX_DEPTH);

/// The envelope of `text`, which must be one JSON object and nothing else but whitespace.
pub(super) fn envelope(text: &str) -> Option<Fields<'_>> {
    let mut f = Fields::default();
    object(text, |key, value| {
        let slot = match key {
            b"jsonrpc" => &mut f.jsonrpc,
            b"id" => &mut f.id,
            b"method" => &mut f.method,
            b"params" => &mut f.params,
            b"result" => &mut f.result,
            b"error" => &mut f.error,
            _ => &mut None,
        };
        // A repeated member is serde_json's to refuse.
        slot.replace(value).is_none().then_some(())
    })?;
    Some(f)
}

/// The value of the member `name` of `text`, which must be one JSON object and nothing else
/// but whitespace: `Some(None)` when there is none; `None` when unsure (as for [`envelope`]),
/// and when `name` appears twice.
pub(super) fn member<'a>(text: &'a str, name: &str) -> Option<Option<&'a str>> {
    let mut found = None;
    object(text, |key, value| match key == name.as_bytes() {
        true => found.replace(value).is_none().then_some(()),
        false => Some(()),
    })?;
    Some(found)
}

/// Reads the object `text` (nothing else but whitespace around it), handing `each` every
/// member's unescaped name and its value's text; `None` when unsure or when `each` says so.
fn object<'a>(text: &'a str, mut each: impl FnMut(&'a [u8], &'a str) -> Option<()>) -> Option<()> {
    let mut s = Scan { b: text.as_bytes(), i: 0 };
    s.ws();
    s.list(b'{', b'}', |s| {
        let key = s.key()?;
        s.colon()?;
        let start = s.i;
        s.value(1)?;
        each(key, &text[start..s.i])
    })?;
    s.ws();
    (s.i == s.b.len()).then_some(())
}

/// The bytes of a string that end it or need a look: a quote, a backslash, a control character.
static LOOK: [bool; 256] = {
    let mut look = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        look[c] = true;
        c += 1;
    }
    look[b'"' as usize] = true;
    look[b'\\' as usize] = true;
    look
};

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn next(&mut self) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// `open`, items read by `item` and separated by commas, `close`; whitespace between.
    fn list(&mut self, open: u8, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(open)?;
        self.ws();
        if self.b.get(self.i) == Some(&close) {
            self.i += 1;
            return Some(());
        }
        loop {
            item(self)?;
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                c if c == close => return Some(()),
                _ => return None,
            }
        }
    }

    /// The `:` between a member's name and its value.
    fn colon(&mut self) -> Option<()> {
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some(())
    }

    /// JSON's whitespace (not all of ASCII's).
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// A member name without escapes (an escaped one may spell a member's name otherwise).
    fn key(&mut self) -> Option<&'a [u8]> {
        let (b, start) = (self.b, self.i + 1);
        match self.string()? {
            false => Some(&b[start..self.i - 1]),
            true => None,
        }
    }

    /// One string; whether it had escapes. Control characters and `\u` escapes are left to
    /// serde_json.
    fn string(&mut self) -> Option<bool> {
        self.eat(b'"')?;
        let mut escaped = false;
        loop {
            // Straight to the next byte that needs a look.
            self.i += self.b.get(self.i..)?.iter().position(|&c| LOOK[usize::from(c)])?;
            match self.next()? {
                b'"' => return Some(escaped),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => escaped = true,
                    _ => return None,
                },
                _ => return None,
            }
        }
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        match *self.b.get(self.i)? {
            b'"' => self.string().map(drop),
            b'{' | b'[' if depth >= DEPTH => None,
            b'{' => self.list(b'{', b'}', |s| {
                s.string()?;
                s.colon()?;
                s.value(depth + 1)
            }),
            b'[' => self.list(b'[', b']', |s| s.value(depth + 1)),
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.word(b"true"),
            b'f' => self.word(b"false"),
            b'n' => self.word(b"null"),
            _ => None,
        }
    }

    fn word(&mut self, w: &[u8]) -> Option<()> {
        let end = self.i + w.len();
        (self.b.get(self.i..end)? == w).then(|| self.i = end)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`; what follows is the caller's to check.
    fn number(&mut self) -> Option<()> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            self.digit()?;
        }
        if let Some(b'e' | b'E') = self.b.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.b.get(self.i) {
                self.i += 1;
            }
            self.digit()?;
        }
        Some(())
    }

    /// At least one digit.
    fn digit(&mut self) -> Option<()> {
        self.next()?.is_ascii_digit().then(|| self.digits())
    }

    fn digits(&mut self) {
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{envelope, member};

    #[test]
    fn finds_one_member() {
        let text = r#" {"a":1, "b" : {"c":[2]} ,"d":"e"} "#;
        assert_eq!(member(text, "b"), Some(Some(r#"{"c":[2]}"#)));
        assert_eq!(member(text, "c"), Some(None), "only the object's own members");
        assert_eq!(member("{}", "a"), Some(None));
        assert_eq!(member(r#"{"a":1,"a":2}"#, "a"), None, "twice: serde_json's to answer");
        assert_eq!(member(r#"{"b":1,"b":2,"a":3}"#, "a"), Some(Some("3")));
        assert_eq!(member(r#"{"\u0061":1}"#, "a"), None, "an escaped name");
        assert_eq!(member(r#"{"a":1"#, "a"), None);
        assert_eq!(member("[1]", "a"), None);
    }

    #[test]
    fn reads_the_members_and_leaves_the_unusual_to_serde() {
        let f =
            envelope(" {\"jsonrpc\":\"2.0\", \"id\" : -1.5e+3 ,\"x\":[true,{}],\"params\":{\"a\":[null,\"\\n\"]}}\n")
                .expect("a plain message");
        assert_eq!(
            (f.jsonrpc, f.id, f.method, f.params, f.result, f.error),
            (Some("\"2.0\""), Some("-1.5e+3"), None, Some("{\"a\":[null,\"\\n\"]}"), None, None)
        );
        assert_eq!(envelope(r#"{"id":null}"#).unwrap().id, Some("null"));
        for sure_or_not in [
            r#"{"id":1,"id":2}"#, // repeated: serde_json refuses
            r#"{"\u0069d":1}"#,   // an escaped name
            r#"{"m":"\u00e9"}"#,  // a \u escape
            "{\"m\":\"a\tb\"}",   // a control character
            r#"{"id":01}"#,       // a leading zero
            r#"{"id":1.}"#,       // no fraction digits
            r#"{"id":1,}"#,       // a trailing comma
            r#"{"id":tru}"#,      // a short literal
            r#"{"id":1} x"#,      // trailing text
            r#"{"id":1"#,         // cut short
            r#"[{"id":1}]"#,      // not an object
        ] {
            assert!(envelope(sure_or_not).is_none(), "{sure_or_not}");
        }
        // Whatever byte of a long string needs a look, the skip to it finds it.
        for at in 0..20 {
            let (head, tail) = ("é".repeat(at / 2) + &"a".repeat(at % 2), "x".repeat(20 - at));
            let text = |special: &str| format!("{{\"method\":\"{head}{special}{tail}\",\"id\":1}}");
            let escaped = text("\\\"");
            let f = envelope(&escaped).expect("an escaped quote");
            assert_eq!(f.method, Some(format!("\"{head}\\\"{tail}\"").as_str()));
            assert_eq!(f.id, Some("1"));
            assert!(envelope(&text("\u{1}")).is_none(), "a control character at {at}");
            assert!(envelope(&text("\"")).is_none(), "a quote that ends the string early at {at}");
        }
        let deep = format!("{{\"p\":{}{}}}", "[".repeat(63), "]".repeat(63));
        assert!(envelope(&deep).is_some());
        let deeper = format!("{{\"p\":{}{}}}", "[".repeat(64), "]".repeat(64));
        assert!(envelope(&deeper).is_none(), "deep nesting is serde_json's");
    }
}
