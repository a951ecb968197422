// The live page: the daemon's annotated frames as MJPEG, its state polled from /api/live.
// No framework and no build step: this file is served as is, also on a device with no internet.
//
// The MJPEG stream is read with fetch() and cut into JPEGs here rather than handed to an <img>: the page then
// knows when each frame arrived, so a picture that stopped changing is called frozen even when the daemon
// still answers (an <img> fires no event per frame), and pausing just stops reading.
"use strict";

const POLL_MS = 500;          // state refresh; the picture itself streams at the processing rate
const TIMEOUT_MS = 2000;      // a poll that takes longer counts as a lost daemon
const $ = (id) => document.getElementById(id);

const view = {
  started: null,      // the daemon instance the stream belongs to; a new one means it restarted
  connected: false,
  paused: false,
  boxes: true,
  lastEvent: 0,       // the newest event listed (the daemon numbers them from 1)
  stream: null,       // AbortController of the running stream
  arrived: null,      // performance.now() when the picture last changed
  frameIndex: null,   // source index of the frame on screen
  frames: 0,          // frames shown since the page loaded
  restarted: 0,       // performance.now() when the stream was last (re)opened
};

const CRLF2 = [13, 10, 13, 10];
const decoder = new TextDecoder();

function indexOf(buf, pattern, from = 0) {
  outer: for (let i = from; i <= buf.length - pattern.length; i++) {
    for (let j = 0; j < pattern.length; j++) if (buf[i + j] !== pattern[j]) continue outer;
    return i;
  }
  return -1;
}

function showFrame(jpeg, head) {
  const img = $("video");
  const old = img.src;
  img.src = URL.createObjectURL(new Blob([jpeg], { type: "image/jpeg" }));
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  const index = /X-Frame-Index:\s*(\d+)/i.exec(head);
  view.frameIndex = index ? Number(index[1]) : null;
  view.arrived = performance.now();
  view.frames += 1;
}

async function readStream(ctl) {
  const res = await fetch(`stream.mjpg?boxes=${view.boxes ? 1 : 0}`, { cache: "no-store", signal: ctl.signal });
  if (!res.ok || !res.body) throw new Error(`stream: HTTP ${res.status}`);
  const reader = res.body.getReader();
  let buf = new Uint8Array(0);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const joined = new Uint8Array(buf.length + value.length);
    joined.set(buf);
    joined.set(value, buf.length);
    buf = joined;
    // Each part: "--frame", its headers, a blank line, Content-Length bytes of JPEG, CRLF.
    for (;;) {
      const end = indexOf(buf, CRLF2);
      if (end < 0) break;
      const head = decoder.decode(buf.subarray(0, end));
      const length = /Content-Length:\s*(\d+)/i.exec(head);
      if (!length) throw new Error("stream: a part without Content-Length");
      const start = end + 4;
      if (buf.length < start + Number(length[1])) break;
      if (ctl.signal.aborted) return;
      showFrame(buf.slice(start, start + Number(length[1])), head);
      buf = buf.slice(start + Number(length[1]));
    }
  }
}

function startStream() {
  // One stream at a time: a new one (reconnect, boxes toggled, resumed) replaces the old.
  if (view.stream) view.stream.abort();
  view.stream = null;
  view.restarted = performance.now();
  if (view.paused) return;
  const ctl = new AbortController();
  view.stream = ctl;
  readStream(ctl).catch(() => {}).finally(() => { if (view.stream === ctl) view.stream = null; });
}

function pictureAge() {
  return view.arrived === null ? null : (performance.now() - view.arrived) / 1000;
}

async function getJson(url) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    const res = await fetch(url, { cache: "no-store", signal: ctl.signal });
    if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
    return await res.json();
  } finally {
    clearTimeout(timer);
  }
}

