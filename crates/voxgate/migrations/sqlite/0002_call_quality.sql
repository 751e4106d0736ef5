-- Call-quality figures of a call's RTP leg (issue 3): JSON with packets, loss, jitter, RTT.
ALTER TABLE calls ADD COLUMN quality TEXT;
