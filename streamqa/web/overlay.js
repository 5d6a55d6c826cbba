// streamqa live overlay: one card per stream, fed by the protocol v1 websocket on the
// same host and port that served this page. Plain script, no build step, so the page
// works straight out of the Python package and in OBS's browser source.
(() => {
  "use strict";

  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const only = (params.get("streams") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const HISTORY_S = Number(params.get("history")) > 0 ? Number(params.get("history")) : 180;
  const linger = Number(params.get("linger"));
  const LINGER_MS = 1000 * (params.has("linger") && linger >= 0 ? linger : 10);
  // After a reconnect the server re-announces live streams; cards not re-announced
  // within this time belong to streams that ended while we were away.
  const STALE_AFTER_RECONNECT_MS = 4000;
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;

  if (params.get("bg") === "transparent") document.documentElement.classList.add("transparent");

  const container = document.getElementById("streams");
  const empty = document.getElementById("empty");
  const statusEl = document.getElementById("status");
  const statusText = document.getElementById("status-text");
  const modelEl = document.getElementById("model");
  const template = document.getElementById("card-template");
  const cards = new Map(); // stream id -> card state

  const fmt = (v, digits) => (typeof v === "number" && isFinite(v) ? v.toFixed(digits) : "—");

  function band(mos) {
    if (typeof mos !== "number" || !isFinite(mos)) return "none";
    if (mos >= 4.0) return "good";
    if (mos >= 3.0) return "fair";
    return "poor";
  }

  function setStatus(kind, text) {
    statusEl.className = "status-" + kind;
    statusText.textContent = text;
  }

  function refreshEmpty() {
    empty.classList.toggle("hidden", cards.size > 0);
  }

  function cardFor(stream) {
    let card = cards.get(stream);
    if (card) return card;
    const el = template.content.firstElementChild.cloneNode(true);
    el.dataset.stream = stream;
    el.querySelector(".name").textContent = stream;
    container.appendChild(el);
    card = {
      el,
      history: [], // [t, mos_rolling|null, window mos|null]
      removeTimer: null,
      pending: false,
      mos: el.querySelector(".mos"),
      label: el.querySelector(".label"),
      fill: el.querySelector(".fill"),
      canvas: el.querySelector(".spark"),
      net: el.querySelector(".net"),
      detail: el.querySelector(".detail"),
      codec: el.querySelector(".codec"),
    };
    cards.set(stream, card);
    refreshEmpty();
    return card;
  }

  // The card's title: the sender's RTCP CNAME once known (info.cname, then each score's
  // label), else who is sending (an RTP stream's remote address, a replayed file's name, a
  // microphone's device), else the stream id. The stream id stays in the tooltip.
  function nameCard(card, stream, label) {
    const name = card.el.querySelector(".name");
    if (label && name.textContent !== label) {
      name.textContent = label;
      name.title = "stream " + stream;
    }
  }

  function sourceLabel(info) {
    if (info.cname) return info.cname;
    if (info.remote) return info.remote;
    if (info.path) return String(info.path).split(/[\\/]/).pop();
    if (info.device) return String(info.device);
    return null;
  }

  // The audio's sample rate (docs/protocol.md, stream start): info.rate for WebRTC and the
  // Python API; an RTP stream gives its clock_rate, the audio's rate for every codec but
  // G.722, whose 16 kHz audio has an 8000 Hz RTP clock (RFC 3551).
  function audioRate(info) {
    if (typeof info.rate === "number") return info.rate;
    if (typeof info.clock_rate !== "number") return null;
    return info.codec === "G722" ? 16000 : info.clock_rate;
  }

  // What each figure means, for a viewer who has not read the docs: the card's tooltips and
  // the page's legend say the same thing.
  const EXPLAIN = {
    rolling: "rolling MOS: recent windows weighted by age (10 s time constant); 1 = bad, 5 = excellent",
    window: "MOS of the latest window of audio alone",
    sig: "SIG: quality of the speech itself (distortion, codec artefacts), 1-5",
    bak: "BAK: how unobtrusive the background noise is, 1-5 (5 = no noise)",
    ovrl: "OVRL: overall quality, speech and noise together, 1-5",
  };

  function removeCard(stream) {
    const card = cards.get(stream);
    if (!card) return;
    clearTimeout(card.removeTimer);
    card.el.remove();
    cards.delete(stream);
    refreshEmpty();
  }

  // Big number, colour band and gauge arc (1..5) for one value; null shows grey "—".
  function showValue(card, value, label) {
    card.el.className = card.el.className.replace(/band-\w+/, "band-" + band(value));
    card.mos.textContent = fmt(value, 2);
    card.label.textContent = label;
    const pct = value === null ? 0 : Math.max(0, Math.min(100, ((value - 1) / 4) * 100));
    // Gap of 200 so a zero-length dash does not leave a cap dot at the far end.
    card.fill.setAttribute("stroke-dasharray", `${pct.toFixed(1)} 200`);
  }

  function onStream(msg) {
    const card = cardFor(msg.stream);
    card.pending = false;
    if (msg.event === "start") {
      clearTimeout(card.removeTimer);
      card.removeTimer = null;
      card.el.classList.remove("ended");
      const info = msg.info || {};
      const rate = audioRate(info);
      const codec = [info.codec, rate ? rate / 1000 + " kHz" : null, msg.source]
        .filter(Boolean).join(" · ");
      card.codec.textContent = codec;
      nameCard(card, msg.stream, sourceLabel(info));
    } else if (msg.event === "end") {
      const s = msg.summary || {};
      // The big number becomes the whole stream's mean: the last thing worth reading.
      card.el.classList.add("ended");
      showValue(card, typeof s.mean === "number" ? s.mean : null, "ended · mean MOS");
      card.detail.textContent =
        `mean ${fmt(s.mean, 2)} · min ${fmt(s.min, 2)} · ${fmt(s.duration_s, 0)} s`;
      clearTimeout(card.removeTimer);
      card.removeTimer = setTimeout(() => removeCard(msg.stream), LINGER_MS);
    }
  }

  function onScore(msg) {
    const card = cardFor(msg.stream);
    card.pending = false;
    if (card.el.classList.contains("ended")) return; // keep showing the summary
    nameCard(card, msg.stream, msg.label);
    const rolling = typeof msg.mos_rolling === "number" ? msg.mos_rolling : null;
    // speech false: this window holds no speech (silence, or noise alone: its bak still comes),
    // so the rolling value is held from earlier speech.
    const label = rolling === null ? "no speech" : msg.speech ? "rolling MOS" : "rolling MOS · no speech now";
    showValue(card, rolling, label);

    // Quality outputs only: the server never puts the speech probability (speech_p) here.
    // Each figure is its own span with its meaning as a tooltip.
    const outs = msg.outputs || {};
    const figures = [["window", msg.mos], ...Object.keys(outs).map((k) => [k, outs[k]])];
    card.detail.replaceChildren(...figures.flatMap(([k, v], i) => {
      const span = document.createElement("span");
      span.className = "figure";
      span.dataset.name = k;
      span.title = EXPLAIN[k] || k;
      span.textContent = `${k} ${fmt(v, 2)}`;
      return i ? [" · ", span] : [span];
    }));

    const net = msg.net;
    if (net && typeof net === "object") {
      const parts = [];
      if (typeof net.loss === "number") parts.push(`loss ${(net.loss * 100).toFixed(1)} %`);
      if (typeof net.jitter_ms === "number") parts.push(`jitter ${net.jitter_ms.toFixed(0)} ms`);
      if (typeof net.emodel_mos === "number") parts.push(`E-model ${net.emodel_mos.toFixed(2)}`);
      card.net.textContent = parts.join(" · ");
    } else {
      card.net.textContent = "";
    }

    if (typeof msg.t === "number") {
      const h = card.history;
      if (h.length && msg.t < h[h.length - 1][0]) h.length = 0; // stream restarted
      h.push([msg.t, rolling, typeof msg.mos === "number" ? msg.mos : null]);
      while (h.length && h[0][0] < msg.t - HISTORY_S) h.shift();
      scheduleDraw(card);
    }
  }

  // Sparklines are redrawn at most once per animation frame, however fast scores come.
  const dirty = new Set();
  function scheduleDraw(card) {
    if (!dirty.size) {
      requestAnimationFrame(() => {
        dirty.forEach((c) => { if (c.el.isConnected) drawSpark(c); });
        dirty.clear();
      });
    }
    dirty.add(card);
  }

  function drawSpark(card) {
    const canvas = card.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(canvas.clientWidth * dpr) || canvas.width;
    const h = Math.round(canvas.clientHeight * dpr) || canvas.height;
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, w, h);
    const hist = card.history;
    if (!hist.length) return;
    // Fixed time axis once the history is long enough; a young stream fills the width.
    const tEnd = hist[hist.length - 1][0];
    const span = Math.min(HISTORY_S, Math.max(30, tEnd - hist[0][0]));
    const tStart = tEnd - span;
    const gutter = 16 * dpr; // room for the 3/4 labels left of the plot
    const x = (t) => gutter + ((t - tStart) / span) * (w - gutter);
    const y = (m) => h - ((Math.max(1, Math.min(5, m)) - 1) / 4) * (h - 4) - 2;

    ctx.lineWidth = 1 * dpr;
    ctx.setLineDash([4 * dpr, 4 * dpr]);
    ctx.strokeStyle = "rgba(255,255,255,0.18)";
    ctx.fillStyle = "rgba(255,255,255,0.35)";
    ctx.font = `${12 * dpr}px sans-serif`;
    ctx.textBaseline = "alphabetic";
    for (const level of [3, 4]) {
      ctx.beginPath();
      ctx.moveTo(gutter, y(level));
      ctx.lineTo(w, y(level));
      ctx.stroke();
      ctx.fillText(String(level), 2 * dpr, y(level) + 6 * dpr);
    }
    ctx.setLineDash([]);

    // Each window's own MOS as a faint dot, the rolling MOS as the line over them. A
    // rolling value with no neighbour (the first score of a page opened mid-call, or after
    // a pause) is drawn as a dot, so the history is never an empty box.
    const style = getComputedStyle(card.el).getPropertyValue("--band").trim() || "#8a8f98";
    ctx.fillStyle = "rgba(255,255,255,0.45)";
    for (const [t, , w] of hist) {
      if (w === null) continue;
      ctx.beginPath();
      ctx.arc(x(t), y(w), 2 * dpr, 0, 2 * Math.PI);
      ctx.fill();
    }
    ctx.strokeStyle = style;
    ctx.fillStyle = style;
    ctx.lineWidth = 3 * dpr;
    ctx.lineJoin = "round";
    ctx.lineCap = "round";
    for (let i = 0; i < hist.length; i++) {
      const m = hist[i][1];
      if (m === null) continue;
      const prev = i > 0 ? hist[i - 1][1] : null;
      const next = i + 1 < hist.length ? hist[i + 1][1] : null;
      if (prev === null && next === null) {
        ctx.beginPath();
        ctx.arc(x(hist[i][0]), y(m), 3 * dpr, 0, 2 * Math.PI);
        ctx.fill();
      } else if (prev !== null) {
        ctx.beginPath();
        ctx.moveTo(x(hist[i - 1][0]), y(prev));
        ctx.lineTo(x(hist[i][0]), y(m));
        ctx.stroke();
      }
    }
  }

  function onHello(msg, ws) {
    const m = msg.model || {};
    modelEl.textContent = m.name ? `· ${m.name}` : "";
    if (typeof m.window_s === "number") {
      EXPLAIN.window = `MOS of the latest ${m.window_s.toFixed(2).replace(/\.?0+$/, "")} s window of audio alone`;
    }
    showLegend();
    if (only.length) ws.send(JSON.stringify({ type: "subscribe", streams: only }));
    for (const card of cards.values()) card.pending = true;
    setTimeout(() => {
      for (const [stream, card] of cards) if (card.pending) removeCard(stream);
    }, STALE_AFTER_RECONNECT_MS);
  }

  let backoff = BACKOFF_MIN_MS;
  let retries = 0;

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const query = token ? "?token=" + encodeURIComponent(token) : "";
    let ws;
    try {
      ws = new WebSocket(`${proto}//${location.host}/ws${query}`);
    } catch (err) {
      scheduleReconnect();
      return;
    }
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (err) {
        return;
      }
      if (msg.type === "hello") {
        backoff = BACKOFF_MIN_MS;
        retries = 0;
        setStatus("live", "live");
        onHello(msg, ws);
      } else if (msg.type === "stream") {
        onStream(msg);
      } else if (msg.type === "score") {
        onScore(msg);
      } else if (msg.type === "error") {
        console.warn("streamqa server:", msg.error);
      }
    };
    ws.onclose = (ev) => {
      const why = ev.reason ? ` (${ev.reason})` : "";
      scheduleReconnect(why);
    };
  }

  // Exponential backoff with jitter, so a restarted monitor is not hit by every
  // overlay at the same instant.
  function scheduleReconnect(why = "") {
    const delay = backoff * (0.75 + Math.random() * 0.5);
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    retries += 1;
    setStatus("down", `disconnected${why}, retry ${retries}`);
    setTimeout(connect, delay);
  }

  // The legend under the cards (?legend=0 hides it, e.g. in an OBS scene).
  const legend = document.getElementById("legend");
  function showLegend() {
    if (params.get("legend") === "0") {
      legend.classList.add("hidden");
      return;
    }
    legend.replaceChildren(...["rolling", "window", "sig", "bak", "ovrl"].map((k) => {
      const item = document.createElement("li");
      const name = document.createElement("b");
      name.textContent = k === "rolling" ? "big number" : k;
      item.append(name, " " + EXPLAIN[k]);
      return item;
    }), Object.assign(document.createElement("li"), {
      textContent: "graph: rolling MOS (line) and each window's MOS (dots) over the last "
        + `${HISTORY_S} s; dashed lines at MOS 3 and 4`,
    }));
  }

  window.addEventListener("resize", () => cards.forEach(drawSpark));
  showLegend();
  refreshEmpty();
  connect();
})();
