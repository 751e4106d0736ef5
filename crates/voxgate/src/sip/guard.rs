//! Checks every SIP request before `rsipstack` parses it, so that nothing a peer sends goes
//! unanswered (RFC 3261 §8.2, §18.3; RFC 4475 §3.1.2, §3.3).
//!
//! `rsipstack` drops a datagram it cannot parse without a word, and accepts some requests RFC 3261
//! says to refuse (two Content-Length headers, a CSeq method that is not the request's). [`inspect`]
//! looks at the raw bytes first and either
//! - answers a request that is malformed but readable enough to answer (Via, From, To, Call-ID,
//!   CSeq found): 400 with a reason phrase that says what is wrong, 505 for a SIP version other
//!   than 2.0, 416 for a Request-URI scheme other than `sip`, `sips` or `tel`, 501 (with
//!   `Allow`) for a method `rsipstack` cannot represent — statelessly (RFC 3261 §8.2.7), back to
//!   the request's source address;
//! - or passes the message on, rewritten when it is valid but beyond `rsipstack`'s parser: folded
//!   header lines joined (§7.3.1), white space around `;`, `=`, `/` and `,` in Via, From, To,
//!   Contact and Route values removed, octets after Content-Length dropped (§18.3), and a tag
//!   added to a From without one (an RFC 2543 request, §8.2.6.2/§12.1.1) — the same tag for every
//!   request of that dialog, derived from its Call-ID and From URI;
//! - or drops it when no answer can reach the sender (no Via).
//!
//! Responses pass through untouched (a response that does not parse is dropped by `rsipstack`,
//! which is all a UA can do with it).

use std::borrow::Cow;
use std::net::SocketAddr;

/// What to do with a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Hand these bytes to `rsipstack` (the datagram, or its rewritten form).
    Pass(Cow<'a, [u8]>),
    /// Send `response` to `to` and do not hand the request on.
    Answer {
        /// The whole SIP response, CRLF line ends.
        response: Vec<u8>,
        /// The request's source address (symmetric response routing, RFC 3581 §4).
        to: SocketAddr,
        /// Status code, for the log.
        code: u16,
        /// Reason phrase, for the log.
        reason: String,
    },
    /// Nothing can be answered (no Via): drop it, with the reason for the log.
    Drop(&'static str),
}

/// Header names in their long form, lower case (RFC 3261 §7.3.3 compact forms expanded).
fn long_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let long = match lower.as_str() {
        "i" => "call-id",
        "m" => "contact",
        "e" => "content-encoding",
        "l" => "content-length",
        "c" => "content-type",
        "f" => "from",
        "s" => "subject",
        "k" => "supported",
        "t" => "to",
        "v" => "via",
        "o" => "event",
        "r" => "refer-to",
        "b" => "referred-by",
        "u" => "allow-events",
        "x" => "session-expires",
        _ => return lower,
    };
    long.to_string()
}

/// Headers that may appear once (RFC 3261 §20, §7.3.1: only comma-list headers may repeat).
const SINGLE: &[&str] = &[
    "call-id",
    "cseq",
    "from",
    "to",
    "max-forwards",
    "content-length",
    "content-type",
    "expires",
];

/// The methods `rsipstack` parses (RFC 3261 and its extensions); any other is answered 501.
const KNOWN_METHODS: &[&str] = &[
    "ACK",
    "BYE",
    "CANCEL",
    "INFO",
    "INVITE",
    "MESSAGE",
    "NOTIFY",
    "OPTIONS",
    "PRACK",
    "PUBLISH",
    "REFER",
    "REGISTER",
    "SUBSCRIBE",
    "UPDATE",
];

/// Headers whose values are rewritten without white space around separators.
const SQUEEZED: &[&str] = &["via", "from", "to", "contact", "route", "record-route"];

/// RFC 3261 §25.1 `token` characters.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

struct Header {
    /// As sent (for the rewrite), folded lines joined.
    name: String,
    /// Long form, lower case.
    key: String,
    value: String,
}

