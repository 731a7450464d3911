// The duplexer call page: one WebRTC call to the server that served it.
// Audio goes both ways on the peer connection; the server's events arrive as JSON on the
// "events" data channel (message types are listed in docs/webrtc.md).
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const hash = new URLSearchParams(location.hash.slice(1));

const ui = {
  call: $("call"), mic: $("mic"), token: $("token"), status: $("status"),
  state: $("state"), transcript: $("transcript"), metrics: $("metrics"), bot: $("bot"),
};

const call = {
  pc: null, channel: null, stream: null, sessionId: null, debug: false,
  log: [], posted: 0, poster: null, userLines: new Map(), replies: new Map(),
};
window.duplexer = call; // for a look from the console

if (hash.get("token")) ui.token.value = hash.get("token");

function headers(extra = {}) {
  const token = ui.token.value.trim();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

function setStatus(text) { ui.status.textContent = text; }

function setState(name) {
  ui.state.textContent = name;
  ui.state.dataset.state = name;
}

async function fetchJson(url, options = {}) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${url}: HTTP ${response.status}`);
  return body;
}

function waitForIceGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, timeoutMs);
  });
}

async function startCall() {
  ui.call.disabled = true;
  setStatus("Connecting...");
  try {
    const config = await fetchJson("/config", { headers: headers() });
    const pc = new RTCPeerConnection({ iceServers: config.ice_servers });
    call.pc = pc;
    call.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    for (const track of call.stream.getAudioTracks()) pc.addTrack(track, call.stream);
    const channel = pc.createDataChannel("events");
    call.channel = channel;
    channel.onmessage = (event) => onMessage(JSON.parse(event.data));
    pc.ontrack = (event) => { ui.bot.srcObject = event.streams[0] || new MediaStream([event.track]); };
    pc.onconnectionstatechange = () => {
      setStatus(`Connection: ${pc.connectionState}`);
      if (pc.connectionState === "failed" || pc.connectionState === "closed") endCall(false);
    };
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIceGathering(pc, 5000);
    const answer = await fetchJson("/offer", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ type: pc.localDescription.type, sdp: pc.localDescription.sdp }),
    });
    call.sessionId = answer.session_id;
    call.debug = Boolean(answer.debug);
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    if (call.debug) call.poster = setInterval(postLog, 500);
    ui.mic.disabled = false;
    ui.call.textContent = "Hang up";
    ui.call.disabled = false;
  } catch (error) {
    setStatus(`Call failed: ${error.message}`);
    endCall(false);
  }
}

function endCall(tellServer) {
  if (call.poster) { clearInterval(call.poster); call.poster = null; }
  if (tellServer && call.channel && call.channel.readyState === "open") {
    call.channel.send(JSON.stringify({ type: "hangup" }));
  }
  if (tellServer && call.sessionId) hangupRequest(false);
  if (call.stream) for (const track of call.stream.getTracks()) track.stop();
  if (call.pc) call.pc.close();
  call.pc = null;
  call.channel = null;
  call.stream = null;
  ui.mic.disabled = true;
  ui.call.textContent = "Call";
  ui.call.disabled = false;
  setState("Idle");
}

function hangupRequest(keepalive) {
  const url = `/calls/${call.sessionId}/hangup`;
  fetch(url, { method: "POST", headers: headers(), keepalive }).catch(() => {});
}

function toggleMic() {
  if (!call.stream) return;
  const on = ui.mic.getAttribute("aria-pressed") !== "true";
  for (const track of call.stream.getAudioTracks()) track.enabled = on;
  ui.mic.setAttribute("aria-pressed", String(on));
  ui.mic.textContent = on ? "Mic on" : "Mic off";
}

// ---------------------------------------------------------------- messages

function line(role, text, classes = []) {
  const item = document.createElement("li");
  item.classList.add(role, ...classes);
  item.textContent = text;
  ui.transcript.appendChild(item);
  ui.transcript.scrollTop = ui.transcript.scrollHeight;
  return item;
}

function reply(id) {
  if (!call.replies.has(id)) call.replies.set(id, { text: "", item: null });
  return call.replies.get(id);
}

function onMessage(message) {
  call.log.push({ ...message, received_ms: Math.round(performance.now()) });
  switch (message.type) {
    case "hello":
      setStatus(`In call (session ${message.session_id}, ${message.engines} engines)`);
      break;
    case "state":
      setState(message.new);
      break;
    case "transcript": {
      let item = call.userLines.get(message.segment_id);
      if (!item) { item = line("user", "", ["partial"]); call.userLines.set(message.segment_id, item); }
      item.textContent = message.text || "…";
      if (message.final) item.classList.remove("partial");
      break;
    }
    case "reply": {
      const r = reply(message.reply_id);
      if (message.event === "committed" && !r.item) r.item = line("bot", r.text || "…");
      if (message.event === "cancelled") {
        if (r.item) r.item.remove();
        call.replies.delete(message.reply_id);
      }
      break;
    }
    case "bot_text": {
      const r = reply(message.reply_id);
      r.text = message.final ? message.text : r.text + message.delta;
      if (r.item) r.item.textContent = r.text;
      break;
    }
    case "playout":
      if (message.event === "stopped") {
        const r = reply(message.reply_id);
        if (r.item) r.item.classList.add("cut");
      }
      break;
    case "history":
      if (message.role === "assistant") {
        for (const r of call.replies.values()) {
          if (r.item && r.text.startsWith(message.text) && r.text !== message.text) r.item.textContent = message.text;
        }
      }
      break;
    case "metrics":
      addMetrics(message);
      break;
    case "error":
      line("error", `error from ${message.source}: ${message.message}`);
      break;
    case "bye":
      setStatus(`Call ended: ${message.reason}`);
      if (call.debug) postLog();
      break;
  }
}

function addMetrics(m) {
  const row = document.createElement("tr");
  const cell = (value) => {
    const td = document.createElement("td");
    td.textContent = value === null || value === undefined ? "–" : String(Math.round(value));
    return td;
  };
  // Heard figures (first/last audible sample sent); the engine's frame times are in the tooltips.
  const response = cell(m.response_latency_ms);
  response.title = `engine: first frame sent after ${cell(m.engine_first_chunk_ms).textContent} ms`;
  const stop = cell(m.barge_in_stop_ms);
  stop.title = `engine: last frame sent ended after ${cell(m.engine_barge_in_stop_ms).textContent} ms`;
  row.append(cell(m.turn_id), response, cell(m.llm_first_token_ms), stop);
  const outcome = document.createElement("td");
  outcome.textContent = m.outcome;
  row.append(outcome);
  ui.metrics.appendChild(row);
}

// ---------------------------------------------------------------- debug report (server --debug)

async function rtpStats() {
  const out = {};
  if (!call.pc) return out;
  const report = await call.pc.getStats();
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      out.inbound = {
        packetsReceived: s.packetsReceived, bytesReceived: s.bytesReceived, packetsLost: s.packetsLost,
        totalAudioEnergy: s.totalAudioEnergy, totalSamplesReceived: s.totalSamplesReceived,
        audioLevel: s.audioLevel, jitterBufferDelay: s.jitterBufferDelay,
        jitterBufferEmittedCount: s.jitterBufferEmittedCount, concealedSamples: s.concealedSamples,
      };
    } else if (s.type === "outbound-rtp" && s.kind === "audio") {
      out.outbound = { packetsSent: s.packetsSent, bytesSent: s.bytesSent };
    }
  });
  out.connectionState = call.pc.connectionState;
  return out;
}

async function postLog() {
  if (!call.sessionId) return;
  const events = call.log.slice(call.posted);
  const stats = await rtpStats().catch(() => ({}));
  try {
    await fetchJson(`/calls/${call.sessionId}/client-log`, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ events, stats }),
    });
    call.posted += events.length;
  } catch (error) {
    console.warn("client log not posted:", error.message);
  }
}

// ---------------------------------------------------------------- wiring

ui.call.addEventListener("click", () => (call.pc ? endCall(true) : startCall()));
ui.mic.addEventListener("click", toggleMic);
window.addEventListener("pagehide", () => { if (call.pc && call.sessionId) hangupRequest(true); });
if (params.get("autostart") === "1") startCall();
