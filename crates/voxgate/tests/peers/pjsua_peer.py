#!/usr/bin/env python3
"""PJSUA2 (PJSIP) phone for voxgate's seed-003 tests: the far end of a call.

As `uas` it answers the first call it gets; as `uac` it calls TARGET. Once the call is up it
plays PLAY_WAV (once) into the call, records what it hears to RECORD_WAV, sends the DTMF digits
SEND (RFC 4733) DTMF_AFTER seconds after the answer, and prints `STATE <text>` and
`DTMF <digit> <duration ms>` lines. It exits 0 when the other side hangs up (BYE), 1 after TIMEOUT seconds.
Silence suppression is off, so RTP flows every 20 ms. Everything binds to 127.0.0.1.
Environment: PJ_RING_SECS rings (180) that long before answering; PJ_PLAY_AFTER starts PLAY_WAV
that many seconds after the media is up (an agent speaks first).

usage: pjsua_peer.py MODE SIP_PORT RTP_PORT PLAY_WAV RECORD_WAV SEND DTMF_AFTER TIMEOUT [TARGET]
"""
import os
import sys
import time

import pjsua2 as pj

mode, sip_port, rtp_port, play_wav, record_wav, send, dtmf_after, timeout = sys.argv[1:9]
target = sys.argv[9] if len(sys.argv) > 9 else None
dtmf_after, timeout = float(dtmf_after), float(timeout)
ring_secs = float(os.environ.get("PJ_RING_SECS", "0"))
play_after = float(os.environ.get("PJ_PLAY_AFTER", "0"))
state = {"confirmed_at": None, "sent": False, "disconnected": False, "call": None,
         "ring_until": None, "play": None}
keep = []


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Call(pj.Call):
    def onCallState(self, prm):
        ci = self.getInfo()
        say(f"STATE {ci.stateText}")
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED:
            state["confirmed_at"] = time.time()
        if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            state["disconnected"] = True

    def onCallMediaState(self, prm):
        ci = self.getInfo()
        for i, mi in enumerate(ci.media):
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                aud = self.getAudioMedia(i)
                if record_wav != "-":
                    rec = pj.AudioMediaRecorder()
                    rec.createRecorder(record_wav)
                    aud.startTransmit(rec)
                    keep.append(rec)
                if play_wav != "-":
                    state["play"] = (time.time() + play_after, aud)
                say("MEDIA up")

    def onDtmfEvent(self, prm):
        # Reported at the event's start, on updates, and at its end (flag
        # PJMEDIA_STREAM_DTMF_IS_END = 2) with the RFC 4733 duration in ms.
        if prm.flags & 2:
            say(f"DTMF {prm.digit} {prm.duration}")


class Account(pj.Account):
    def onIncomingCall(self, prm):
        call = Call(self, prm.callId)
        state["call"] = call
        op = pj.CallOpParam()
        if ring_secs > 0:
            op.statusCode = 180
            state["ring_until"] = time.time() + ring_secs
        else:
            op.statusCode = 200
        call.answer(op)


ep = pj.Endpoint()
ep.libCreate()
cfg = pj.EpConfig()
cfg.uaConfig.threadCnt = 0
cfg.uaConfig.mainThreadOnly = True
cfg.logConfig.level = 1
cfg.logConfig.consoleLevel = 1
cfg.medConfig.noVad = True
ep.libInit(cfg)
tcfg = pj.TransportConfig()
tcfg.port = int(sip_port)
tcfg.boundAddress = "127.0.0.1"
ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
ep.libStart()
ep.audDevManager().setNullDev()
# G.711 first: what a telephone trunk carries.
for codec, prio in [("PCMU/8000", 255), ("PCMA/8000", 254)]:
    try:
        ep.codecSetPriority(codec, prio)
    except pj.Error:
        pass

acfg = pj.AccountConfig()
acfg.idUri = f"sip:peer@127.0.0.1:{sip_port}"
acfg.natConfig.iceEnabled = False
acfg.mediaConfig.transportConfig.port = int(rtp_port)
acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
acc = Account()
acc.create(acfg)
say("READY")

if mode == "uac":
    call = Call(acc)
    state["call"] = call
    call.makeCall(target, pj.CallOpParam(True))

deadline = time.time() + timeout
code = 1
while time.time() < deadline:
    ep.libHandleEvents(20)
    if state["disconnected"]:
        code = 0
        break
    if state["ring_until"] and time.time() >= state["ring_until"]:
        state["ring_until"] = None
        op = pj.CallOpParam()
        op.statusCode = 200
        state["call"].answer(op)
    if state["play"] and time.time() >= state["play"][0]:
        aud = state["play"][1]
        state["play"] = None
        player = pj.AudioMediaPlayer()
        player.createPlayer(play_wav, pj.PJMEDIA_FILE_NO_LOOP)
        player.startTransmit(aud)
        keep.append(player)
        say("PLAYING")
    c = state["confirmed_at"]
    if c and not state["sent"] and send != "-" and time.time() - c > dtmf_after:
        state["sent"] = True
        state["call"].dialDtmf(send)
        say(f"SENT {send}")
# Let the recorder flush its file.
for r in keep:
    del r
keep.clear()
say(f"EXIT {code}")
# PJSUA2's destructors assert after a disconnect: leave without them (TESTING.md).
os._exit(code)