/// Looks at one datagram from `source` (see the module docs).
pub fn inspect(datagram: &[u8], source: SocketAddr) -> Verdict<'_> {
    // RFC 3261 §7.5: CRLFs before the start line are ignored.
    let start = leading_crlfs(datagram);
    let msg = &datagram[start..];
    if msg.is_empty() {
        return Verdict::Pass(Cow::Borrowed(datagram));
    }
    if msg.starts_with(b"SIP/") {
        return match contactless_2xx(msg) {
            Some(fixed) => Verdict::Pass(Cow::Owned(fixed)),
            None => Verdict::Pass(Cow::Borrowed(datagram)),
        };
    }
    let Some(head_end) = find(msg, b"\r\n\r\n") else {
        return Verdict::Drop("no end of the header section");
    };
    let head = String::from_utf8_lossy(&msg[..head_end]);
    let body = &msg[head_end + 4..];
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut headers: Vec<Header> = Vec::new();
    let mut folded = false;
    // White space between a header name and its colon (allowed, §7.3.1; not by rsipstack).
    let mut spaced_name = false;
    let mut bad_line = None;
    for line in lines {
        if line.starts_with([' ', '\t']) {
            folded = true;
            match headers.last_mut() {
                Some(h) => {
                    h.value.push(' ');
                    h.value.push_str(line.trim());
                    h.value = h.value.trim().to_string();
                }
                None => bad_line = Some("a continuation line before any header"),
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            bad_line = Some("a header line without a colon");
            continue;
        };
        let trimmed = name.trim_end_matches([' ', '\t']);
        spaced_name |= trimmed.len() != name.len();
        let name = trimmed;
        if name.is_empty() || !name.bytes().all(is_token_char) {
            bad_line = Some("a header name that is not a token");
            continue;
        }
        headers.push(Header {
            name: name.to_string(),
            key: long_name(name),
            value: value.trim().to_string(),
        });
    }
    let get = |k: &str| {
        headers
            .iter()
            .find(|h| h.key == k)
            .map(|h| h.value.as_str())
    };
    if !headers.iter().any(|h| h.key == "via") {
        return Verdict::Drop("a request without Via cannot be answered");
    }
    let answer = |code: u16, reason: String, extra: &[(&str, String)]| {
        build_answer(&headers, source, code, reason, extra)
    };
    if let Some(what) = bad_line {
        return answer(400, format!("Bad header: {what}"), &[]);
    }

    // The request line: Method SP Request-URI SP SIP-Version, single spaces (§7.1, §25.1).
    let parts: Vec<&str> = request_line.split(' ').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        let why = if request_line.ends_with([' ', '\t']) {
            "white space at the end of the Request-Line"
        } else if parts.len() > 3 && parts.iter().any(|p| p.is_empty()) {
            "more than one space between Request-Line elements"
        } else {
            "a Request-Line that is not Method SP Request-URI SP SIP-Version"
        };
        return answer(400, format!("Malformed Request-Line: {why}"), &[]);
    }
    let (method, uri, version) = (parts[0], parts[1], parts[2]);
    if !method.bytes().all(is_token_char) {
        return answer(
            400,
            "Malformed Request-Line: the method is not a token".into(),
            &[],
        );
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return answer(505, "Version Not Supported".into(), &[]);
    }
    if uri.starts_with('<') {
        return answer(400, "Malformed Request-URI: enclosed in <>".into(), &[]);
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return answer(400, "Malformed Request-URI: no scheme".into(), &[]);
    };
    if !["sip", "sips", "tel"].contains(&scheme.to_ascii_lowercase().as_str()) {
        return answer(416, "Unsupported URI Scheme".into(), &[]);
    }
    // `?` starts URI headers only after the host: the userinfo may hold one (RFC 3261 §25.1
    // `user-unreserved`; RFC 4475 §3.1.1.2).
    let host_part = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if host_part.contains('?') {
        return answer(
            400,
            "Malformed Request-URI: it carries headers (?...)".into(),
            &[],
        );
    }

    // The headers every request needs (§8.1.1); RFC 2543 requests may lack Max-Forwards.
    for k in ["call-id", "cseq", "from", "to"] {
        if get(k).is_none() {
            return answer(400, format!("Missing {} header", canonical(k)), &[]);
        }
    }
    for k in SINGLE {
        let n: usize = headers
            .iter()
            .filter(|h| h.key == *k)
            .map(|h| {
                if *k == "content-length" {
                    h.value.split(',').count()
                } else {
                    1
                }
            })
            .sum();
        if n > 1 {
            return answer(400, format!("Multiple {} values", canonical(k)), &[]);
        }
    }
    let cseq = get("cseq").unwrap_or_default();
    let mut cs = cseq.split_whitespace();
    let (num, cs_method) = (cs.next().unwrap_or_default(), cs.next().unwrap_or_default());
    if cs.next().is_some() || num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return answer(400, "Malformed CSeq".into(), &[]);
    }
    if num.parse::<u64>().map_or(true, |n| n >= 1 << 31) {
        return answer(400, "CSeq number too large (2^31 or more)".into(), &[]);
    }
    if cs_method != method {
        return answer(
            400,
            "CSeq method does not match the request method".into(),
            &[],
        );
    }
    // Methods are case-sensitive (§7.1); one rsipstack cannot represent is one we do not
    // implement (§8.2.1: 501).
    if !KNOWN_METHODS.contains(&method) {
        return answer(
            501,
            "Not Implemented".into(),
            &[("Allow", super::ALLOW.to_string())],
        );
    }
    if let Some(mf) = get("max-forwards") {
        if !mf.bytes().all(|b| b.is_ascii_digit()) || mf.parse::<u32>().map_or(true, |n| n > 255) {
            return answer(400, "Max-Forwards is not 0-255".into(), &[]);
        }
    }
    if let Some(ex) = get("expires") {
        if !ex.bytes().all(|b| b.is_ascii_digit()) || ex.parse::<u32>().is_err() {
            return answer(400, "Expires is not 0-4294967295 seconds".into(), &[]);
        }
    }
    for h in headers
        .iter()
        .filter(|h| ["from", "to", "contact"].contains(&h.key.as_str()))
    {
        if h.key == "contact" && h.value == "*" {
            continue;
        }
        if let Err(why) = check_name_addr(&h.value) {
            return answer(400, format!("Malformed {}: {why}", h.name), &[]);
        }
    }
    // Separators with nothing between them (RFC 4475 §3.1.2.1: `;;,;,,` in Via, `;;;;` after a
    // Contact): a generic-param needs a name (§25.1), a list element a value (§7.3.1).
    for h in headers.iter().filter(|h| {
        ["via", "from", "to", "contact", "route", "record-route"].contains(&h.key.as_str())
    }) {
        if empty_separators(&h.value) {
            return answer(
                400,
                format!("Malformed {}: an empty parameter or list element", h.name),
                &[],
            );
        }
    }

    // The body: Content-Length over UDP (§18.3).
    let mut body_len = body.len();
    if let Some(cl) = get("content-length") {
        let cl = cl.trim();
        if cl.starts_with('-') {
            return answer(400, "Negative Content-Length".into(), &[]);
        }
        let Ok(n) = cl.parse::<usize>() else {
            return answer(400, "Malformed Content-Length".into(), &[]);
        };
        if n > body.len() {
            return answer(
                400,
                "Content-Length larger than the message body".into(),
                &[],
            );
        }
        body_len = n;
    }

    // Valid: rewrite what rsipstack would not read.
    let from = get("from").unwrap_or_default();
    let needs_tag = !has_param(from, "tag");
    // An RFC 2543 request may have no branch (§17.2.3 matches on the request's fields instead):
    // give the top Via one made of those fields, so that the INVITE, its ACK and CANCEL and
    // their retransmissions share it.
    let top_via = headers
        .iter()
        .find(|h| h.key == "via")
        .map(|h| squeeze(&h.value))
        .unwrap_or_default();
    let top_via_first = split_commas(&top_via)[0].to_string();
    let needs_branch = !top_via_first.split(';').skip(1).any(|p| {
        p.split('=')
            .next()
            .is_some_and(|n| n.eq_ignore_ascii_case("branch"))
    });
    // RFC 2543 INVITEs may have no Contact (RFC 3261 §8.1.1.8 requires one): the From URI is
    // where such a caller is reached.
    let needs_contact = method == "INVITE" && get("contact").is_none();
    let squeeze_needed = headers
        .iter()
        .any(|h| SQUEEZED.contains(&h.key.as_str()) && squeeze(&h.value) != h.value);
    if !folded
        && !needs_tag
        && !needs_branch
        && !needs_contact
        && !squeeze_needed
        && !spaced_name
        && body_len == body.len()
        && start == 0
    {
        return Verdict::Pass(Cow::Borrowed(datagram));
    }
    let mut out = Vec::with_capacity(datagram.len() + 48);
    out.extend_from_slice(request_line.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut branch_added = false;
    for h in &headers {
        let mut value = if SQUEEZED.contains(&h.key.as_str()) {
            squeeze(&h.value)
        } else {
            h.value.clone()
        };
        if h.key == "via" && needs_branch && !branch_added {
            branch_added = true;
            let key = format!(
                "{}|{num}|{from}|{top_via_first}|{uri}",
                get("call-id").unwrap_or_default()
            );
            let rest = value[top_via_first.len()..].to_string();
            value = format!(
                "{top_via_first};branch=z9hG4bK{}{rest}",
                rfc2543_tag(&key, "branch")
            );
        }
        if h.key == "from" && needs_tag {
            value.push_str(";tag=");
            value.push_str(&rfc2543_tag(get("call-id").unwrap_or_default(), from));
        }
        // Names as sent (case and compact forms kept: applications see `X-` headers as sent).
        out.extend_from_slice(format!("{}: {value}\r\n", h.name).as_bytes());
    }
    if needs_contact {
        out.extend_from_slice(format!("Contact: <{}>\r\n", addr_uri(from)).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body[..body_len]);
    Verdict::Pass(Cow::Owned(out))
}

/// Header the guard adds to a 2xx INVITE response that came without a Contact; the outbound
/// call ends it with BYE (RFC 3261 §13.2.2.4: no remote target, no usable dialog).
pub const NO_CONTACT_MARK: &str = "X-Voxgate-Guard";

/// A 2xx to an INVITE without Contact, rewritten with `Contact: <To URI>` (so that rsipstack can
/// ACK it, §13.2.2.4) and [`NO_CONTACT_MARK`]; `None` for any other response.
fn contactless_2xx(msg: &[u8]) -> Option<Vec<u8>> {
    let code: u16 = std::str::from_utf8(msg.get(8..11)?).ok()?.parse().ok()?;
    if !(200..300).contains(&code) {
        return None;
    }
    let head_end = find(msg, b"\r\n\r\n")?;
    // The status line is copied as bytes: a lossy string of it can be longer than the original
    // (each invalid octet becomes a 3-byte U+FFFD), so its length must not index `msg`.
    let status_end = find(msg, b"\r\n")?;
    let head = String::from_utf8_lossy(&msg[..head_end]);
    let mut lines = head.split("\r\n");
    lines.next()?;
    let fields: Vec<(String, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (long_name(n.trim()), v.trim()))
        .collect();
    let cseq_invite = fields
        .iter()
        .any(|(k, v)| k == "cseq" && v.split_whitespace().nth(1) == Some("INVITE"));
    if !cseq_invite || fields.iter().any(|(k, _)| k == "contact") {
        return None;
    }
    let to = fields.iter().find(|(k, _)| k == "to")?.1;
    let mut out = Vec::with_capacity(msg.len() + 96);
    out.extend_from_slice(&msg[..status_end]);
    out.extend_from_slice(
        format!(
            "\r\nContact: <{}>\r\n{NO_CONTACT_MARK}: no-contact",
            addr_uri(to)
        )
        .as_bytes(),
    );
    out.extend_from_slice(&msg[status_end..]);
    Some(out)
}

/// The URI of a name-addr (`"x" <uri>;tag=1`) or addr-spec (`uri;tag=1`) value.
pub(crate) fn addr_uri(v: &str) -> &str {
    match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v.split(';').next().unwrap_or_default().trim(),
    }
}

