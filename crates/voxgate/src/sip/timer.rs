//! Session timers (RFC 4028): what a dialog's `Session-Expires` negotiation comes to.
//!
//! voxgate supports the `timer` option tag. As UAS it answers an INVITE that asks for a session
//! interval below its `Min-SE` with 422 (§8.1, before any call state), and grants the asked
//! interval in the 2xx with the refresher the UAC chose (or `uac` when the UAC supports timers
//! and chose none; no timer when the UAC neither asks nor supports one, §9). As UAC it asks for
//! `sip.session_expires_secs`. The side that refreshes sends an UPDATE (without SDP) every half
//! interval (§7.4, §10); the other side ends the call with BYE when no refresh came for the
//! interval minus min(32 s, a third of it) (§10).

use rsipstack::sip::{Header, Request, Response};
use std::time::Duration;

/// RFC 4028 §4: no session interval may be shorter than this, seconds.
pub const MIN_SE_FLOOR: u32 = 90;

/// Who sends the refreshes (`refresher` parameter of `Session-Expires`, RFC 4028 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

impl Refresher {
    fn as_str(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }
}

/// A dialog's negotiated session timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTimer {
    /// Session interval, seconds (≥ [`MIN_SE_FLOOR`]).
    pub interval: u32,
    /// Who refreshes, in the dialog's initial INVITE's terms.
    pub refresher: Refresher,
    /// We are that side (we refresh; otherwise we police the far end's refreshes).
    pub we_refresh: bool,
}

impl SessionTimer {
    /// How often the refresher refreshes: half the interval (RFC 4028 §10).
    pub fn refresh_every(&self) -> Duration {
        Duration::from_secs(u64::from(self.interval) / 2)
    }

    /// How long the other side waits for a refresh before BYE: the interval minus the lesser
    /// of 32 s and a third of it (RFC 4028 §10).
    pub fn expires_after(&self) -> Duration {
        let i = u64::from(self.interval);
        Duration::from_secs(i - (i / 3).min(32))
    }

    /// `Session-Expires: <interval>;refresher=<uac|uas>` for 2xx answers and refreshes.
    pub fn header(&self) -> Header {
        Header::SessionExpires(
            format!("{};refresher={}", self.interval, self.refresher.as_str()).into(),
        )
    }
}

/// `Session-Expires` of a message: the interval and the refresher if named; `None` when absent
/// or unreadable.
fn session_expires(headers: &rsipstack::sip::Headers) -> Option<(u32, Option<Refresher>)> {
    let v = headers.iter().find_map(|h| match h {
        Header::SessionExpires(v) => Some(v.value().to_string()),
        _ => None,
    })?;
    let mut parts = v.split(';');
    let interval = parts.next()?.trim().parse::<u32>().ok()?;
    let refresher = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match v.trim().to_ascii_lowercase().as_str() {
            "uac" => Some(Refresher::Uac),
            "uas" => Some(Refresher::Uas),
            _ => None,
        }
    });
    Some((interval, refresher))
}

/// `Min-SE` of a request, seconds.
fn min_se(headers: &rsipstack::sip::Headers) -> Option<u32> {
    headers.iter().find_map(|h| match h {
        Header::MinSE(v) => v.value().split(';').next()?.trim().parse().ok(),
        _ => None,
    })
}

/// Whether `Supported` (or the compact `k`) lists `timer`.
fn supports_timer(headers: &rsipstack::sip::Headers) -> bool {
    headers.iter().any(|h| {
        (h.name().eq_ignore_ascii_case("supported") || h.name().eq_ignore_ascii_case("k"))
            && h.value()
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("timer"))
    })
}

/// The UAS side of an INVITE (initial or refresh): `Ok(None)` for no timer, `Ok(Some((timer,
/// headers)))` with the headers the 2xx carries, or `Err(min_se)` to answer 422 with that
/// `Min-SE` (the asked interval is below ours, RFC 4028 §8.1).
pub fn uas(req: &Request, our_min_se: u32) -> Result<Option<(SessionTimer, Vec<Header>)>, u32> {
    let supported = supports_timer(&req.headers);
    let Some((interval, asked)) = session_expires(&req.headers) else {
        return Ok(None);
    };
    let floor = our_min_se.max(MIN_SE_FLOOR);
    if interval < floor {
        return Err(floor);
    }
    let interval = interval.max(min_se(&req.headers).unwrap_or(0));
    let refresher = match (asked, supported) {
        (Some(r), _) => r,
        (None, true) => Refresher::Uac,
        (None, false) => Refresher::Uas,
    };
    let timer = SessionTimer {
        interval,
        refresher,
        we_refresh: refresher == Refresher::Uas,
    };
    let mut headers = vec![timer.header()];
    if supported {
        headers.push(Header::Require("timer".into()));
    }
    Ok(Some((timer, headers)))
}

