//! SRTP with SDES keys: the `a=crypto` attribute (RFC 4568 §9) and the protection of RTP and RTCP
//! packets (RFC 3711), for calls whose SDP uses `RTP/SAVP` (or a best-effort `a=crypto` on
//! `RTP/AVP`). The cipher work is `rtc-srtp` (webrtc-rs); this module owns the SDP side and the
//! pairing of our key (what we send) with the far end's (what we receive).
//!
//! Suites: `AES_CM_128_HMAC_SHA1_80` (RFC 4568 §6.2.1, the one every SDES peer has) and
//! `AES_CM_128_HMAC_SHA1_32` (§6.2.2). Keys are 30 octets, a 16-octet master key and a
//! 14-octet master salt, base64 in `inline:`. Lifetimes are accepted and ignored (a call never
//! reaches 2^31 packets); MKIs are refused (no peer we know of uses them with SDES).

use base64::Engine as _;
use rtc_srtp::context::Context;
use rtc_srtp::crypto::{self, RTCCryptoProvider};
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;
use std::sync::{Arc, OnceLock};

const KEY_LEN: usize = 16;
const SALT_LEN: usize = 14;
/// Packets a receiver accepts out of order before it takes a repeat for a replay (RFC 3711 §3.3.2).
const REPLAY_WINDOW: usize = 128;

/// Why SRTP could not be set up or a packet could not be protected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// An `a=crypto` value we cannot read (the text says what is wrong).
    #[error("bad a=crypto attribute: {0}")]
    Attribute(String),
    /// A crypto suite voxgate does not implement.
    #[error("unsupported SRTP crypto suite {0}")]
    Suite(String),
    /// The cipher refused: a packet that failed authentication, a replay, a short packet.
    #[error("SRTP: {0}")]
    Cipher(String),
}

/// An SDES crypto suite (RFC 4568 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoSuite {
    /// `AES_CM_128_HMAC_SHA1_80`: AES-128 counter mode, 80-bit HMAC-SHA1 tag.
    AesCm128HmacSha1_80,
    /// `AES_CM_128_HMAC_SHA1_32`: the same with a 32-bit tag on RTP.
    AesCm128HmacSha1_32,
}

impl CryptoSuite {
    /// The suite's SDP name.
    pub fn name(self) -> &'static str {
        match self {
            CryptoSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            CryptoSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite named `name` (case-insensitive), if voxgate implements it.
    pub fn from_name(name: &str) -> Option<CryptoSuite> {
        [
            CryptoSuite::AesCm128HmacSha1_80,
            CryptoSuite::AesCm128HmacSha1_32,
        ]
        .into_iter()
        .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            CryptoSuite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            CryptoSuite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        }
    }
}

/// One side's SDES keying material: a suite, a 16-octet master key and a 14-octet master salt.
#[derive(Clone, PartialEq, Eq)]
pub struct SdesKey {
    pub suite: CryptoSuite,
    pub key: [u8; KEY_LEN],
    pub salt: [u8; SALT_LEN],
}

impl std::fmt::Debug for SdesKey {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdesKey")
            .field("suite", &self.suite.name())
            .finish_non_exhaustive()
    }
}

fn cipher(e: impl std::fmt::Display) -> SrtpError {
    SrtpError::Cipher(e.to_string())
}

fn provider() -> &'static Arc<dyn RTCCryptoProvider> {
    static P: OnceLock<Arc<dyn RTCCryptoProvider>> = OnceLock::new();
    P.get_or_init(|| crypto::default_provider().expect("rtc-srtp is built with ring"))
}

impl SdesKey {
    /// A fresh random key for `suite` (the crypto provider's secure random source).
    ///
    /// # Errors
    /// [`SrtpError::Cipher`] when the random source fails.
    pub fn generate(suite: CryptoSuite) -> Result<SdesKey, SrtpError> {
        let mut material = [0u8; KEY_LEN + SALT_LEN];
        provider().random().fill(&mut material).map_err(cipher)?;
        Ok(Self::from_material(suite, &material))
    }

    fn from_material(suite: CryptoSuite, m: &[u8; KEY_LEN + SALT_LEN]) -> SdesKey {
        let mut key = [0u8; KEY_LEN];
        let mut salt = [0u8; SALT_LEN];
        key.copy_from_slice(&m[..KEY_LEN]);
        salt.copy_from_slice(&m[KEY_LEN..]);
        SdesKey { suite, key, salt }
    }