/// The header's usual spelling, for reason phrases and rewritten requests.
fn canonical(key: &str) -> String {
    match key {
        "call-id" => "Call-ID".into(),
        "cseq" => "CSeq".into(),
        "www-authenticate" => "WWW-Authenticate".into(),
        _ => key
            .split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("-"),
    }
}

/// RFC 3261 §20.10/§25.1 name-addr / addr-spec checks on a From, To or Contact value.
fn check_name_addr(v: &str) -> Result<(), &'static str> {
    let quotes = unescaped_quotes(v);
    if quotes % 2 == 1 {
        return Err("an unterminated quoted string");
    }
    match v.find('<').filter(|&i| quotes == 0 || !inside_quotes(v, i)) {
        Some(lt) => {
            let display = v[..lt].trim();
            if !display.is_empty() && !display.starts_with('"') {
                let ok = display
                    .split([' ', '\t'])
                    .filter(|w| !w.is_empty())
                    .all(|w| w.bytes().all(is_token_char));
                if !ok {
                    return Err("a display name with characters that need quotes");
                }
            }
            let Some(gt) = v[lt..].find('>').map(|g| g + lt) else {
                return Err("no closing >");
            };
            let spec = &v[lt + 1..gt];
            if spec.starts_with([' ', '\t']) || spec.ends_with([' ', '\t']) {
                return Err("white space inside <>");
            }
        }
        None => {
            // An addr-spec with no <>: a `?` (headers) or `,` would need the brackets (§20).
            let spec = v.split(';').next().unwrap_or_default();
            if spec.contains('?') || spec.contains(',') {
                return Err("a URI with headers or a comma outside <>");
            }
        }
    }
    Ok(())
}

