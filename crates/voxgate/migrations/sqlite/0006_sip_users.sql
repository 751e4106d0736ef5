-- SIP devices that may REGISTER and call in with digest credentials (issue 10 point 6). The
-- password itself is never stored: only the digest HA1 values of RFC 7616 §3.4.2,
-- H(username:realm:password) in MD5 and SHA-256, lower-case hex. Times are Unix epoch ms.
CREATE TABLE IF NOT EXISTS sip_users (
    username   TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL,
    realm      TEXT NOT NULL,
    ha1_md5    TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
