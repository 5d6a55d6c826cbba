// streamqa microphone self-check: publish the microphone over WHIP to the monitor that
// served this page, show the overlay card of that stream (the overlay page itself, in an
// iframe, on the websocket port) and a plain-language hint from the same score messages.
// Plain script, no build step. window.streamqaCheck exposes the state to tests and to
// benchmarks.whip_latency (seconds of audio sent against wall-clock time).
(() => {
  "use strict";

  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  // ?processing=off asks for the microphone as it is: no noise suppression, gain control or
  // echo cancellation. The default keeps the browser's processing, because that is what a
  // call from this browser sends; the test turns it off so the noise it plays is heard.
  const processing = params.get("processing") !== "off";
  const overlayPort = document.documentElement.dataset.overlayPort;
  const overlayHost = `${location.hostname}:${overlayPort}`;
  const FRAME_S = 0.02; // browsers send 20 ms Opus frames by default
  // Hint thresholds (docs/monitor.md, "Checking your own microphone").
  const POOR_MOS = 3.0; // below: the hint explains why
  const LOSS = 0.03; // fraction of packets lost over the last second
  const CLIPPING = 0.001; // share of samples at full scale
  const QUIET_DBFS = -42; // the loudest second's level over the last QUIET_S seconds
  const QUIET_S = 5;
  const LOW_BAK = 3.0; // background-noise quality (the model's bak)
  const LOW_SIG = 3.0; // speech-signal quality (the model's sig)
  const STATS_MS = 250;

  const hintEl = document.getElementById("hint");
  const browserEl = document.getElementById("browser");
  const stateEl = document.getElementById("state");
  const stopBtn = document.getElementById("stop");
  const card = document.getElementById("card");
  const auth = token ? { Authorization: "Bearer " + token } : {};
  const state = { stream: null, resource: null, state: "idle", hint: "", sent: [], error: null, processing: null };
  window.streamqaCheck = state;
  let pc = null;
  let ws = null;
  let statsTimer = null;
  const levels = []; // [stream time, level_dbfs] of the last QUIET_S seconds

  function setState(text) {
    state.state = text;
    stateEl.textContent = text;
  }

  function setHint(text, kind) {
    state.hint = text;
    hintEl.textContent = text;
    hintEl.className = kind || "";
  }

  // Non-trickle WHIP: the offer carries every candidate, so wait for gathering to end.
  function gathered(conn) {
    if (conn.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        if (conn.iceGatheringState === "complete") resolve();
      };
      conn.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, 3000); // some host candidates are enough on a LAN
    });
  }

  async function start() {
    setState("asking for the microphone…");
    const audio = processing ? true : { noiseSuppression: false, autoGainControl: false, echoCancellation: false };
    const media = await navigator.mediaDevices.getUserMedia({ audio });
    const settings = media.getAudioTracks()[0].getSettings(); // what the browser granted
    state.processing = { noiseSuppression: settings.noiseSuppression, autoGainControl: settings.autoGainControl,
                         echoCancellation: settings.echoCancellation };
    pc = new RTCPeerConnection();
    for (const track of media.getAudioTracks()) pc.addTransceiver(track, { direction: "sendonly" });
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    setState("connecting…");
    const res = await fetch("/whip", {
      method: "POST",
      headers: { "Content-Type": "application/sdp", ...auth },
      body: pc.localDescription.sdp,
    });
    if (res.status !== 201) throw new Error(`the monitor refused: ${res.status} ${(await res.text()).trim()}`);
    state.resource = new URL(res.headers.get("Location"), location.href).href;
    state.stream = (res.headers.get("Streamqa-Stream") || "").split(",")[0].trim();
    await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
    const query = new URLSearchParams({ streams: state.stream, history: "120", linger: "3600", legend: "0" });
    if (token) query.set("token", token);
    card.src = `${location.protocol}//${overlayHost}/?${query}`;
    stopBtn.disabled = false;
    setState(`publishing as ${state.stream}`);
    setHint("Say something…");
    watch();
    statsTimer = setInterval(senderStats, STATS_MS);
  }

  // What the browser itself knows: packets sent, and the round trip and loss that the
  // monitor's RTCP receiver reports give it.
  async function senderStats() {
    if (!pc) return;
    const report = await pc.getStats();
    let text = "";
    report.forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "audio") {
        state.sent.push([s.timestamp, s.packetsSent * FRAME_S]);
        if (state.sent.length > 20000) state.sent.splice(0, 10000);
        text = `sent ${s.packetsSent} packets` + text;
      } else if (s.type === "remote-inbound-rtp" && s.kind === "audio" && typeof s.roundTripTime === "number") {
        text += ` · round trip ${(1000 * s.roundTripTime).toFixed(0)} ms`;
      }
    });
    browserEl.textContent = text;
  }

  // The hint: the first applicable cause, in the order a participant can act on it.
  function hintFor(msg) {
    const net = msg.net || {};
    const out = msg.outputs || {};
    const mos = msg.mos_rolling;
    if (typeof net.loss === "number" && net.loss >= LOSS)
      return [`Packets are being lost on the way (${(100 * net.loss).toFixed(0)} %): a wired connection or a better Wi-Fi signal helps.`, "poor"];
    if (typeof net.clipping === "number" && net.clipping >= CLIPPING)
      return ["Your microphone is clipping (too loud): lower its input gain or move it a little away.", "poor"];
    if (typeof msg.t === "number") {
      levels.push([msg.t, typeof net.level_dbfs === "number" ? net.level_dbfs : -Infinity]);
      while (levels.length && levels[0][0] < msg.t - QUIET_S) levels.shift();
    }
    const loudest = Math.max(...levels.map((l) => l[1]));
    if (msg.speech && levels.length && loudest < QUIET_DBFS)
      return ["Your voice arrives very quietly: move closer to the microphone or raise its gain.", "poor"];
    if (typeof mos !== "number") return ["Say something…", ""];
    if (mos >= POOR_MOS) return ["You sound fine.", "good"];
    if (typeof out.bak === "number" && out.bak < LOW_BAK)
      return ["There is background noise around you: a quieter room or a headset microphone helps.", "poor"];
    if (typeof out.sig === "number" && out.sig < LOW_SIG)
      return ["Your voice itself sounds distorted or muffled: check the microphone or headset.", "poor"];
    return ["Quality is poor, though no single cause stands out.", "poor"];
  }

  function watch() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const query = token ? "?token=" + encodeURIComponent(token) : "";
    ws = new WebSocket(`${proto}//${overlayHost}/ws${query}`);
    ws.onopen = () => ws.send(JSON.stringify({ type: "subscribe", streams: [state.stream] }));
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.type === "score" && msg.stream === state.stream) setHint(...hintFor(msg));
      else if (msg.type === "stream" && msg.event === "end" && msg.stream === state.stream) stop("the monitor ended the stream");
    };
    ws.onclose = () => {
      if (pc) setTimeout(watch, 2000);
    };
  }

  async function stop(why) {
    clearInterval(statsTimer);
    if (pc) pc.close();
    pc = null;
    stopBtn.disabled = true;
    setState(why || "stopped");
    if (state.resource) {
      const resource = state.resource;
      state.resource = null;
      await fetch(resource, { method: "DELETE", headers: auth, keepalive: true }).catch(() => {});
    }
  }

  stopBtn.addEventListener("click", () => stop());
  window.addEventListener("pagehide", () => stop());
  start().catch((err) => {
    state.error = String(err && err.message ? err.message : err);
    setState("failed");
    setHint(state.error, "poor");
  });
})();
