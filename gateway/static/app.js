// Five clients of one gateway, side by side. No framework, no build step, nothing from another origin.
// Wire format: docs/wire-contract.md. Every client keeps the last seq it saw and resumes after it.
"use strict";

(() => {
  // Raw HTML off (model output is untrusted); links open in a new tab, away from a running stream.
  const md = window.markdownit({ html: false, linkify: false, typographer: false });
  md.renderer.rules.link_open = (tokens, i, options, env, self) => {
    tokens[i].attrSet("target", "_blank");
    tokens[i].attrSet("rel", "noopener noreferrer");
    return self.renderToken(tokens, i, options);
  };
  const utf8 = new TextEncoder();
  const MAX_TRIES = 5;  // reconnect attempts in a row without a new event before giving up
  // No byte for this long on an open connection: it is dead (half-open, no FIN or RST ever comes), so
  // cut it and resume. Three of the gateway's default 15 s heartbeats; `?read_timeout_s=N` sets it.
  const READ_TIMEOUT_MS = 1000 * (Number(new URLSearchParams(location.search).get("read_timeout_s")) || 45);
  // The transports' names, formats and fallback order, as the server defines them (gateway/names.py).
  const NAMES = JSON.parse(document.getElementById("transports").textContent);

  // Transport fallback, the rules of gateway/fallback.py: a path that refuses a transport, or cuts it
  // twice in a row before any token or within a second of opening, moves the panel to the next one,
  // resuming the same stream.
  class Fallback {
    constructor(order) {
      this.order = order;
      this.index = 0;
      this.barren = 0;
    }

    get transport() {
      return this.order[this.index];
    }

    refused() {
      return this.next();
    }

    ended(progressed, lastedMs) {
      if (progressed && lastedMs >= 1000) {
        this.barren = 0;
        return false;
      }
      return ++this.barren >= 2 && this.next();
    }

    next() {
      if (this.index + 1 >= this.order.length) return false;
      this.index++;
      this.barren = 0;
      return true;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Markdown while it streams. Blocks that can no longer change are rendered once and never
  // touched again (no flicker, selection survives); only the last block is re-rendered, once per
  // animation frame, after `heal` hides or closes markup that is still being written.

  const SYNTAX_ONLY = /^\s*(?:[-*+=_#>|`~:]+|\d+[.)]?)\s*$/;
  const FENCE = /^ {0,3}(`{3,}|~{3,})/;
  const TABLE_DELIM = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

  class MarkdownView {
    constructor(el) {
      this.el = el;
      this.clear();
    }

    clear() {
      this.source = "";
      this.committed = 0;
      this.tailHTML = "";
      this.el.replaceChildren();
      this.blocks = this.el.appendChild(document.createElement("div"));
      this.tail = this.el.appendChild(document.createElement("div"));
    }

    append(text) {
      this.source += text.replace(/\r\n?/g, "\n");
    }

    render(final) {
      const follow = this.el.scrollHeight - this.el.scrollTop - this.el.clientHeight < 40;
      let src = this.source.slice(this.committed);
      const cut = final ? src.length : stableEnd(src);
      if (cut > 0) {
        const block = document.createElement("div");
        block.innerHTML = md.render(src.slice(0, cut));
        this.blocks.append(block);
        this.committed += cut;
        src = src.slice(cut);
      }
      const html = src ? md.render(heal(src)) : "";
      if (html !== this.tailHTML) {
        this.tail.innerHTML = html;
        this.tailHTML = html;
      }
      if (follow) this.el.scrollTop = this.el.scrollHeight;
    }
  }

  // Offset where the last top-level block of the complete lines starts: what precedes it is final.
  function stableEnd(src) {
    const complete = src.slice(0, src.lastIndexOf("\n") + 1);
    if (!complete) return 0;
    const tops = md.parse(complete, {}).filter((t) => t.level === 0 && t.nesting !== -1 && t.map);
    if (tops.length < 2) return 0;
    let line = tops[tops.length - 1].map[0];
    let at = 0;
    while (line-- > 0) at = complete.indexOf("\n", at) + 1;
    return at;
  }

  // The last block as it should look now: open fences and spans closed, half-typed markup hidden.
  function heal(src) {
    const lines = src.split("\n");
    let fence = null;
    for (const line of lines) {
      const m = FENCE.exec(line);
      if (!m) continue;
      if (fence === null) fence = m[1];
      else if (m[1][0] === fence[0] && m[1].length >= fence.length && !line.slice(m[0].length).trim()) fence = null;
    }
    if (fence !== null) {
      if (/^ {0,3}[`~]+$/.test(lines[lines.length - 1])) lines.pop();  // a closing fence on its way
      return lines.join("\n") + "\n" + fence;
    }
    if (SYNTAX_ONLY.test(lines[lines.length - 1])) lines.pop();  // "-", "1.", "##", "|" waiting for text
    // A table shows once its header and delimiter rows are complete.
    if (/^ {0,3}\|/.test(lines[0]) && !(lines.length > 2 && TABLE_DELIM.test(lines[1]))) return "";
    return closeInline(lines.join("\n"));
  }

  function closeInline(s) {
    // An unfinished link or image shows as its text until the URL is complete.
    s = s.replace(/!?\[([^\]\n]*)\]\([^)\n]*$/, "$1").replace(/!?\[([^\]\n]*)\]?$/, "$1");
    const open = [];  // {mark, at}
    let i = 0;
    let lineStart = true;
    while (i < s.length) {
      const c = s[i];
      if (c === "\n") {
        lineStart = true;
        i++;
        continue;
      }
      if (lineStart) {  // skip block markers: indentation, "> ", "- ", "1. ", "## "
        lineStart = false;
        i += /^ *(?:> ?)*(?:[-*+] +|\d+[.)] +|#{1,6} +)?/.exec(s.slice(i))[0].length;
        continue;
      }
      if (c === "\\") {
        i += 2;
        continue;
      }
      let n = 1;
      while (s[i + n] === c) n++;
      if (c === "`") {
        const end = s.indexOf(c.repeat(n), i + n);
        if (end < 0) {
          open.push({ mark: c.repeat(n), at: i });
          break;  // the rest is code
        }
        i = end + n;
        continue;
      }
      if (c === "*" || c === "_" || (c === "~" && n >= 2)) {
        const before = i > 0 ? s[i - 1] : " ";
        const after = i + n < s.length ? s[i + n] : "";
        const mark = c === "~" ? "~~" : c.repeat(Math.min(n, 3));
        const top = open[open.length - 1];
        if (c === "_" && /\w/.test(before) && /\w/.test(after)) {
          // snake_case: not emphasis
        } else if (top && top.mark === mark && !/\s/.test(before)) {
          open.pop();
        } else if (after === "" || !/\s/.test(after)) {
          open.push({ mark, at: i });
        }
      }
      i += n;
    }
    for (let k = open.length - 1; k >= 0; k--) {
      const { mark, at } = open[k];
      if (!s.slice(at + mark.length).trim()) s = s.slice(0, at);  // nothing inside yet: hide the opener
      else s = s.replace(/\s*$/, (ws) => mark + ws);  // close it before any trailing space
    }
    return s;
  }

  // ---------------------------------------------------------------------------------------------
  // Framing: bytes-as-text in, event objects out. Heartbeats come out as {type: "heartbeat"}.

  const EVENT_TYPES = new Set(["meta", "token", "done", "error"]);

  // Incremental SSE parser (WHATWG HTML, "event stream interpretation"); `types`: the event names to
  // keep (null: all).
  class SSEFraming {
    constructor(types = EVENT_TYPES) {
      this.types = types;
      this.buf = "";
      this.data = null;
      this.type = "";
    }

    feed(text) {
      this.buf += text;
      const out = [];
      const eol = /\r\n|\r|\n/g;
      let start = 0;
      let m;
      while ((m = eol.exec(this.buf)) !== null) {
        if (m[0] === "\r" && m.index === this.buf.length - 1) break;  // may be half of a CRLF
        this.line(this.buf.slice(start, m.index), out);
        start = eol.lastIndex;
      }
      this.buf = this.buf.slice(start);
      return out;
    }

    line(line, out) {
      if (line === "") {
        if (this.data !== null && (this.types === null || this.types.has(this.type))) out.push(JSON.parse(this.data));
        this.data = null;
        this.type = "";
        return;
      }
      if (line[0] === ":") {
        out.push({ type: "heartbeat" });
        return;
      }
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "data") this.data = this.data === null ? value : this.data + "\n" + value;
      else if (field === "event") this.type = value;
      // `id` and `retry` matter to EventSource; this client resumes from the seq in each event.
    }
  }

  class NDJSONFraming {
    constructor() {
      this.buf = "";
    }

    feed(text) {
      const lines = (this.buf + text).split("\n");
      this.buf = lines.pop();
      return lines.filter((l) => l.trim()).map((l) => JSON.parse(l));
    }
  }

  // OpenAI Responses events back to the gateway's events (docs/wire-contract.md): a delta's
  // sequence_number is its seq + 3, response.created is meta, the terminal response is done or error.
  // `done.text` is the server's whole text (the client hashes it, to compare with its own deltas).
  const OFFSET = 3;
  class ResponsesFraming {
    constructor() {
      this.sse = new SSEFraming(null);
    }

    feed(text) {
      const out = [];
      for (const ev of this.sse.feed(text)) {
        const r = ev.response;
        if (ev.type === "heartbeat") out.push(ev);
        else if (ev.type === "response.created") out.push({ type: "meta", seq: 0, stream_id: r.id.slice(5), model: r.model });
        else if (ev.type === "response.output_text.delta") out.push({ type: "token", seq: ev.sequence_number - OFFSET, text: ev.delta });
        else if (ev.type === "response.completed" || ev.type === "response.incomplete") {
          const text = r.output.length ? r.output[0].content.map((c) => c.text).join("") : "";
          out.push({ type: "done", seq: ev.sequence_number - OFFSET - 3, finish_reason: ev.type === "response.completed" ? "stop" : "length",
                     tokens: r.usage.output_tokens, sha256: null, text });
        } else if (ev.type === "response.failed") {
          const e = r.error || {};
          out.push({ type: "error", seq: ev.sequence_number - OFFSET, code: e.code || "failed", message: e.message || "", retryable: !!e.retryable });
        }
      }
      return out;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // A panel: what one client received, and its figures.

  const fmtBytes = (n) => (n < 10_000 ? `${n} B` : n < 10_000_000 ? `${(n / 1000).toFixed(1)} kB` : `${(n / 1e6).toFixed(1)} MB`);

  async function sha256Hex(text) {
    if (!crypto.subtle) return null;  // only in a secure context: https, localhost or 127.0.0.1
    const digest = await crypto.subtle.digest("SHA-256", utf8.encode(text));
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  class Panel {
    constructor(section, onEnd) {
      this.section = section;
      this.kind = section.dataset.kind;
      this.onEnd = onEnd;
      section.append(document.getElementById("panel-body").content.cloneNode(true));
      const $ = (sel) => section.querySelector(sel);
      this.ui = {
        mark: $(".mark"), state: $(".state"), ttft: $(".ttft"), rate: $(".rate"), tokens: $(".tokens"),
        bytes: $(".bytes"), reconnects: $(".reconnects"), shaMark: $(".sha-mark"), shaText: $(".sha-text"),
        sha: $(".sha"), output: $(".output"), stall: $(".stall"), gapsdups: $(".gapsdups"), flags: $(".flags"),
      };
      if (this.kind === "sse_get") {
        $(".bytes-label").textContent = "event bytes";
        $(".bytes-label").title = "EventSource hides the framing and heartbeats: bytes of the events it delivered";
      }
      this.view = new MarkdownView(this.ui.output);
      this.client = null;
      this.reset(performance.now());
      this.setStatus("idle", "idle");
      this.ui.output.setAttribute("aria-busy", "false");
    }

    reset(t0) {
      this.run = (this.run || 0) + 1;
      this.t0 = t0;
      this.text = "";
      this.streamId = null;
      this.lastSeq = -1;
      this.tokens = 0;
      this.duplicates = 0;
      this.gaps = 0;
      this.heartbeats = 0;
      this.bytes = 0;
      this.reconnects = 0;
      this.cuts = [];
      this.stalls = [];  // ms from the last token before each cut to the next new token
      this.stallFrom = null;  // when the last token before a pending cut came
      this.flags = [];  // what the path did: "held until the end", "upgrade refused"
      this.endAt = null;
      this.fallbacks = [];  // {from, to, ms}: when the panel gave up on a transport
      this.onSilence = null;
      clearTimeout(this.silence);
      this.tries = 0;
      this.firstAt = null;
      this.lastAt = null;
      this.ended = false;
      this.outcome = null;  // {status, code, message}
      this.done = null;
      this.sha = null;
      this.hashed = false;
      cancelAnimationFrame(this.frame);
      this.frame = 0;
      this.view.clear();
      this.ui.shaMark.textContent = "";
      this.ui.shaText.textContent = "sha256 –";
      this.ui.sha.className = "sha";
      this.ui.sha.title = "";
      this.ui.output.setAttribute("aria-busy", "true");
      this.setStatus("connecting", "connecting…");
      this.paint();
    }

    setStatus(status, label) {
      this.section.dataset.status = status;
      const marks = { done: "✓", error: "✗", cut: "✗", cancelled: "■", reconnecting: "↻" };
      this.ui.mark.textContent = marks[status] || "";
      this.ui.state.textContent = label;
    }

    addBytes(n) {
      this.bytes += n;
      this.alive();
    }

    // The read timeout: `onSilence` runs when no byte came for READ_TIMEOUT_MS (null: none armed).
    watch(onSilence) {
      this.onSilence = onSilence;
      this.alive();
    }

    alive() {
      clearTimeout(this.silence);
      if (this.onSilence && !this.ended) this.silence = setTimeout(() => this.onSilence(), READ_TIMEOUT_MS);
    }

    fellBack(from, to) {
      this.fallbacks.push({ from, to, ms: performance.now() - this.t0 });
      const label = (t) => NAMES.transports[t].label;
      this.ui.state.textContent = `${label(to)} (no ${label(from)} on this path)`;
    }

    event(ev) {
      if (this.ended) return;
      switch (ev.type) {
        case "heartbeat":
          this.heartbeats++;
          return;
        case "meta":
          this.streamId = ev.stream_id;
          this.lastSeq = Math.max(this.lastSeq, 0);
          break;
        case "token":
          if (ev.seq <= this.lastSeq) {  // already have it: a resume must not repeat a word
            this.duplicates++;
            return;
          }
          if (ev.seq !== this.lastSeq + 1) this.gaps++;
          this.lastSeq = ev.seq;
          this.text += ev.text;
          this.view.append(ev.text);
          this.tokens++;
          this.lastAt = performance.now();
          if (this.firstAt === null) this.firstAt = this.lastAt;
          if (this.stallFrom !== null) {
            this.stalls.push(this.lastAt - this.stallFrom);
            this.stallFrom = null;
          }
          if (this.section.dataset.status !== "streaming") this.setStatus("streaming", "streaming");
          break;
        case "done":
          this.lastSeq = ev.seq;
          this.done = ev;
          this.end("done", "done", "", `done: ${ev.finish_reason}, ${ev.tokens} tokens`);
          return;
        case "error":
          this.lastSeq = Math.max(this.lastSeq, ev.seq);
          if (ev.code === "cancelled") this.end("cancelled", ev.code, ev.message, ev.message);
          else this.end("error", ev.code, ev.message, `error: ${ev.code} (${ev.message})`);
          return;
        default:
          return;
      }
      this.tries = 0;  // progress: the next cut gets the full number of tries again
      this.schedule();
    }

    // The connection ended without a terminal event. True: the client should resume now.
    cut(reason) {
      if (this.ended) return false;
      if (this.streamId === null) {
        this.end("cut", "cut", reason, `cut before the stream started: ${reason}`);
        return false;
      }
      if (++this.tries > MAX_TRIES) {
        this.end("cut", "cut", reason, `cut, gave up after ${MAX_TRIES} tries: ${reason}`);
        return false;
      }
      this.reconnects++;
      if (this.stallFrom === null) this.stallFrom = this.lastAt === null ? this.t0 : this.lastAt;
      this.cuts.push(`after seq ${this.lastSeq}: ${reason}`);
      this.setStatus("reconnecting", `reconnecting after seq ${this.lastSeq}…`);
      this.schedule();
      return true;
    }

    cancelled(message) {
      this.end("cancelled", "cancelled", message, message);
    }

    fail(code, message) {
      this.end("error", code, message, `error: ${code} (${message})`);
    }

    // What the path did to this stream, shown on the panel (as gateway/probe.py flags it).
    flag(what) {
      if (!this.flags.includes(what)) this.flags.push(what);
      this.ui.flags.textContent = "⚠ " + this.flags.join("; ");
      this.ui.flags.hidden = false;
    }

    end(status, code, message, label) {
      if (this.ended) return;
      this.ended = true;
      this.endAt = performance.now();
      // Held until the end: the first token came with (nearly) the whole answer: a buffering proxy.
      if (status === "done" && this.tokens > 2 && this.firstAt !== null
          && this.firstAt - this.t0 >= 0.8 * (this.endAt - this.t0) && this.lastAt - this.firstAt < 0.2 * (this.endAt - this.t0)) {
        this.flag(`held until the end: first token at ${Math.round(this.firstAt - this.t0)} ms of ${Math.round(this.endAt - this.t0)} ms`);
      }
      clearTimeout(this.silence);
      this.outcome = { status, code, message };
      cancelAnimationFrame(this.frame);
      this.frame = 0;
      this.view.render(true);
      this.ui.output.setAttribute("aria-busy", "false");
      this.setStatus(status, label);
      this.paint();
      const run = this.run;
      sha256Hex(this.text).then((sha) => {
        if (this.run !== run) return;  // a new run started meanwhile
        this.showHash(sha);
        this.hashed = true;
        this.onEnd(this);
      });
    }

    showHash(sha) {
      this.sha = sha;
      const { shaMark, shaText, sha: box } = this.ui;
      box.dataset.sha = sha || "";
      if (sha === null) {
        shaText.textContent = "sha256 needs a secure context (https or localhost)";
        return;
      }
      const short = sha.slice(0, 12) + "…";
      if (this.done && sha === this.done.sha256) {
        box.className = "sha ok";
        shaMark.textContent = "✓";
        shaText.textContent = `sha256 ${short} matches done`;
        box.title = `sha256 ${sha}, as in the done event`;
      } else if (this.done) {
        box.className = "sha bad";
        shaMark.textContent = "✗";
        shaText.textContent = `sha256 ${short} differs from done`;
        box.title = `received ${sha}, done says ${this.done.sha256}`;
      } else {
        box.className = "sha bad";
        shaMark.textContent = "✗";
        shaText.textContent = `sha256 ${short} partial: no done event`;
        box.title = `sha256 ${sha} of the partial text`;
      }
    }

    schedule() {
      if (!this.frame) {
        this.frame = requestAnimationFrame(() => {
          this.frame = 0;
          this.view.render(false);
          this.paint();
        });
      }
    }

    paint() {
      const ui = this.ui;
      ui.ttft.textContent = this.firstAt === null ? "–" : `${Math.round(this.firstAt - this.t0)} ms`;
      // Over the streaming span (first token to last), and only if the tokens were spread over it: a
      // held answer arrives in one burst, where a rate means nothing.
      const span = (this.lastAt - this.firstAt) / 1000;
      const whole = ((this.endAt || performance.now()) - this.t0) / 1000;
      ui.rate.textContent = this.tokens > 1 && span > 0.05 * whole && span > 0.01
        ? ((this.tokens - 1) / span).toFixed(1) : this.tokens > 1 ? "– (one burst)" : "–";
      ui.stall.textContent = this.stalls.length ? `${Math.round(Math.max(...this.stalls))} ms` : "–";
      ui.stall.title = this.stalls.map((ms) => `${Math.round(ms)} ms`).join(", ");
      ui.gapsdups.textContent = `${this.gaps} / ${this.duplicates}`;
      ui.tokens.textContent = String(this.tokens);
      ui.bytes.textContent = fmtBytes(this.bytes);
      ui.reconnects.textContent = String(this.reconnects);
    }

    snapshot() {
      return {
        kind: this.kind, status: this.section.dataset.status, ended: this.ended, outcome: this.outcome,
        text: this.text, tokens: this.tokens, lastSeq: this.lastSeq, streamId: this.streamId,
        duplicates: this.duplicates, gaps: this.gaps, heartbeats: this.heartbeats, bytes: this.bytes,
        reconnects: this.reconnects, cuts: this.cuts, sha: this.sha, doneSha: this.done ? this.done.sha256 : null,
        stalls: this.stalls, flags: this.flags,
        fallbacks: this.fallbacks, transport: this.client ? this.client.transport : this.kind,
        ttftMs: this.firstAt === null ? null : this.firstAt - this.t0,
      };
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The five clients. Each has start(body) and cancel().

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // An HTTP status before the stream: the problem+json detail.
  async function problem(resp) {
    try {
      const body = await resp.json();
      return [`http_${resp.status}`, body.detail || body.title || (body.error && body.error.message) || resp.statusText];
    } catch {
      return [`http_${resp.status}`, resp.statusText];
    }
  }

  // A client feeds one run of its panel. Once the panel starts a new run, the old client is not
  // `live`: whatever still arrives for it (a late event, a resolved fetch) is dropped.
  class Client {
    constructor(panel) {
      this.panel = panel;
    }

    get live() {
      return this.panel.client === this;
    }

    get transport() {
      return this.panel.kind;
    }
  }
  // Stops a stream's generation; keepalive lets it outlive the page (pagehide).
  const abortStream = (id) => {
    if (id) fetch(`/v1/streams/${encodeURIComponent(id)}/cancel`, { method: "POST", keepalive: true }).catch(() => {});
  };
  // gateway/backoff.py's schedule: 150 ms doubling to at most 2 s, half of it random.
  const backoff = (panel) => {
    const full = Math.min(2000, 150 * 2 ** (Math.max(1, panel.tries) - 1));
    return sleep(full / 2 + (Math.random() * full) / 2);
  };
  const jsonInit = (body) => ({ method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

  // 1. POST /v1/streams, then EventSource by id. EventSource resumes by itself with Last-Event-ID.
  class EventSourceClient extends Client {
    constructor(panel) {
      super(panel);
      this.es = null;
      this.id = null;
      this.cancelling = false;
    }

    async start(body) {
      const panel = this.panel;
      let resp;
      try {
        resp = await fetch("/v1/streams", jsonInit(body));
        if (!resp.ok) {
          const [code, detail] = await problem(resp);
          return this.live && panel.fail(code, detail);
        }
        this.id = (await resp.json()).id;
      } catch (e) {
        return this.live && panel.fail("network", String(e));
      }
      if (this.cancelling) return this.cancel();
      if (!this.live) return;
      const es = (this.es = new EventSource(`/v1/streams/${encodeURIComponent(this.id)}/sse`));
      const onEvent = (e) => {
        if (!this.live) return es.close();
        panel.addBytes(utf8.encode(`id: ${e.lastEventId}\nevent: ${e.type}\ndata: ${e.data}\n\n`).length);
        panel.event(JSON.parse(e.data));
        if (panel.ended) es.close();  // or it reconnects when the server ends the response
      };
      for (const type of ["meta", "token", "done"]) es.addEventListener(type, onEvent);
      es.addEventListener("error", (e) => {
        if (e instanceof MessageEvent) return onEvent(e);  // the stream's own `error` event
        if (panel.ended || !this.live) return es.close();
        // A connection error: CONNECTING means the browser retries by itself after `retry` ms.
        if (es.readyState === EventSource.CLOSED || !panel.cut("connection lost")) {
          es.close();
          if (!panel.ended) panel.fail("cut", "EventSource gave up (the server refused to resume)");
        }
      });
    }

    async cancel() {
      this.cancelling = true;
      if (this.id === null) return;  // start() cancels once the stream exists
      const resp = await fetch(`/v1/streams/${encodeURIComponent(this.id)}`, { method: "DELETE" });
      // 204: the `cancelled` error event arrives on the EventSource. Otherwise it already ended.
      if (!this.live) return;
      if (resp.status !== 204 || !this.es) {
        if (this.es) this.es.close();
        this.panel.cancelled(resp.status === 204 ? "cancelled" : `cancel: HTTP ${resp.status}`);
      }
    }

    detach() {
      if (this.es) this.es.close();
    }
  }

  // 2 and 3. fetch with a ReadableStream; after a cut, GET the stream by id from the last seq.
  class FetchClient extends Client {
    constructor(panel, transport, fallback = null) {
      super(panel);
      this.id = null;  // from the X-Stream-Id header
      this.name = transport;  // "sse_post" or "ndjson"
      this.format = NAMES.transports[transport].format;  // "sse" or "ndjson"
      this.abort = new AbortController();
      this.fallback = fallback;  // set on the WebSocket panel once it fell back to fetch
    }

    get transport() {
      return this.name;
    }

    resumeRequest() {
      const base = `/v1/streams/${encodeURIComponent(this.panel.streamId)}/${this.format}`;
      const after = String(this.panel.lastSeq);
      if (this.format === "sse") return [base, { headers: { "Last-Event-ID": after } }];
      return [`${base}?after=${after}`, {}];
    }

    firstRequest(body) {
      return [`/v1/${this.format}`, jsonInit(body)];
    }

    async start(body) {
      const panel = this.panel;
      let [url, init] = panel.streamId === null ? this.firstRequest(body) : this.resumeRequest();
      for (;;) {
        let reason = "the response ended without a terminal event";
        const tokens = panel.tokens;
        const opened = performance.now();
        const connection = new AbortController();  // this request only: the read timeout aborts it
        panel.watch(() => connection.abort(new Error(`no byte for ${READ_TIMEOUT_MS / 1000} s`)));
        try {
          const resp = await fetch(url, { ...init, signal: AbortSignal.any([this.abort.signal, connection.signal]) });
          this.id = resp.headers.get("x-stream-id") || this.id;
          if (!resp.ok) {
            panel.flag(`refused: HTTP ${resp.status}`);
            const proxy = !(resp.headers.get("content-type") || "").startsWith("application/problem+json");
            if (proxy && this.live && this.fallback && this.fallback.refused()) return this.fallBack(body);
            const [code, detail] = await problem(resp);
            return this.live && panel.fail(code, detail);
          }
          await this.read(resp);
        } catch (e) {
          if (this.abort.signal.aborted) return;
          reason = String((connection.signal.aborted && connection.signal.reason.message) || e.message || e);
        } finally {
          panel.watch(null);
        }
        if (!this.live || panel.ended) return;
        if (this.fallback && this.fallback.ended(panel.tokens > tokens, performance.now() - opened)) {
          return this.fallBack(body);
        }
        if (!panel.cut(reason)) return;
        await backoff(panel);
        if (this.abort.signal.aborted || !this.live) return;
        [url, init] = this.resumeRequest();
      }
    }

    framing() {
      return this.format === "sse" ? new SSEFraming() : new NDJSONFraming();
    }

    fallBack(body) {
      const next = new FetchClient(this.panel, this.fallback.transport, this.fallback);
      this.panel.fellBack(this.transport, next.transport);
      this.panel.client = next;
      return next.start(body);
    }

    async read(resp) {
      const panel = this.panel;
      const framing = this.framing();
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        if (!this.live) return reader.cancel();
        panel.addBytes(value.byteLength);
        for (const ev of framing.feed(decoder.decode(value, { stream: true }))) {
          if (ev.type === "done" && ev.text !== undefined) ev.sha256 = await sha256Hex(ev.text);
          panel.event(ev);
          if (panel.ended) return reader.cancel();
        }
      }
    }

    cancel() {
      // A lost connection is not a cancel (the server keeps generating for a grace, so a client can
      // resume): abort the read, and stop the generation by the abort endpoint.
      this.abort.abort();
      abortStream(this.id);
      this.panel.cancelled("cancelled (fetch aborted, POST cancel)");
    }

    detach() {
      this.abort.abort();
    }
  }

  // 5. OpenAI's Responses API: a streamed background response; after a cut, GET it again from the
  // last sequence number (seq + 3); POST …/cancel stops it.
  class ResponsesClient extends FetchClient {
    constructor(panel) {
      super(panel, "responses");
    }

    firstRequest(body) {
      const request = { input: body.prompt, max_output_tokens: body.max_tokens, stream: true, background: true,
                        seed: body.seed, sim: body.sim };
      return ["/v1/responses", jsonInit(request)];
    }

    resumeRequest() {
      const id = encodeURIComponent(this.panel.streamId);
      return [`/v1/responses/resp_${id}?stream=true&starting_after=${this.panel.lastSeq + OFFSET}`, {}];
    }

    framing() {
      return new ResponsesFraming();
    }

    cancel() {
      // A background response runs on when its connection closes: only the cancel endpoint stops it.
      this.abort.abort();
      if (this.id) fetch(`/v1/responses/resp_${encodeURIComponent(this.id)}/cancel`, { method: "POST", keepalive: true }).catch(() => {});
      this.panel.cancelled("cancelled (fetch aborted, POST …/cancel)");
    }
  }

  // 4. WebSocket: `start`, `cancel`, and after a cut a new socket sends `resume`. Where the path
  // refuses WebSocket (or cuts it before any token, twice), the panel falls back to fetch + SSE,
  // then fetch + NDJSON, resuming the same stream.
  class WebSocketClient extends Client {
    constructor(panel) {
      super(panel);
      this.ws = null;
      this.fallback = new Fallback(NAMES.fallback);
    }

    get transport() {
      return "ws";
    }

    start(body) {
      this.body = body;
      this.open({ type: "start", ...body });
    }

    open(first) {
      const panel = this.panel;
      const ws = (this.ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`));
      const tokens = panel.tokens;
      let opened = 0;  // when the upgrade passed
      const lost = async (reason) => {
        if (this.ws !== ws || !this.live || panel.ended) return;
        this.ws = null;
        panel.watch(null);
        // Never opened: the path refused the upgrade. Opened, but no token came: barren.
        const barren = () => this.fallback.ended(panel.tokens > tokens, performance.now() - opened);
        if (!opened) panel.flag(`upgrade refused (${reason})`);
        if (opened ? barren() : this.fallback.refused()) {
          const next = new FetchClient(panel, this.fallback.transport, this.fallback);
          panel.fellBack(this.transport, next.transport);
          panel.client = next;
          return next.start(this.body);
        }
        if (panel.streamId === null && opened) {
          // Cut before even `meta` came (a busy server, a proxy that cuts at once): start again.
          if (++panel.tries > MAX_TRIES) return panel.end("cut", "cut", reason, `cut before the stream started: ${reason}`);
          await backoff(panel);
          if (!panel.ended && this.live) this.open(first);
          return;
        }
        if (!panel.cut(reason)) return;
        await backoff(panel);
        if (!panel.ended && this.live) this.open({ type: "resume", stream_id: panel.streamId, after: panel.lastSeq });
      };
      ws.onopen = () => {
        opened = performance.now();
        panel.watch(() => {
          ws.close();  // a half-open socket would wait for the closing handshake: resume without it
          lost(`no byte for ${READ_TIMEOUT_MS / 1000} s`);
        });
        ws.send(JSON.stringify(first));
      };
      ws.onmessage = (e) => {
        if (this.ws !== ws || !this.live) return;
        panel.addBytes(utf8.encode(e.data).length);
        const ev = JSON.parse(e.data);
        if (ev.type === "error" && ev.seq === -1) panel.fail(ev.code, ev.message);  // about the socket
        else panel.event(ev);
        if (panel.ended) ws.close(1000);
      };
      ws.onclose = (e) => lost(`socket closed (${e.code})`);
    }

    cancel() {
      const ws = this.ws;
      if (ws && ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify({ type: "cancel" }));  // the `cancelled` error event follows
      } else {
        this.ws = null;
        if (ws) ws.close();
        this.panel.cancelled("cancelled before the socket was open");
      }
    }

    detach() {
      const ws = this.ws;
      this.ws = null;
      if (ws) ws.close(1000);  // after a `cancel` just sent: it still goes out first
    }
  }

  const CLIENTS = {
    sse_get: (p) => new EventSourceClient(p),
    sse_post: (p) => new FetchClient(p, "sse_post"),
    ndjson: (p) => new FetchClient(p, "ndjson"),
    ws: (p) => new WebSocketClient(p),
    responses: (p) => new ResponsesClient(p),
  };

  // ---------------------------------------------------------------------------------------------
  // The page.

  // Which path this page came by, and its HTTP version (what the browser negotiated).
  const nav = performance.getEntriesByType("navigation")[0];
  document.getElementById("path").textContent =
    `path: ${location.origin} over ${(nav && nav.nextHopProtocol) || "an unknown protocol"}`;

  const form = document.getElementById("controls");
  const cancelButton = document.getElementById("cancel");
  const formError = document.getElementById("form-error");
  const panels = Array.from(document.querySelectorAll(".panel"), (s) => new Panel(s, onPanelEnd));

  function onPanelEnd() {
    if (panels.every((p) => p.ended)) cancelButton.disabled = true;
  }

  function requestBody() {
    const n = (name) => Number(form.elements[name].value);
    const sim = { ttft_ms: n("ttft_ms"), itl_ms: n("itl_ms") };
    const fault = form.elements.fault.value;
    if (fault === "drop") sim.drop_after = n("fault_after");
    if (fault === "fail") sim.fail_after = n("fault_after");
    return { prompt: form.elements.prompt.value, max_tokens: n("max_tokens"), seed: n("seed"), sim };
  }

  function start() {
    if (!form.reportValidity()) return;
    formError.hidden = true;
    cancelAll();
    for (const panel of panels) {
      if (panel.client) panel.client.detach();
    }
    const body = requestBody();
    const t0 = performance.now();
    for (const panel of panels) {
      panel.reset(t0);
      const client = (panel.client = CLIENTS[panel.kind](panel));
      (async () => client.start(body))().catch((e) => panel.fail("client", String(e)));
    }
    cancelButton.disabled = false;
  }

  function cancelAll() {
    for (const panel of panels) {
      if (panel.client && !panel.ended) panel.client.cancel();
    }
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    start();
  });
  form.elements.prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      start();
    }
  });
  cancelButton.addEventListener("click", cancelAll);
  // Leaving the page: stop the generations (closing a connection would leave them running for the grace).
  window.addEventListener("pagehide", cancelAll);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !cancelButton.disabled) cancelAll();
  });

  // For tests and the curious: demo.state() in the console.
  window.demo = {
    state: () => panels.map((p) => p.snapshot()),
    settled: () => panels.every((p) => p.hashed),
    render: (text) => md.render(text),
  };
})();