/// Whether `v` has `;;`, `;,`, `,,`, `,;` or ends in `;` or `,` (white space aside), outside
/// quoted strings and `<>`.
fn empty_separators(v: &str) -> bool {
    let mut skeleton = String::with_capacity(v.len());
    let (mut in_q, mut escaped, mut in_angle) = (false, false, false);
    for c in v.chars() {
        if in_q {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_q = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_q = true;
                skeleton.push('q');
            }
            '<' => in_angle = true,
            '>' => {
                in_angle = false;
                skeleton.push('u');
            }
            _ if in_angle || c.is_whitespace() => {}
            _ => skeleton.push(c),
        }
    }
    ["; ;", ";;", ";,", ",,", ",;"]
        .iter()
        .any(|p| skeleton.contains(p))
        || skeleton.starts_with([',', ';'])
        || skeleton.ends_with([',', ';'])
}

fn unescaped_quotes(v: &str) -> usize {
    let mut n = 0;
    let mut escaped = false;
    let mut in_q = false;
    for c in v.chars() {
        if escaped {
            escaped = false;
        } else if in_q && c == '\\' {
            escaped = true;
        } else if c == '"' {
            n += 1;
            in_q = !in_q;
        }
    }
    n
}

fn inside_quotes(v: &str, at: usize) -> bool {
    unescaped_quotes(&v[..at]) % 2 == 1
}

/// `;name` or `;name=value` among the header parameters (after any `>`).
fn has_param(v: &str, name: &str) -> bool {
    let params = match v.rfind('>') {
        Some(i) => &v[i + 1..],
        None => v,
    };
    params.split(';').skip(1).any(|p| {
        p.split('=')
            .next()
            .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
    })
}

/// Removes white space next to `;`, `=`, `/` and `,` outside quoted strings and `<>` (the LWS
/// RFC 3261 §25.1 allows around SEMI, EQUAL, SLASH and COMMA), and runs of white space elsewhere
/// become one space.
fn squeeze(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let (mut in_q, mut escaped, mut in_angle) = (false, false, false);
    let mut pending_space = false;
    for c in v.chars() {
        if in_q {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_q = false;
            }
            continue;
        }
        if in_angle {
            out.push(c);
            if c == '>' {
                in_angle = false;
            }
            continue;
        }
        match c {
            ' ' | '\t' => pending_space = true,
            ';' | '=' | '/' | ',' => {
                // White space before it is dropped, and after it (see below).
                pending_space = false;
                out.push(c);
            }
            _ => {
                if pending_space && !out.is_empty() && !out.ends_with([';', '=', '/', ',']) {
                    out.push(' ');
                }
                pending_space = false;
                if c == '"' {
                    in_q = true;
                } else if c == '<' {
                    in_angle = true;
                }
                out.push(c);
            }
        }
    }
    out
}

