#!/usr/bin/env node
// Seed 003 client on the official socket.io-client (npm), for voxgate's tests: the same scenario
// as ../sio_client.py, a JSON summary on stdout (checked by tests/pbx.rs).
// usage: node sio_client.js CONFIG_JSON
// CONFIG: {url, token, transport, number, mp3, ulaw, ulaw_interrupt, out_raw, hangup, timeout}
"use strict";
const fs = require("fs");
const { io } = require("socket.io-client");

const cfg = JSON.parse(process.argv[2]);
const t0 = Date.now();
const now = () => (Date.now() - t0) / 1000;
const log = [];
const summary = {
  events: log, acks: {}, audio_sizes: {}, audio_count: 0, audio_first: null, audio_last: null,
  dial: [], checkpoints: {}, dtmf: [], hangup: null,
};
const rawChunks = [];
const waiters = {};
const wait = (name, ms) =>
  new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    waiters[name] = () => { clearTimeout(t); resolve(true); };
  });
const fire = (name) => { if (waiters[name]) waiters[name](); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let session = null;
let connected = false;
let farDtmf = false;

const socket = io(cfg.url, {
  transports: [cfg.transport],
  reconnection: false,
  auth: { token: cfg.token },
});

const call = (ev, data) => socket.timeout(10000).emitWithAck(ev, data);

async function rest(path, body) {
  const r = await fetch(cfg.url + path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: "Bearer " + cfg.token },
    body: JSON.stringify(body),
  });
  return [r.status, await r.json()];
}

socket.on("newSession", async (d) => {
  log.push(["newSession", now(), d]);
  session = d.sessionId;
  summary.acks.before_join = await call("audio", {
    sessionId: session, audioData: Buffer.alloc(160, 0xff), audioFormat: "ulaw",
  });
  socket.emit("joinRoom", { sessionId: session });
});
socket.on("roomJoined", (d) => log.push(["roomJoined", now(), d]));
socket.on("dialStatus", (d) => {
  summary.dial.push(d.status);
  log.push(["dialStatus", now(), d]);
  if (d.status === "Connected") { connected = true; fire("connected"); }
});
socket.on("audio", (d) => {
  const b = d.audioData;
  summary.audio_count += 1;
  const k = String(b.length);
  summary.audio_sizes[k] = (summary.audio_sizes[k] || 0) + 1;
  const t = now();
  if (summary.audio_first === null) summary.audio_first = t;
  summary.audio_last = t;
  rawChunks.push(Buffer.from(b));
});
socket.on("checkPoint", (d) => {
  log.push(["checkPoint", now(), d]);
  summary.checkpoints[d.name] = now();
  fire("cp:" + d.name);
});
socket.on("dtmf", (d) => {
  log.push(["dtmf", now(), d]);
  summary.dtmf.push(d.digit);
  farDtmf = true;
  fire("dtmf");
});
socket.on("hangup", (d) => {
  log.push(["hangup", now(), d]);
  summary.hangup = now();
  fire("hangup");
});

async function send(data, fmt, chunk) {
  const acks = [];
  for (let i = 0; i < data.length; i += chunk) {
    acks.push(await call("audio", { sessionId: session, audioData: data.subarray(i, i + chunk), audioFormat: fmt }));
  }
  return acks;
}

async function checkpoint(name, ms) {
  const w = wait("cp:" + name, ms);
  socket.emit("checkPoint", { sessionId: session, name });
  return w;
}

async function main() {
  await new Promise((resolve, reject) => {
    socket.on("connect", resolve);
    socket.on("connect_error", reject);
  });
  summary.transport = socket.io.engine.transport.name;
  const c = wait("connected", 30000);
  const [cs, cb] = await rest("/pbx/call", { phoneNumber: cfg.number });
  summary.call = { status: cs, body: cb };
  if (!connected && !(await c)) throw new Error("no dialStatus Connected");
  await sleep(1000);
  const sid = session;
  summary.acks.bad_format = await call("audio", { sessionId: sid, audioData: Buffer.alloc(320), audioFormat: "ogg" });
  summary.acks.bad_session = await call("audio", { sessionId: "nope", audioData: Buffer.alloc(320), audioFormat: "pcm16" });
  summary.acks.no_data = await call("audio", { sessionId: sid, audioFormat: "pcm16" });
  const mp3 = fs.readFileSync(cfg.mp3);
  summary.mp3_sent_at = now();
  summary.acks.mp3 = await send(mp3, "mp3", 1000);
  summary.cp_mp3 = await checkpoint("mp3", 30000);
  const ulaw = fs.readFileSync(cfg.ulaw);
  summary.ulaw_sent_at = now();
  summary.acks.ulaw = await send(ulaw, "ulaw", 160);
  summary.cp_ulaw = await checkpoint("ulaw", 30000);
  socket.emit("dtmf", { sessionId: sid, digit: "5", duration: 200 });
  const inter = fs.readFileSync(cfg.ulaw_interrupt);
  await send(inter, "ulaw", 1600);
  await sleep(400);
  summary.interrupt_at = now();
  socket.emit("interruption", { sessionId: sid });
  summary.cp_interrupt = await checkpoint("after-interrupt", 10000);
  if (!farDtmf) await wait("dtmf", 15000);
  const garbage = Buffer.alloc(2048);
  for (let i = 0; i < garbage.length; i++) garbage[i] = i % 256;
  summary.acks.garbage_mp3 = await call("audio", { sessionId: sid, audioData: garbage, audioFormat: "mp3" });
  await sleep(500);
  const hung = wait("hangup", 15000);
  if (cfg.hangup === "rest") summary.hangup_rest = await rest("/pbx/hangup", { sessionId: sid });
  else socket.emit("hangup", { sessionId: sid });
  await hung;
  socket.disconnect();
  fs.writeFileSync(cfg.out_raw, Buffer.concat(rawChunks));
  process.stdout.write(JSON.stringify(summary) + "\n");
  process.exit(0);
}

setTimeout(() => { process.stderr.write("timeout\n" + JSON.stringify(summary) + "\n"); process.exit(2); }, (cfg.timeout || 90) * 1000);
main().catch((e) => { process.stderr.write(String(e && e.stack || e) + "\n" + JSON.stringify(summary) + "\n"); process.exit(1); });
