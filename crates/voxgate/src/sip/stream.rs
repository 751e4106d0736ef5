//! SIP over TCP with every request checked by [`guard::inspect`] first, as over UDP.
//!
//! `rsipstack`'s own TCP listener closes a connection on the first message its parser refuses,
//! without an answer. voxgate accepts TCP connections itself instead, frames messages by
//! Content-Length (RFC 3261 §18.3: mandatory on streams; CRLFs between messages are skipped,
//! §7.5, and a `CRLFCRLF` keep-alive gets `CRLF`, RFC 5626 §3.5.1), answers what the guard
//! refuses on the connection, and hands the rest to `rsipstack` through an in-memory
//! [`ChannelConnection`] registered for the peer: `rsipstack` treats it as a reliable
//! connection, sends its responses and in-dialog requests for that peer on it, and this module
//! writes them to the socket.
//!
//! A message whose header section never ends within [`MAX_HEAD`] octets, or whose
//! Content-Length cannot be read, cannot be framed: it gets 400 (or 513) when answerable and the
//! connection is closed, since the next message's start is unknown.

use super::guard::{self, find, leading_crlfs, Verdict};
use rsipstack::sip::SipMessage;
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transport::channel::ChannelConnection;
use rsipstack::transport::{SipAddr, SipConnection, TransportEvent};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Longest header section accepted on a stream, octets (`rsipstack`'s own stream limit is 64 KB).
pub const MAX_HEAD: usize = 16 * 1024;
/// Longest body accepted on a stream, octets.
pub const MAX_BODY: usize = 64 * 1024;
/// A connection that sends nothing for this long is closed (`rsipstack`'s stream default).
const IDLE: std::time::Duration = std::time::Duration::from_secs(600);

/// Accepts SIP over TCP on `listener` until `cancel` fires; each connection runs in a task of
/// its own and ends with the peer, after [`IDLE`] of silence, or with `cancel`.
pub fn serve(listener: TcpListener, endpoint: EndpointInnerRef, cancel: CancellationToken) {
    let local = listener.local_addr().ok();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(
                        stream,
                        peer,
                        endpoint.clone(),
                        cancel.child_token(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(?local, "SIP TCP accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
}

/// What the framer found at the start of the buffer ([`frame`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// More octets are needed.
    Partial,
    /// `CRLFCRLF` (a keep-alive ping): consume this many octets and answer `CRLF`.
    Ping(usize),
    /// One whole message of this many octets (leading CRLFs included).
    Message(usize),
    /// Unframeable: answer the head (if any) with this status and reason, then close.
    Broken(u16, &'static str),
}

/// Frames the first message in `buf` (RFC 3261 §18.3, §7.5): never more octets than `buf`
/// holds, never zero.
pub fn frame(buf: &[u8]) -> Frame {
    if buf.starts_with(b"\r\n\r\n") {
        return Frame::Ping(4);
    }
    let start = leading_crlfs(buf);
    let Some(end) = find(&buf[start..], b"\r\n\r\n") else {
        return if buf.len() - start > MAX_HEAD {
            Frame::Broken(513, "Message Too Large")
        } else {
            Frame::Partial
        };
    };
    let head = &buf[start..start + end];
    if head.len() > MAX_HEAD {
        return Frame::Broken(513, "Message Too Large");
    }
    let mut length: Option<usize> = None;
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]);
        let name = name.trim();
        if !(name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l")) {
            continue;
        }
        let value = String::from_utf8_lossy(&line[colon + 1..]);
        match value.trim().parse::<usize>() {
            Ok(n) if length.is_none_or(|l| l == n) => length = Some(n),
            // Two different lengths, a negative one or none: the guard says which.
            _ => return Frame::Broken(400, "Content-Length that frames no message"),
        }
    }
    // §18.3: a stream message without Content-Length has none; §20.14 lets that mean 0.
    let body = length.unwrap_or(0);
    if body > MAX_BODY {
        return Frame::Broken(513, "Message Too Large");
    }
    let total = start + end + 4 + body;
    if buf.len() < total {
        Frame::Partial
    } else {
        Frame::Message(total)
    }
}

/// Serves one TCP connection (see the module docs).
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    endpoint: EndpointInnerRef,
    cancel: CancellationToken,
) {
    let transport = &endpoint.transport_layer;
    let addr = SipAddr {
        r#type: Some(rsipstack::sip::Transport::Tcp),
        addr: peer.into(),
    };
    let (in_tx, in_rx) = tokio::sync::mpsc::unbounded_channel();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel();
    let Ok(channel) =
        ChannelConnection::create_connection(in_rx, out_tx, addr.clone(), Some(cancel.clone()))
            .await
    else {
        return;
    };
    let conn = SipConnection::Channel(channel);
    transport.add_connection(conn.clone());
    tracing::debug!(%peer, "SIP TCP connection");
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    'conn: loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            out = out_rx.recv() => {
                let Some(TransportEvent::Incoming(msg, _, _)) = out else {
                    if out.is_none() { break; }
                    continue;
                };
                if let Err(e) = stream.write_all(&msg.to_bytes()).await {
                    tracing::debug!(%peer, "SIP TCP write: {e}");
                    break;
                }
            }
            read = tokio::time::timeout(IDLE, stream.read(&mut chunk)) => {
                let n = match read {
                    Ok(Ok(0)) | Err(_) => break,
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "SIP TCP read: {e}");
                        break;
                    }
                };
                buf.extend_from_slice(&chunk[..n]);
                // Bounded by the octets received: every turn consumes a frame or waits.
                loop {
                    match frame(&buf) {
                        Frame::Partial => break,
                        Frame::Ping(n) => {
                            buf.drain(..n);
                            if stream.write_all(b"\r\n").await.is_err() {
                                break 'conn;
                            }
                        }
                        Frame::Message(n) => {
                            let msg: Vec<u8> = buf.drain(..n).collect();
                            if let Some(answer) = deliver(&msg, peer, &addr, &conn, &in_tx) {
                                if stream.write_all(&answer).await.is_err() {
                                    break 'conn;
                                }
                            }
                        }
                        Frame::Broken(code, reason) => {
                            tracing::info!(%peer, code, reason, "SIP over TCP: cannot frame a message; closing");
                            let end = find(&buf, b"\r\n\r\n").map_or(buf.len(), |e| e + 4);
                            let head = &buf[..end];
                            // The guard names a bad Content-Length best; else a plain answer.
                            let answer = match guard::inspect(head, peer) {
                                Verdict::Answer { response, .. } if code == 400 => Some(response),
                                _ => guard::refuse(head, peer, code, reason),
                            };
                            if let Some(answer) = answer {
                                let _ = stream.write_all(&answer).await;
                            }
                            break 'conn;
                        }
                    }
                }
            }
        }
    }
    transport.remove_connection(&conn);
    let _ = stream.shutdown().await;
    tracing::debug!(%peer, "SIP TCP connection closed");
}