/// A From tag for an RFC 2543 request: the same for every request with this Call-ID and From.
fn rfc2543_tag(call_id: &str, from: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    call_id.hash(&mut h);
    from.trim().hash(&mut h);
    format!("2543-{:016x}", h.finish())
}

/// Where `needle` first occurs in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How many CR and LF octets `msg` starts with (RFC 3261 §7.5: ignored before a start line).
pub(crate) fn leading_crlfs(msg: &[u8]) -> usize {
    msg.iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(msg.len())
}

/// A stateless response (RFC 3261 §8.2.6) to the request whose headers are `headers`.
/// A stateless answer with `code` and `reason` to the request in `msg` (its Via, From, To,
/// Call-ID and CSeq copied, RFC 3261 §8.2.6), for a request the guard passed but the stack
/// could not parse or a stream could not frame; `None` for a response or a request without Via.
pub fn refuse(msg: &[u8], source: SocketAddr, code: u16, reason: &str) -> Option<Vec<u8>> {
    let msg = &msg[leading_crlfs(msg)..];
    if msg.starts_with(b"SIP/") {
        return None;
    }
    let head_end = find(msg, b"\r\n\r\n").unwrap_or(msg.len());
    let head = String::from_utf8_lossy(&msg[..head_end]);
    let headers: Vec<Header> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            let n = n.trim();
            Some(Header {
                name: n.to_string(),
                key: long_name(n),
                value: v.trim().to_string(),
            })
        })
        .collect();
    if !headers.iter().any(|h| h.key == "via") {
        return None;
    }
    match build_answer(&headers, source, code, reason.to_string(), &[]) {
        Verdict::Answer { response, .. } => Some(response),
        _ => None,
    }
}