function fmt(value, digits = 1, unit = "") {
  return value === null || value === undefined || Number.isNaN(value) ? "-" : `${value.toFixed(digits)}${unit}`;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function rgb(bgr) {
  return bgr ? `rgb(${bgr[2]}, ${bgr[1]}, ${bgr[0]})` : "transparent";
}

function setBanner(text, kind) {
  const banner = $("banner");
  banner.hidden = !text;
  banner.textContent = text || "";
  banner.className = kind || "";
  $("stage").classList.toggle("stale", kind === "stale");
}

function renderRunning(s) {
  $("camera").textContent = s.camera;
  const b = s.bundle;
  $("bundle").innerHTML = "";
  $("bundle").append("bundle ", Object.assign(document.createElement("b"), { textContent: b.name }),
    ` (${b.format} ${b.precision}, ${(b.size_bytes / 1e6).toFixed(2)} MB)`);
  $("source").innerHTML = "";
  $("source").append("source ", Object.assign(document.createElement("b"), { textContent: s.source.uri }));
  $("host").textContent = `host ${s.host.cpu}`;
  const about = s.source.about;
  $("about").hidden = !about;
  $("about").textContent = about ? about.description : "";
}

function renderModel(b) {
  const body = $("model").tBodies[0];
  body.innerHTML = "";
  const rows = [["file", `${b.name}`], ["format", `${b.format} ${b.precision}, input ${b.input}`],
                ["size", `${(b.size_bytes / 1e6).toFixed(2)} MB`]];
  if (b.accuracy) {
    const a = b.accuracy;
    rows.push(["AP@[.5:.95]", `${fmt(a.map, 3)} mean`]);
    for (const c of a.classes) rows.push([`  ${c.name}`, fmt(c.ap, 3)]);
    rows.push(["measured", `through ${a.runtime} on ${a.num_images} validation images`, a.dataset]);
  } else {
    rows.push(["AP", "not recorded in the manifest"]);
  }
  for (const [k, v, tip] of rows) {
    const row = body.insertRow();
    row.insertCell().outerHTML = `<th></th>`;
    row.cells[0].textContent = k;
    cell(row, v).title = tip || "";
  }
}

function renderCounts(s) {
  const body = $("counts").tBodies[0];
  body.innerHTML = "";
  for (const c of s.classes) {
    const row = body.insertRow();
    const name = cell(row, c.label);
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = rgb(c.colour);
    name.prepend(sw);
    cell(row, String(c.now));
    cell(row, String(c.total));
  }
  const line = s.line;
  $("line").hidden = !line;
  if (line) {
    $("line-name").textContent = `line "${line.name}"`;
    const lb = $("line").tBodies[0];
    lb.innerHTML = "";
    for (const [direction, n] of Object.entries(line.counts)) {
      const row = lb.insertRow();
      cell(row, direction);
      cell(row, String(n));
    }
  }
}

function renderStats(s) {
  const src = s.source;
  const state = $("st-state");
  state.textContent = src.state + (src.detail ? ` (${src.detail})` : "");
  state.className = `state-${src.state}`;
  $("st-age").textContent = src.frame_age === null ? "-" : `${fmt(src.frame_age, 2)} s`;
  const st = s.stages;
  $("st-capture").textContent = `${fmt(st.capture_fps)} fps`;
  $("st-detect").textContent = `${fmt(st.detect_fps)} fps`;
  $("st-model").textContent = fmt(st.detect_ms, 1, " ms");
  $("st-events").textContent = `${fmt(st.events_fps)} fps`;
  $("st-view").textContent = `${fmt(st.view_fps)} fps`;
  $("st-motion").textContent = s.motion || "-";
  $("st-dropped").textContent = String(s.dropped ?? "-");
}

function renderSourceState(s) {
  const src = s.source;
  const age = pictureAge();
  if (!view.paused && src.state === "live" && age !== null && age > src.frozen_after) {
    // The daemon has fresh frames but this page's picture stopped: say so, and open the stream again.
    setBanner(`Picture FROZEN: no new frame on this page for ${age.toFixed(1)} s. Reconnecting the stream…`, "stale");
    if (performance.now() - view.restarted > 3000) startStream();
  } else if (src.state === "ended") {
    setBanner(`Source ended: ${src.detail || "the file has no more frames"}. The picture is the last frame.`, "stale");
  } else if (src.state !== "live") {
    const age = src.frame_age === null ? "no frame yet" : `no new frame for ${src.frame_age.toFixed(1)} s`;
    setBanner(`Source ${src.state.toUpperCase()}: ${age}${src.detail ? ` (${src.detail})` : ""}`, "stale");
  } else if (view.paused) {
    setBanner("View paused (the daemon keeps running)", "paused");
  } else {
    setBanner(null);
  }
}

function renderEvents(events) {
  const list = $("events");
  for (const e of events) {
    if (e.n <= view.lastEvent) continue;
    view.lastEvent = e.n;
    const li = document.createElement("li");
    li.dataset.n = e.n;
    const thumb = e.snapshot_url ? Object.assign(document.createElement("img"), { src: e.snapshot_url, alt: e.label })
                                 : Object.assign(document.createElement("div"), { className: "nothumb" });
    const text = document.createElement("div");
    const head = document.createElement("div");
    head.innerHTML = `<span class="type-${e.type}"></span> <b></b> <span></span>`;
    head.children[0].textContent = e.type;
    head.children[1].textContent = e.label;
    // The same short id as on the picture (devices/daemon/overlay.py short_id); the full id is the tooltip.
    head.children[2].textContent = `#${e.id.split("-").pop().slice(0, 4)} ${Number(e.top_score ?? e.score).toFixed(2)}`;
    head.title = e.id;
    const meta = Object.assign(document.createElement("div"), { className: "meta" });
    const when = new Date(e.frame_time_unix * 1000).toLocaleTimeString();
    const extra = [e.zones && e.zones.length ? `zones ${e.zones.join(", ")}` : "",
                   e.line_crossing ? `crossed ${e.line_crossing.line} ${e.line_crossing.direction}` : ""];
    meta.textContent = [when, `frame ${e.frame_index}`, ...extra].filter(Boolean).join(" · ");
    text.append(head, meta);
    li.append(thumb, text);
    list.prepend(li);
  }
  while (list.children.length > 20) list.lastChild.remove();
}

function setConnection(ok, text) {
  view.connected = ok;
  const badge = $("connection");
  badge.textContent = text;
  badge.className = `badge ${ok ? "ok" : "bad"}`;
}

async function poll() {
  try {
    const s = await getJson("api/live");
    if (s.started !== view.started || !view.connected) {
      // First contact, or the daemon came back (possibly a new process): start the picture afresh.
      const restarted = view.started !== null && s.started !== view.started;
      view.started = s.started;
      if (restarted) {
        view.lastEvent = 0;
        $("events").innerHTML = "";
      }
      renderRunning(s);
      renderModel(s.bundle);
      view.arrived = performance.now();  // the new stream gets its grace period before it counts as frozen
      startStream();
    }
    setConnection(true, "connected");
    renderCounts(s);
    renderStats(s);
    renderSourceState(s);
    if (s.last_event !== view.lastEvent) {
      renderEvents(await getJson(`api/events?after=${view.lastEvent}`));
    }
  } catch (err) {
    setConnection(false, "daemon unreachable, retrying");
    setBanner("Daemon unreachable: the picture below is not live. Reconnecting…", "stale");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

$("boxes").addEventListener("change", (ev) => { view.boxes = ev.target.checked; startStream(); });
$("pause").addEventListener("click", () => {
  // Pausing stops reading the stream: the picture stays as it is, the daemon keeps running.
  view.paused = !view.paused;
  $("pause").textContent = view.paused ? "Resume view" : "Pause view";
  if (!view.paused) view.arrived = performance.now();
  startStream();
});
poll();
