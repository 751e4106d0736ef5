#!/usr/bin/env python3
"""Seed 003 client on the official python-socketio client, for voxgate's tests.

Runs one outbound call as the seed describes and prints a JSON summary on stdout; the Node client
(node/sio_client.js) runs the same scenario, and tests/pbx.rs checks both summaries.

usage: sio_client.py CONFIG_JSON
CONFIG: {url, token, transport, number, mp3, ulaw, ulaw_interrupt, out_raw, hangup, timeout}
"""
import json
import sys
import threading
import time
import urllib.request

import socketio

cfg = json.loads(sys.argv[1])
t0 = time.time()
log = []
summary = {
    "events": log, "acks": {}, "audio_sizes": {}, "audio_count": 0, "audio_first": None,
    "audio_last": None, "dial": [], "checkpoints": {}, "dtmf": [], "hangup": None,
}
raw = open(cfg["out_raw"], "wb")
lock = threading.Lock()
state = {"session": None, "connected": threading.Event(), "hung": threading.Event(),
         "cp": {}, "far_dtmf": threading.Event()}


def now():
    return round(time.time() - t0, 3)


sio = socketio.Client(reconnection=False)


def rest(path, body):
    req = urllib.request.Request(
        cfg["url"] + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + cfg["token"]})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@sio.on("newSession")
def new_session(d):
    log.append(["newSession", now(), d])
    state["session"] = d["sessionId"]
    # Audio before joining the room is refused.
    summary["acks"]["before_join"] = sio.call(
        "audio", {"sessionId": d["sessionId"], "audioData": b"\xff" * 160, "audioFormat": "ulaw"},
        timeout=10)
    sio.emit("joinRoom", {"sessionId": d["sessionId"]})


@sio.on("roomJoined")
def room_joined(d):
    log.append(["roomJoined", now(), d])


@sio.on("dialStatus")
def dial_status(d):
    summary["dial"].append(d["status"])
    log.append(["dialStatus", now(), d])
    if d["status"] == "Connected":
        state["connected"].set()


@sio.on("audio")
def audio(d):
    b = d["audioData"]
    with lock:
        summary["audio_count"] += 1
        summary["audio_sizes"][str(len(b))] = summary["audio_sizes"].get(str(len(b)), 0) + 1
        t = now()
        if summary["audio_first"] is None:
            summary["audio_first"] = t
        summary["audio_last"] = t
        raw.write(b)


@sio.on("checkPoint")
def checkpoint(d):
    log.append(["checkPoint", now(), d])
    summary["checkpoints"][d["name"]] = now()
    ev = state["cp"].get(d["name"])
    if ev:
        ev.set()


@sio.on("dtmf")
def dtmf(d):
    log.append(["dtmf", now(), d])
    summary["dtmf"].append(d["digit"])
    state["far_dtmf"].set()


@sio.on("hangup")
def hangup(d):
    log.append(["hangup", now(), d])
    summary["hangup"] = now()
    state["hung"].set()


def send(data, fmt, chunk):
    acks = []
    for i in range(0, len(data), chunk):
        acks.append(sio.call("audio", {"sessionId": state["session"],
                                        "audioData": data[i:i + chunk], "audioFormat": fmt},
                             timeout=10))
    return acks


def checkpoint_wait(name, timeout):
    ev = threading.Event()
    state["cp"][name] = ev
    sio.emit("checkPoint", {"sessionId": state["session"], "name": name})
    return ev.wait(timeout)


sio.connect(cfg["url"], auth={"token": cfg["token"]}, transports=[cfg["transport"]],
            socketio_path="socket.io", wait_timeout=10)
summary["transport"] = sio.transport()
if cfg.get("inbound"):
    # An inbound call: newSession (inbound) -> joinRoom answers it -> hear it -> hang up.
    assert state["connected"].wait(30), "no dialStatus Connected"
    time.sleep(3.0)
    sio.emit("hangup", {"sessionId": state["session"]})
    state["hung"].wait(15)
    sio.disconnect()
    raw.close()
    print(json.dumps(summary))
    sys.exit(0)
status, body = rest("/pbx/call", {"phoneNumber": cfg["number"]})
summary["call"] = {"status": status, "body": body}
assert state["connected"].wait(30), "no dialStatus Connected"
time.sleep(1.0)
sid = state["session"]
# Bad payloads: failed acks, the call goes on.
summary["acks"]["bad_format"] = sio.call(
    "audio", {"sessionId": sid, "audioData": b"\x00" * 320, "audioFormat": "ogg"}, timeout=10)
summary["acks"]["bad_session"] = sio.call(
    "audio", {"sessionId": "nope", "audioData": b"\x00" * 320, "audioFormat": "pcm16"}, timeout=10)
summary["acks"]["no_data"] = sio.call("audio", {"sessionId": sid, "audioFormat": "pcm16"}, timeout=10)
# MP3 in 1000-byte pieces (frames split across messages), then a checkpoint.
mp3 = open(cfg["mp3"], "rb").read()
summary["mp3_sent_at"] = now()
summary["acks"]["mp3"] = send(mp3, "mp3", 1000)
summary["cp_mp3"] = checkpoint_wait("mp3", 30)
# µ-law in 20 ms messages.
ulaw = open(cfg["ulaw"], "rb").read()
summary["ulaw_sent_at"] = now()
summary["acks"]["ulaw"] = send(ulaw, "ulaw", 160)
summary["cp_ulaw"] = checkpoint_wait("ulaw", 30)
sio.emit("dtmf", {"sessionId": sid, "digit": "5", "duration": 200})
# Interruption: 3 s queued, cut after 0.4 s; the checkpoint behind it comes back at once.
inter = open(cfg["ulaw_interrupt"], "rb").read()
send(inter, "ulaw", 1600)
time.sleep(0.4)
summary["interrupt_at"] = now()
sio.emit("interruption", {"sessionId": sid})
summary["cp_interrupt"] = checkpoint_wait("after-interrupt", 10)
state["far_dtmf"].wait(15)
summary["acks"]["garbage_mp3"] = sio.call(
    "audio", {"sessionId": sid, "audioData": bytes(range(256)) * 8, "audioFormat": "mp3"}, timeout=10)
time.sleep(0.5)
if cfg["hangup"] == "rest":
    summary["hangup_rest"] = rest("/pbx/hangup", {"sessionId": sid})
else:
    sio.emit("hangup", {"sessionId": sid})
state["hung"].wait(15)
sio.disconnect()
raw.close()
print(json.dumps(summary))