fn build_answer<'a>(
    headers: &[Header],
    source: SocketAddr,
    code: u16,
    reason: String,
    extra: &[(&str, String)],
) -> Verdict<'a> {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    // Symmetric response routing: the answer goes back to where the request came from (RFC 3581
    // §4, also without `rport` — as `rsipstack` does for the requests it answers — so a phone
    // behind NAT hears it).
    let to = source;
    let mut first_via = true;
    for h in headers.iter().filter(|h| h.key == "via") {
        for (i, v) in split_commas(&squeeze(&h.value)).into_iter().enumerate() {
            let mut v = v.to_string();
            if first_via && i == 0 {
                // §18.2.2: received= the source address; rport (RFC 3581) gets the port.
                let rport = v
                    .split(';')
                    .skip(1)
                    .any(|p| p.eq_ignore_ascii_case("rport"));
                v.push_str(&format!(";received={}", source.ip()));
                if rport {
                    v = v
                        .split(';')
                        .map(|p| {
                            if p.eq_ignore_ascii_case("rport") {
                                format!("rport={}", source.port())
                            } else {
                                p.to_string()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(";");
                }
                first_via = false;
            }
            out.push_str(&format!("Via: {v}\r\n"));
        }
    }
    for k in ["from", "to", "call-id", "cseq"] {
        if let Some(h) = headers.iter().find(|h| h.key == k) {
            let mut v = h.value.clone();
            if k == "to" && !has_param(&v, "tag") {
                v.push_str(&format!(";tag={}", rfc2543_tag(&v, "voxgate")));
            }
            out.push_str(&format!("{}: {v}\r\n", canonical(k)));
        }
    }
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(concat!(
        "Server: voxgate/",
        env!("CARGO_PKG_VERSION"),
        "\r\n"
    ));
    out.push_str("Content-Length: 0\r\n\r\n");
    Verdict::Answer {
        response: out.into_bytes(),
        to,
        code,
        reason,
    }
}

/// Splits on commas outside quoted strings and `<>`.
fn split_commas(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut in_q, mut in_angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in v.char_indices() {
        if in_q {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_q = false;
            }
            continue;
        }
        match c {
            '"' => in_q = true,
            '<' => in_angle = true,
            '>' => in_angle = false,
            ',' if !in_angle => {
                out.push(v[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(v[start..].trim());
    out
}

/// The SIP UDP socket with [`inspect`] in front of `rsipstack`: what rsipstack's receive loop
/// reads has passed the checks, and what failed them is answered here.
pub struct GuardedUdp {
    socket: tokio::net::UdpSocket,
}

impl GuardedUdp {
    /// Binds `addr` (no address or port reuse).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(GuardedUdp {
            socket: tokio::net::UdpSocket::bind(addr).await?,
        })
    }

    async fn answer(&self, response: &[u8], to: SocketAddr) {
        if let Err(e) = self.socket.send_to(response, to).await {
            tracing::debug!(%to, "sending a stateless SIP answer: {e}");
        }
    }
}

#[async_trait::async_trait]
impl rsipstack::platform::net::UdpSocket for GuardedUdp {
    async fn recv_from(&self, buf: &mut [u8]) -> rsipstack::Result<(usize, SocketAddr)> {
        // Bounded by the datagrams that arrive: every turn of the loop consumes one.
        let mut dgram = vec![0u8; 65_536];
        loop {
            let (len, from) = self.socket.recv_from(&mut dgram).await?;
            let data = &dgram[..len];
            // A fault in the guard must not end the socket's receive loop (and with it all SIP
            // over UDP): the datagram is dropped and the fault logged.
            let verdict = std::panic::catch_unwind(|| inspect(data, from)).unwrap_or_else(|_| {
                tracing::error!(%from, len, "SIP guard fault on a datagram; dropped");
                Verdict::Drop("guard fault")
            });
            match verdict {
                Verdict::Pass(bytes) if bytes.len() <= buf.len() => {
                    buf[..bytes.len()].copy_from_slice(&bytes);
                    return Ok((bytes.len(), from));
                }
                Verdict::Pass(bytes) => {
                    // rsipstack reads at most `buf.len()` octets: answer 513 rather than let a
                    // truncated request through (RFC 3261 §21.5.11).
                    if let Verdict::Answer { response, to, .. } = too_large(&bytes, from, buf.len())
                    {
                        tracing::info!(%from, len, "SIP request too large: 513");
                        self.answer(&response, to).await;
                    }
                }
                Verdict::Answer {
                    response,
                    to,
                    code,
                    reason,
                } => {
                    tracing::info!(%from, code, reason, "SIP request refused before parsing");
                    self.answer(&response, to).await;
                }
                Verdict::Drop(why) => tracing::debug!(%from, len, "SIP datagram dropped: {why}"),
            }
        }
    }

    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> rsipstack::Result<usize> {
        Ok(self.socket.send_to(buf, addr).await?)
    }

    fn local_addr(&self) -> rsipstack::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }
}

/// 513 Message Too Large for a request longer than `limit` octets (responses are dropped).
fn too_large(msg: &[u8], source: SocketAddr, limit: usize) -> Verdict<'static> {
    if msg.starts_with(b"SIP/") {
        return Verdict::Drop("a response larger than the receive buffer");
    }
    let Some(head_end) = find(msg, b"\r\n\r\n") else {
        return Verdict::Drop("no end of the header section");
    };
    let head = String::from_utf8_lossy(&msg[..head_end]);
    let headers: Vec<Header> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| Header {
            name: n.trim().to_string(),
            key: long_name(n.trim()),
            value: v.trim().to_string(),
        })
        .collect();
    if !headers.iter().any(|h| h.key == "via") {
        return Verdict::Drop("a request without Via cannot be answered");
    }
    build_answer(
        &headers,
        source,
        513,
        format!("Message Too Large (at most {limit} octets over UDP)"),
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "127.0.0.1:40000";

    /// A request from `lines` (joined with CRLF, then an empty line and `body`).
    fn req(lines: &[&str], body: &str) -> Vec<u8> {
        format!("{}\r\n\r\n{body}", lines.join("\r\n")).into_bytes()
    }

    fn options(extra: &[&str]) -> Vec<u8> {
        let mut l = vec![
            "OPTIONS sip:user@example.com SIP/2.0",
            "Via: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK-1",
            "Max-Forwards: 70",
            "From: <sip:caller@example.net>;tag=a1",
            "To: <sip:user@example.com>",
            "Call-ID: guard-1",
            "CSeq: 1 OPTIONS",
        ];
        l.extend_from_slice(extra);
        l.push("Content-Length: 0");
        req(&l, "")
    }

    /// The status code and reason of an answer (panics on a pass).
    fn answered(v: Verdict<'_>) -> (u16, String, String, SocketAddr) {
        match v {
            Verdict::Answer {
                code,
                reason,
                response,
                to,
            } => (code, reason, String::from_utf8(response).unwrap(), to),
            other => panic!("not answered: {other:?}"),
        }
    }

    fn passed(v: Verdict<'_>) -> String {
        match v {
            Verdict::Pass(b) => String::from_utf8_lossy(&b).into_owned(),
            other => panic!("not passed: {other:?}"),
        }
    }

    #[test]
    fn empty_parameters_and_list_elements_are_found() {
        assert!(empty_separators("SIP/2.0/UDP 192.0.2.15;;,;,,"));
        assert!(empty_separators("\"Joe\" <sip:joe@example.org>;;;;"));
        assert!(empty_separators("<sip:a@b>;tag=1;"));
        assert!(empty_separators("SIP/2.0/UDP a ; ; branch=z9hG4bK1"));
        assert!(!empty_separators(
            "SIP  / 2.0  / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8  , SIP  /    2.0   / UDP  192.168.255.111   ; branch= z9hG4bK30239"
        ));
        assert!(!empty_separators("\";;,,\" <sip:a;;b@c>;tag=1"));
        assert!(!empty_separators(
            "sip:user;par=u%40example.net@example.com;tag=1"
        ));
    }

    #[test]
    fn a_plain_request_passes_untouched() {
        let m = options(&[]);
        assert_eq!(
            inspect(&m, SRC.parse().unwrap()),
            Verdict::Pass(Cow::Borrowed(&m[..]))
        );
        let resp = b"SIP/2.0 4294967301 better not break the receiver\r\n\r\n";
        assert!(matches!(
            inspect(resp, SRC.parse().unwrap()),
            Verdict::Pass(_)
        ));
    }

    /// A 2xx to an INVITE without Contact gets the To URI as Contact and the mark; other
    /// responses pass untouched.
    #[test]
    fn a_contactless_2xx_is_marked_for_bye() {
        let src: SocketAddr = SRC.parse().unwrap();
        let ok = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\n\
                  To: \"Bob\" <sip:bob@192.0.2.9:5070>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let out = passed(inspect(ok.as_bytes(), src));
        assert!(out.starts_with("SIP/2.0 200 OK\r\nContact: <sip:bob@192.0.2.9:5070>\r\nX-Voxgate-Guard: no-contact\r\nVia:"), "{out}");
        for other in [
            ok.replace("CSeq: 1 INVITE", "CSeq: 2 BYE"),
            ok.replace("SIP/2.0 200 OK", "SIP/2.0 486 Busy Here"),
            ok.replace("Call-ID: x", "Call-ID: x\r\nm: <sip:bob@h>"),
        ] {
            assert_eq!(passed(inspect(other.as_bytes(), src)), other);
        }
        // A reason phrase that is not UTF-8 (found by fuzzing: a lossy copy of the status line
        // is longer than the bytes and indexed past the datagram's end).
        let mut odd = b"SIP/2.0 200 \xd0\xc9\xc9\xc9\xc9\xc9\xc9\xc9".to_vec();
        odd.extend_from_slice(&ok.as_bytes()["SIP/2.0 200 OK".len()..]);
        match inspect(&odd, src) {
            Verdict::Pass(out) => {
                assert!(out.starts_with(&odd[..20]));
                assert!(find(&out, b"\r\nContact: <sip:bob@192.0.2.9:5070>\r\n").is_some());
                assert!(out.ends_with(&odd[20..]));
            }
            _ => panic!("a 2xx is passed on"),
        }
    }

    #[test]
    fn the_answer_goes_back_to_the_source() {
        let m = options(&["Content-Length: 0"]);
        let (code, reason, resp, to) = answered(inspect(&m, SRC.parse().unwrap()));
        assert_eq!(
            (code, reason.as_str()),
            (400, "Multiple Content-Length values")
        );
        assert_eq!(to, SRC.parse().unwrap());
        assert!(resp.starts_with("SIP/2.0 400 Multiple Content-Length values\r\n"));
        assert!(resp
            .contains("Via: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK-1;received=127.0.0.1\r\n"));
        assert!(resp.contains("From: <sip:caller@example.net>;tag=a1\r\n"));
        assert!(resp.contains("To: <sip:user@example.com>;tag="));
        assert!(resp.contains("Call-ID: guard-1\r\nCSeq: 1 OPTIONS\r\n"));
        assert!(resp.ends_with("Content-Length: 0\r\n\r\n"));
        // rport gets its value (RFC 3581 §4).
        let m = String::from_utf8(m)
            .unwrap()
            .replace("branch=z9hG4bK-1", "rport;branch=z9hG4bK-1");
        let (_, _, resp, to) = answered(inspect(m.as_bytes(), SRC.parse().unwrap()));
        assert_eq!(to, SRC.parse().unwrap());
        assert!(resp.contains(";rport=40000;branch=z9hG4bK-1;received=127.0.0.1"));
    }

    #[test]
    fn malformed_requests_get_the_answer_rfc_4475_expects() {
        let src: SocketAddr = SRC.parse().unwrap();
        let base = String::from_utf8(options(&[])).unwrap();
        let cases: Vec<(String, u16, &str)> = vec![
            (base.replace("SIP/2.0\r\n", "SIP/7.0\r\n"), 505, "Version"),
            (
                base.replace(
                    "OPTIONS sip:user@example.com",
                    "OPTIONS nobodyKnowsThisScheme:opaque",
                ),
                416,
                "Scheme",
            ),
            (
                base.replace(
                    "OPTIONS sip:user@example.com",
                    "OPTIONS <sip:user@example.com>",
                ),
                400,
                "enclosed in <>",
            ),
            (
                base.replace(
                    "OPTIONS sip:user@example.com",
                    "OPTIONS  sip:user@example.com ",
                ),
                400,
                "Request-Line",
            ),
            (
                base.replace("SIP/2.0\r\nVia", "SIP/2.0 \r\nVia"),
                400,
                "white space at the end",
            ),
            (
                base.replace(
                    "OPTIONS sip:user@example.com",
                    "OPTIONS sip:user@example.com; lr",
                ),
                400,
                "Request-Line",
            ),
            (
                base.replace(
                    "sip:user@example.com SIP",
                    "sip:user@example.com?Route=%3Csip:x%3E SIP",
                ),
                400,
                "headers",
            ),
            (
                base.replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE"),
                400,
                "CSeq method",
            ),
            (
                base.replace("CSeq: 1 OPTIONS", "CSeq: 36893488147419103232 OPTIONS"),
                400,
                "CSeq number",
            ),
            (
                base.replace("Max-Forwards: 70", "Max-Forwards: 300"),
                400,
                "Max-Forwards",
            ),
            (
                base.replace("Call-ID: guard-1\r\n", ""),
                400,
                "Missing Call-ID",
            ),
            (
                base.replace("Call-ID: guard-1", "Call-ID: guard-1\r\ni: guard-2"),
                400,
                "Multiple Call-ID",
            ),
            (
                base.replace(
                    "To: <sip:user@example.com>",
                    "To: \"Mr. J. User <sip:user@example.com>",
                ),
                400,
                "unterminated",
            ),
            (
                base.replace(
                    "To: <sip:user@example.com>",
                    "To: Watson, Thomas <sip:user@example.com>",
                ),
                400,
                "display name",
            ),
            (
                base.replace(
                    "To: <sip:user@example.com>",
                    "To: \"Watson\" < sip:user@example.com >",
                ),
                400,
                "white space inside",
            ),
            (
                base.replace("Content-Length: 0", "Content-Length: -999"),
                400,
                "Negative",
            ),
            (
                base.replace("Content-Length: 0", "Content-Length: 9999"),
                400,
                "larger than",
            ),
            (
                base.replace("Content-Length: 0", "l: 13, 5"),
                400,
                "Multiple Content-Length",
            ),
            (
                base.replace("Max-Forwards: 70\r\n", "Max-Forwards 70\r\n"),
                400,
                "colon",
            ),
            (
                base.replace("OPTIONS sip", "NEWMETHOD sip")
                    .replace("1 OPTIONS", "1 NEWMETHOD"),
                501,
                "Not Implemented",
            ),
            (
                base.replace("OPTIONS sip", "NEWMETHOD sip"),
                400,
                "CSeq method",
            ),
        ];
        for (m, code, why) in cases {
            let (c, reason, resp, _) = answered(inspect(m.as_bytes(), src));
            assert_eq!(c, code, "{reason} for\n{m}");
            assert!(reason.contains(why), "{reason:?} should say {why:?}");
            // Our answer is itself SIP a peer can parse.
            assert!(
                matches!(
                    rsipstack::sip::SipMessage::try_from(resp.as_bytes()),
                    Ok(rsipstack::sip::SipMessage::Response(_))
                ),
                "{resp}"
            );
        }
        // No Via: nobody to answer.
        let m = base.replace("Via: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK-1\r\n", "");
        assert!(matches!(inspect(m.as_bytes(), src), Verdict::Drop(_)));
    }

    #[test]
    fn valid_but_tortuous_requests_are_rewritten_for_the_parser() {
        let src: SocketAddr = SRC.parse().unwrap();
        // Folding, LWS around separators, compact and odd-case names (RFC 4475 §3.1.1.1).
        let m = req(
            &[
                "INVITE sip:vivek@example.com;unknownparam SIP/2.0",
                "TO :",
                " sip:vivek@example.com ;   tag    = 1918181833n",
                "from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>",
                "  ;",
                "  tag = 98asjd8",
                "MaX-fOrWaRdS: 0068",
                "Call-ID: wsinv.ndaksdj@192.0.2.1",
                "Content-Length   : 5",
                "cseq: 0009",
                "  INVITE",
                "Via  : SIP  /   2.0",
                " /UDP",
                "    192.0.2.2;rport;branch=390skdjuw",
                "s :",
                "NewFangledHeader:   newfangled value",
                " continued newfangled value",
            ],
            "v=0\r\n",
        );
        let out = passed(inspect(&m, src));
        assert!(out.starts_with("INVITE sip:vivek@example.com;unknownparam SIP/2.0\r\n"));
        assert!(
            out.contains("\r\nTO: sip:vivek@example.com;tag=1918181833n\r\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "\r\nfrom: \"J Rosenberg \\\\\\\"\" <sip:jdrosen@example.com>;tag=98asjd8\r\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("\r\nVia: SIP/2.0/UDP 192.0.2.2;rport;branch=390skdjuw\r\n"),
            "{out}"
        );
        assert!(out.contains("\r\ncseq: 0009 INVITE\r\n"), "{out}");
        assert!(
            out.contains("\r\nNewFangledHeader: newfangled value continued newfangled value\r\n"),
            "{out}"
        );
        assert!(out.ends_with("\r\n\r\nv=0\r\n"), "{out}");
        // Octets after Content-Length are not part of the message (§18.3, RFC 4475 §3.1.1.8).
        let m = [options(&[]), options(&[])].concat();
        let out = passed(inspect(&m, src));
        assert_eq!(out.as_bytes(), &options(&[])[..]);
        // An RFC 2543 request: no From tag; every request of the dialog gets the same one.
        let m = String::from_utf8(options(&[]))
            .unwrap()
            .replace(";tag=a1", "");
        let a = passed(inspect(m.as_bytes(), src));
        let b = passed(inspect(m.as_bytes(), src));
        assert!(
            a.contains("From: <sip:caller@example.net>;tag=2543-"),
            "{a}"
        );
        assert_eq!(a, b);
        // ... nor a branch: the INVITE and its ACK get the same one (§17.2.3 fields).
        let invite = m
            .replace(";branch=z9hG4bK-1", "")
            .replace("OPTIONS", "INVITE");
        let ack = invite.replace("INVITE", "ACK");
        let (a, b) = (
            passed(inspect(invite.as_bytes(), src)),
            passed(inspect(ack.as_bytes(), src)),
        );
        let branch = |m: &str| {
            m.split("branch=")
                .nth(1)
                .unwrap()
                .split("\r\n")
                .next()
                .unwrap()
                .to_string()
        };
        assert!(branch(&a).starts_with("z9hG4bK2543-"), "{a}");
        assert!(
            a.contains("\r\nContact: <sip:caller@example.net>\r\n"),
            "{a}"
        );
        assert_eq!(branch(&a), branch(&b));
    }
}
