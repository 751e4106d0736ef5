#!/usr/bin/env python3
"""Seed 003 rooms with several sockets (python-socketio), for voxgate's tests (tests/pbx.rs).

Socket A starts a call (POST /pbx/call) and joins its room; socket B joins the same room; both
hear the far end. A disconnects: the call goes on for B. A reconnects (a new connection, as a
client's reconnection makes), rejoins, hears the call and hangs it up; both get `hangup`.
Prints a JSON summary.

With `other_token` (another user's key), a socket of that user also tries to join the room, send
audio into it and hang it up (Socket.IO and /pbx/hangup): all must fail.

usage: sio_rejoin.py CONFIG_JSON   (CONFIG: {url, token, transport, number, other_token?})
"""
import json
import sys
import threading
import time
import urllib.request

import socketio

cfg = json.loads(sys.argv[1])
summary = {}


class Peer:
    def __init__(self, name):
        self.name = name
        self.audio = 0
        self.events = []
        self.connected = threading.Event()
        self.joined = threading.Event()
        self.hung = threading.Event()
        self.session = None
        self.sio = socketio.Client(reconnection=False)
        s = self.sio
        s.on("newSession", self.on_new)
        s.on("roomJoined", lambda d: (self.events.append(["roomJoined", d]), self.joined.set()))
        s.on("dialStatus", self.on_dial)
        s.on("audio", self.on_audio)
        s.on("hangup", lambda d: (self.events.append(["hangup", d]), self.hung.set()))

    def on_new(self, d):
        self.events.append(["newSession", d])
        if self.session is None:
            self.session = d["sessionId"]

    def on_dial(self, d):
        self.events.append(["dialStatus", d])
        if d["status"] == "Connected":
            self.connected.set()

    def on_audio(self, d):
        self.audio += 1

    def connect(self, token=None):
        self.sio.connect(cfg["url"], auth={"token": token or cfg["token"]},
                         transports=[cfg["transport"]], wait_timeout=10)

    def join(self, sid):
        self.session = sid
        self.sio.emit("joinRoom", {"sessionId": sid})
        assert self.joined.wait(10), f"{self.name}: no roomJoined"


# A wrong key is refused at connect (connect_error with the reason).
bad = socketio.Client(reconnection=False)
try:
    bad.connect(cfg["url"], auth={"token": "vg_000000000000_wrong"},
                transports=[cfg["transport"]], wait_timeout=10)
    summary["bad_token"] = "accepted"
    bad.disconnect()
except socketio.exceptions.ConnectionError as e:
    summary["bad_token"] = str(e)

a = Peer("a")
a.connect()
req = urllib.request.Request(
    cfg["url"] + "/pbx/call", data=json.dumps({"phoneNumber": cfg["number"]}).encode(),
    method="POST", headers={"Content-Type": "application/json",
                            "Authorization": "Bearer " + cfg["token"]})
body = json.loads(urllib.request.urlopen(req, timeout=10).read())
sid = body["data"]["sessionId"]
a.join(sid)
assert a.connected.wait(30), "no Connected"
b = Peer("b")
b.connect()
b.join(sid)
assert b.connected.wait(5), "b did not get the current dialStatus"
if cfg.get("other_token"):
    m = Peer("mallory")
    m.connect(cfg["other_token"])
    m.sio.emit("joinRoom", {"sessionId": sid})
    m.joined.wait(10)
    summary["other_join"] = [e[1] for e in m.events if e[0] == "roomJoined"]
    summary["other_audio_ack"] = m.sio.call(
        "audio", {"sessionId": sid, "audioData": b"\xff" * 160, "audioFormat": "ulaw"}, timeout=10)
    m.sio.emit("hangup", {"sessionId": sid})
    req = urllib.request.Request(
        cfg["url"] + "/pbx/hangup", data=json.dumps({"sessionId": sid}).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + cfg["other_token"]})
    try:
        urllib.request.urlopen(req, timeout=10)
        summary["other_rest_hangup"] = 200
    except urllib.error.HTTPError as e:
        summary["other_rest_hangup"] = e.code
    time.sleep(0.5)
    summary["other_audio"] = m.audio
    summary["other_events"] = m.events
    m.sio.disconnect()
time.sleep(2.0)
summary["both"] = {"a": a.audio, "b": b.audio}
a.sio.disconnect()
b_before = b.audio
time.sleep(1.5)
summary["b_while_a_away"] = b.audio - b_before
a2 = Peer("a2")
a2.connect()
a2.join(sid)
time.sleep(1.0)
summary["a2_audio"] = a2.audio
a2.sio.emit("hangup", {"sessionId": sid})
summary["a2_hangup"] = a2.hung.wait(15)
summary["b_hangup"] = b.hung.wait(15)
summary["events"] = {"a": a.events, "b": b.events, "a2": a2.events}
b.sio.disconnect()
a2.sio.disconnect()
print(json.dumps(summary))
