#!/usr/bin/env python3
"""PJSUA2 (PJSIP) softphone for voxgate's DTMF tests.

Calls TARGET (a sip: URI), sends SEND as RFC 4733 events once the call is up, reports every DTMF
digit it receives as a line `DTMF <digit>` on stdout, and hangs up after it has received EXPECT
digits (or after TIMEOUT seconds). Audio devices are null; everything binds to 127.0.0.1.

usage: pjsua_dtmf.py SIP_PORT RTP_PORT TARGET SEND EXPECT TIMEOUT
"""
import os
import sys
import time

import pjsua2 as pj

sip_port, rtp_port, target, send, expect, timeout = sys.argv[1:7]
expect, timeout = int(expect), float(timeout)
received = []
state = {"confirmed_at": None, "sent": False, "disconnected": False}


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

    def onDtmfDigit(self, prm):
        received.append(prm.digit)
        say(f"DTMF {prm.digit}")


ep = pj.Endpoint()
ep.libCreate()
cfg = pj.EpConfig()
cfg.uaConfig.threadCnt = 0
cfg.uaConfig.mainThreadOnly = True
cfg.logConfig.level = 1
cfg.logConfig.consoleLevel = 1
ep.libInit(cfg)
tcfg = pj.TransportConfig()
tcfg.port = int(sip_port)
tcfg.boundAddress = "127.0.0.1"
ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
ep.libStart()
ep.audDevManager().setNullDev()

acfg = pj.AccountConfig()
acfg.idUri = f"sip:pjsua@127.0.0.1:{sip_port}"
acfg.natConfig.iceEnabled = False
acfg.mediaConfig.transportConfig.port = int(rtp_port)
acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
acc = pj.Account()
acc.create(acfg)

call = Call(acc)
prm = pj.CallOpParam(True)
call.makeCall(target, prm)

deadline = time.time() + timeout
code = 1
while time.time() < deadline and not state["disconnected"]:
    ep.libHandleEvents(20)
    if state["confirmed_at"] and not state["sent"] and time.time() - state["confirmed_at"] > 1.5:
        state["sent"] = True
        call.dialDtmf(send)
        say(f"SENT {send}")
    if len(received) >= expect and state["sent"]:
        # Let our own events finish, then hang up.
        end = time.time() + 1.0
        while time.time() < end:
            ep.libHandleEvents(20)
        call.hangup(pj.CallOpParam(True))
        code = 0
        end = time.time() + 2.0
        while time.time() < end and not state["disconnected"]:
            ep.libHandleEvents(20)
        break
say(f"RECEIVED {''.join(received)}")
# PJSUA2's destructors assert after a disconnect: leave without them (TESTING.md).
os._exit(code)