    /// The value of an `a=crypto` attribute carrying this key under `tag`:
    /// `1 AES_CM_128_HMAC_SHA1_80 inline:<base64 of key ‖ salt>`.
    pub fn attribute(&self, tag: u32) -> String {
        let mut m = Vec::with_capacity(KEY_LEN + SALT_LEN);
        m.extend_from_slice(&self.key);
        m.extend_from_slice(&self.salt);
        format!(
            "{tag} {} inline:{}",
            self.suite.name(),
            base64::engine::general_purpose::STANDARD.encode(m)
        )
    }

    /// Reads an `a=crypto` value (RFC 4568 §9.1): `tag suite inline:key‖salt[|lifetime][|MKI:len]
    /// [session-params]`; returns the tag and the key.
    ///
    /// # Errors
    /// [`SrtpError::Suite`] for a suite voxgate lacks (the caller may try the next line);
    /// [`SrtpError::Attribute`] for anything malformed, several keys, or an MKI.
    pub fn parse_attribute(value: &str) -> Result<(u32, SdesKey), SrtpError> {
        let bad = |why: &str| SrtpError::Attribute(why.to_string());
        let mut parts = value.split_whitespace();
        let tag = parts
            .next()
            .and_then(|t| t.parse::<u32>().ok())
            .filter(|t| *t <= 999_999_999)
            .ok_or_else(|| bad("the tag is not a number of 1-9 digits"))?;
        let suite_name = parts.next().ok_or_else(|| bad("no crypto suite"))?;
        let suite = CryptoSuite::from_name(suite_name)
            .ok_or_else(|| SrtpError::Suite(suite_name.to_string()))?;
        let params = parts.next().ok_or_else(|| bad("no key parameters"))?;
        if params.contains(';') {
            return Err(bad("several keys in one attribute are not supported"));
        }
        let inline = params
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("inline:"))
            .map(|_| &params[7..])
            .ok_or_else(|| bad("the key method is not `inline:`"))?;
        let mut fields = inline.split('|');
        let b64 = fields.next().unwrap_or_default();
        for f in fields {
            if f.contains(':') {
                return Err(bad("MKIs are not supported"));
            }
        }
        let m = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
            .map_err(|_| bad("the key is not base64"))?;
        let m: [u8; KEY_LEN + SALT_LEN] = m
            .try_into()
            .map_err(|_| bad("the key is not 30 octets (16 key + 14 salt)"))?;
        Ok((tag, Self::from_material(suite, &m)))
    }
}

/// The sending half of an RTP session's SRTP: protects with our key (RFC 3711 §3.2: one
/// cryptographic context per direction).
pub struct SrtpTx(Context);

/// The receiving half: unprotects with the far end's key, with a replay window of 128 packets.
pub struct SrtpRx(Context);

impl std::fmt::Debug for SrtpTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpTx")
    }
}

impl std::fmt::Debug for SrtpRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpRx")
    }
}

/// The contexts for sending with `local` and receiving with `remote` (each with its suite).
///
/// # Errors
/// [`SrtpError::Cipher`] when the cipher refuses the keys.
pub fn contexts(local: &SdesKey, remote: &SdesKey) -> Result<(SrtpTx, SrtpRx), SrtpError> {
    let c = provider().crypto();
    let tx = Context::new(
        &local.key,
        &local.salt,
        local.suite.profile(),
        None,
        None,
        c,
    )
    .map_err(cipher)?;
    let rx = Context::new(
        &remote.key,
        &remote.salt,
        remote.suite.profile(),
        Some(srtp_replay_protection(REPLAY_WINDOW)),
        Some(srtcp_replay_protection(REPLAY_WINDOW)),
        c,
    )
    .map_err(cipher)?;
    Ok((SrtpTx(tx), SrtpRx(rx)))
}

impl SrtpTx {
    /// An RTP packet (header and payload) → SRTP (the payload encrypted, the tag appended).
    ///
    /// # Errors
    /// [`SrtpError::Cipher`] for a packet too short to be RTP.
    pub fn protect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.0
            .encrypt_rtp(packet)
            .map(|b| b.to_vec())
            .map_err(cipher)
    }

    /// An RTCP compound packet → SRTCP (RFC 3711 §3.4: E flag, index, tag).
    ///
    /// # Errors
    /// [`SrtpError::Cipher`] for a packet too short to be RTCP.
    pub fn protect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.0
            .encrypt_rtcp(packet)
            .map(|b| b.to_vec())
            .map_err(cipher)
    }
}