/// One framed message: the guard's answer to write back, or `None` when it went to `rsipstack`
/// (or was dropped).
fn deliver(
    msg: &[u8],
    peer: SocketAddr,
    addr: &SipAddr,
    conn: &SipConnection,
    to_stack: &tokio::sync::mpsc::UnboundedSender<TransportEvent>,
) -> Option<Vec<u8>> {
    let verdict = std::panic::catch_unwind(|| guard::inspect(msg, peer)).unwrap_or_else(|_| {
        tracing::error!(%peer, "SIP guard fault on a TCP message; dropped");
        Verdict::Drop("guard fault")
    });
    let bytes = match verdict {
        Verdict::Pass(bytes) => bytes,
        Verdict::Answer {
            response,
            code,
            reason,
            ..
        } => {
            tracing::info!(%peer, code, reason, "SIP request refused before parsing (TCP)");
            return Some(response);
        }
        Verdict::Drop(why) => {
            tracing::debug!(%peer, "SIP message dropped (TCP): {why}");
            return None;
        }
    };
    let parsed = match SipMessage::try_from(&bytes[leading_crlfs(&bytes)..]) {
        Ok(m) => m,
        Err(e) => {
            tracing::info!(%peer, "SIP over TCP: unparsable message: {e}");
            return guard::refuse(&bytes, peer, 400, "Bad Request");
        }
    };
    let parsed =
        match SipConnection::update_msg_received(parsed, peer, rsipstack::sip::Transport::Tcp) {
            Ok(m) => m,
            Err(e) => {
                tracing::info!(%peer, "SIP over TCP: bad Via: {e}");
                return guard::refuse(&bytes, peer, 400, "Bad Via");
            }
        };
    let _ = to_stack.send(TransportEvent::Incoming(parsed, conn.clone(), addr.clone()));
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_by_content_length() {
        let m = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 4\r\n\r\nbodyNEXT";
        assert_eq!(frame(m), Frame::Message(m.len() - 4));
        assert_eq!(frame(&m[..20]), Frame::Partial);
        assert_eq!(frame(&m[..m.len() - 6]), Frame::Partial);
        // CRLFs before a message are part of its frame; a lone CRLFCRLF is a ping.
        let lead = b"\r\nOPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n\r\n";
        assert_eq!(frame(lead), Frame::Message(lead.len()));
        assert_eq!(frame(b"\r\n\r\nOPTIONS"), Frame::Ping(4));
        // No Content-Length: no body.
        let none = b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n";
        assert_eq!(frame(none), Frame::Message(none.len()));
        // Unframeable.
        for bad in [
            &b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -3\r\n\r\n"[..],
            b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 13\r\nl: 5\r\n\r\n",
            b"INVITE sip:a@b SIP/2.0\r\nContent-Length: x\r\n\r\n",
        ] {
            assert!(matches!(frame(bad), Frame::Broken(400, _)), "{bad:?}");
        }
        let big = format!(
            "INVITE sip:a@b SIP/2.0\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(matches!(frame(big.as_bytes()), Frame::Broken(513, _)));
        let endless = vec![b'a'; MAX_HEAD + 2];
        assert!(matches!(frame(&endless), Frame::Broken(513, _)));
    }
}