/// The headers our INVITE carries to ask for a session of `interval` seconds (0: none).
pub fn uac_request_headers(interval: u32, our_min_se: u32) -> Vec<Header> {
    if interval == 0 {
        return vec![Header::Supported("timer".into())];
    }
    vec![
        Header::Supported("timer".into()),
        Header::SessionExpires(
            interval
                .max(our_min_se.max(MIN_SE_FLOOR))
                .to_string()
                .into(),
        ),
    ]
}

/// The UAC side, from the 2xx to our INVITE: the timer the far end granted, or `None` (§7.4:
/// no `Session-Expires` in the 2xx, no timer).
pub fn uac(resp: &Response) -> Option<SessionTimer> {
    let (interval, refresher) = session_expires(&resp.headers)?;
    // §7.4: a 2xx without a refresher leaves the refreshing to us.
    let refresher = refresher.unwrap_or(Refresher::Uac);
    Some(SessionTimer {
        interval: interval.max(MIN_SE_FLOOR),
        refresher,
        we_refresh: refresher == Refresher::Uac,
    })
}

/// The headers of our answer to a refresh (re-INVITE or UPDATE) within a timed dialog: the
/// interval the refresh asks for (never below the floor) with its refresher, or the dialog's.
pub fn refresh_answer(req: &Request, current: &SessionTimer) -> Vec<Header> {
    let (interval, refresher) = session_expires(&req.headers)
        .map(|(i, r)| (i.max(MIN_SE_FLOOR), r.unwrap_or(current.refresher)))
        .unwrap_or((current.interval, current.refresher));
    let mut headers = vec![SessionTimer {
        interval,
        refresher,
        we_refresh: current.we_refresh,
    }
    .header()];
    if supports_timer(&req.headers) {
        headers.push(Header::Require("timer".into()));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(extra: &str) -> Request {
        let raw = format!(
            "INVITE sip:a@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1\r\n\
             From: <sip:b@127.0.0.1>;tag=1\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: t\r\nCSeq: 1 INVITE\r\n\
             {extra}Content-Length: 0\r\n\r\n"
        );
        match rsipstack::sip::SipMessage::try_from(raw.as_str()).unwrap() {
            rsipstack::sip::SipMessage::Request(r) => r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_uas_grants_refuses_or_stays_out() {
        // No Session-Expires: no timer, even when supported.
        assert_eq!(uas(&req("Supported: timer\r\n"), 90), Ok(None));
        // Too short: 422 with our Min-SE.
        assert_eq!(uas(&req("Session-Expires: 60\r\n"), 90), Err(90));
        assert_eq!(uas(&req("x: 100\r\n"), 120), Err(120));
        // The UAC's choice is kept; without one, uac when it supports timers.
        let (t, h) = uas(&req("Supported: timer\r\nSession-Expires: 1800\r\n"), 90)
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.interval, t.refresher, t.we_refresh),
            (1800, Refresher::Uac, false)
        );
        let names: Vec<String> = h
            .iter()
            .map(|h| format!("{}: {}", h.name(), h.value()))
            .collect();
        assert_eq!(
            names,
            ["Session-Expires: 1800;refresher=uac", "Require: timer"]
        );
        let (t, h) = uas(&req("Session-Expires: 600;refresher=uas\r\n"), 90)
            .unwrap()
            .unwrap();
        assert_eq!((t.refresher, t.we_refresh), (Refresher::Uas, true));
        assert_eq!(
            h.len(),
            1,
            "no Require: the UAC did not say it supports timer"
        );
        let (t, _) = uas(&req("Session-Expires: 600\r\n"), 90).unwrap().unwrap();
        assert_eq!(t.refresher, Refresher::Uas);
        // Min-SE of the request raises the interval.
        let (t, _) = uas(&req("Session-Expires: 100\r\nMin-SE: 200\r\n"), 90)
            .unwrap()
            .unwrap();
        assert_eq!(t.interval, 200);
    }

    #[test]
    fn refresh_and_expiry_follow_rfc_4028_section_10() {
        let t = SessionTimer {
            interval: 90,
            refresher: Refresher::Uac,
            we_refresh: false,
        };
        assert_eq!(t.refresh_every(), Duration::from_secs(45));
        assert_eq!(t.expires_after(), Duration::from_secs(60));
        let t = SessionTimer {
            interval: 1800,
            ..t
        };
        assert_eq!(t.expires_after(), Duration::from_secs(1768));
    }
}