impl SrtpRx {
    /// An SRTP packet → RTP.
    ///
    /// # Errors
    /// [`SrtpError::Cipher`]: authentication failed, a replay, too short.
    pub fn unprotect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.0
            .decrypt_rtp(packet)
            .map(|b| b.to_vec())
            .map_err(cipher)
    }

    /// An SRTCP packet → RTCP.
    ///
    /// # Errors
    /// [`SrtpError::Cipher`]: authentication failed, a replay, too short.
    pub fn unprotect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.0
            .decrypt_rtcp(packet)
            .map(|b| b.to_vec())
            .map_err(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::RtpHeader;

    #[test]
    fn crypto_attributes_round_trip_and_bad_ones_say_why() {
        let k = SdesKey::generate(CryptoSuite::AesCm128HmacSha1_80).unwrap();
        let (tag, back) = SdesKey::parse_attribute(&k.attribute(7)).unwrap();
        assert_eq!((tag, &back), (7, &k));
        // RFC 4568 §9.1's example, with a lifetime.
        let (tag, k) = SdesKey::parse_attribute(
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20",
        )
        .unwrap();
        assert_eq!((tag, k.suite), (1, CryptoSuite::AesCm128HmacSha1_80));
        let err = |v: &str| SdesKey::parse_attribute(v).unwrap_err();
        assert!(matches!(
            err("1 F8_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"),
            SrtpError::Suite(_)
        ));
        assert!(matches!(
            err("x AES_CM_128_HMAC_SHA1_80 inline:AAAA"),
            SrtpError::Attribute(_)
        ));
        assert!(matches!(
            err("1 AES_CM_128_HMAC_SHA1_80 inline:AAAA"),
            SrtpError::Attribute(_)
        ));
        assert!(matches!(
            err("1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4"),
            SrtpError::Attribute(_)
        ));
        assert!(matches!(
            err("1 AES_CM_128_HMAC_SHA1_80 key:abc"),
            SrtpError::Attribute(_)
        ));
        assert!(matches!(err(""), SrtpError::Attribute(_)));
    }

    #[test]
    fn packets_protected_by_one_side_are_read_by_the_other_and_tampering_is_caught() {
        let a = SdesKey::generate(CryptoSuite::AesCm128HmacSha1_80).unwrap();
        let b = SdesKey::generate(CryptoSuite::AesCm128HmacSha1_32).unwrap();
        let (mut alice, mut alice_rx) = contexts(&a, &b).unwrap();
        let (mut bob_tx, mut bob) = contexts(&b, &a).unwrap();
        for seq in 0..50u16 {
            let h = RtpHeader {
                marker: false,
                payload_type: 0,
                sequence: 65_530u16.wrapping_add(seq),
                timestamp: 160 * seq as u32,
                ssrc: 0x1234_5678,
            };
            let mut plain = Vec::new();
            h.write(&[seq as u8; 160], &mut plain);
            let wire = alice.protect_rtp(&plain).unwrap();
            assert_eq!(wire.len(), plain.len() + 10, "80-bit tag");
            assert_ne!(&wire[12..172], &plain[12..]);
            assert_eq!(bob.unprotect_rtp(&wire).unwrap(), plain);
            let back = bob_tx.protect_rtp(&plain).unwrap();
            assert_eq!(back.len(), plain.len() + 4, "32-bit tag");
            assert_eq!(alice_rx.unprotect_rtp(&back).unwrap(), plain);
            if seq == 10 {
                let mut bad = wire.clone();
                bad[20] ^= 1;
                assert!(bob.unprotect_rtp(&bad).is_err(), "a flipped bit passed");
                assert!(bob.unprotect_rtp(&wire).is_err(), "a replay passed");
            }
        }
        let mut rtcp = Vec::new();
        crate::rtcp::build(7, None, &[], "voxgate", &mut rtcp);
        let wire = alice.protect_rtcp(&rtcp).unwrap();
        assert_eq!(bob.unprotect_rtcp(&wire).unwrap(), rtcp);
    }
}
