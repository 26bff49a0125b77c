"""The report page's inline style and script (reproduce.report writes them into every page).

The script renders the answer browser from the JSON in <script id=report-answers> (or the gzipped
sidecar the meta block names) with text nodes only: answers are untrusted and never parsed as HTML.
Data layout: see reproduce.report.answer_data.
"""

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5rem 3rem;color:#222}
body>header{border-bottom:1px solid #ccc;padding:.5rem 0}
h1{font-size:1.3rem;margin:.3rem 0} h2{font-size:1.1rem;margin-top:1.6rem}
nav a{margin-right:1em}
table{border-collapse:collapse;margin:.4rem 0 1.2rem;font-size:13px}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
thead th{background:#f3f3f3}
table.results td{white-space:nowrap} table.results td.note{white-space:normal;min-width:12em}
caption{text-align:left;font-weight:600;padding:4px 0}
.ci,.note,.words{color:#666;font-size:12px}
.proxy{color:#7a4100;background:#fff1dc;padding:0 4px;font-weight:600}
.paper{color:#a00000}
figure{margin:.6rem 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#666;font-size:12px}
table.kv{margin:.2rem 0} table.kv th{background:#f7f7f7;font-weight:500}
details{margin:.2rem 0} summary{cursor:pointer}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font:12px/1.35 ui-monospace,monospace}
#filters{position:sticky;top:0;background:#fff;padding:.5rem 0;z-index:2;display:flex;gap:1rem;
  flex-wrap:wrap;align-items:center;border-bottom:1px solid #ddd}
#filters input[type=search]{width:18rem}
.pager{margin:.5rem 0} .pager button{margin-right:.3rem}
.card{border:1px solid #ccc;border-left:8px solid #1f4e79;margin:.8rem 0;padding:.4rem .6rem}
.card>header{font-size:13px;margin-bottom:.3rem}
.suite{font-weight:600}
.prompt pre{background:#f4f8fc;border:1px solid #dde6ef;padding:4px;max-height:16em;overflow:auto}
.answers{display:grid;gap:.6rem;overflow-x:auto;margin-top:.4rem}
.answer h4,.prompt h4{margin:.2rem 0;font-size:13px}
.answer pre{max-height:24em;overflow:auto;background:#fafafa;border:1px solid #eee;padding:4px}
.answer.teacher pre{background:#f5f3fb}
table.verdicts{font-size:12px;margin:.3rem 0;width:100%}
.o-win{background:#dff2dc}.o-loss{background:#f9dede}.o-tie{background:#e6e9fb}.o-failed{background:#e8e8e8}
.badge{padding:0 4px;margin-right:4px;border-radius:3px;font-size:12px;display:inline-block}
.fail{color:#a00000}
.details{font-size:11px} .kv{margin-right:.6em;display:inline-block} .k{color:#666}
table.verdicts td:first-child{white-space:nowrap;color:#555}
"""

JS = r"""
"use strict";
(() => {
const $ = (id) => document.getElementById(id);
const META = JSON.parse($("report-meta").textContent);
// one prompt: [suite index, id, prompt, reference, teacher answer, teacher words, answers, words, verdicts]
const P_SUITE = 0, P_ID = 1, P_PROMPT = 2, P_REF = 3, P_TEACHER = 4, P_TWORDS = 5, P_ANS = 6, P_WORDS = 7,
      P_VERD = 8;
const state = {suite: "", method: "", judge: "", outcome: "", q: "", page: 1};
let D = null, hay = [], matched = [];

// every string goes in as a text node: answers are untrusted
function el(tag, cls, ...kids) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}
const txt = (x) => x == null ? "" : typeof x === "string" ? x : JSON.stringify(x);

function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  for (const k of Object.keys(state)) if (h.has(k)) state[k] = k === "page" ? (parseInt(h.get(k)) || 1) : h.get(k);
  const known = {suite: D.suites, method: D.methods, judge: D.judges.map(j => j.name),
                 outcome: [...META.outcomes, "inconsistent"]};
  for (const [k, vals] of Object.entries(known)) if (!vals.includes(state[k])) state[k] = "";
}
function writeHash() {
  const h = new URLSearchParams();
  for (const [k, v] of Object.entries(state)) if (v && !(k === "page" && v === 1)) h.set(k, v);
  const s = h.toString();
  history.replaceState(null, "", s ? "#" + s : location.pathname + location.search);
}

function select(name, label, options) {
  const s = el("select");
  s.id = "f-" + name;
  for (const [v, t] of options) { const o = el("option", null, t); o.value = v; s.append(o); }
  s.value = state[name];
  s.addEventListener("change", () => { state[name] = s.value; state.page = 1; update(); });
  return el("label", null, label + " ", s);
}
function buildFilters() {
  const q = el("input");
  q.type = "search"; q.id = "f-q"; q.placeholder = "search ids, prompts and answers"; q.value = state.q;
  let timer;
  q.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.q = q.value; state.page = 1; update(); }, 150);
  });
  $("filters").replaceChildren(
    select("suite", "suite", [["", "all"], ...D.suites.map(s => [s, s])]),
    select("method", "method", [["", "all"], ...D.methods.map(m => [m, m])]),
    select("judge", "judge", [["", "all"], ...D.judges.map(j => [j.name, j.name + (j.proxy ? " (proxy)" : "")])]),
    select("outcome", "outcome", [["", "any"], ...META.outcomes.map(o => [o, o]), ["inconsistent", "orders disagree"]]),
    el("label", null, "search ", q));
}

const methodIdx = () => state.method ? [D.methods.indexOf(state.method)] : D.methods.map((_, i) => i);
const judgeIdx = () => state.judge ? [D.judges.findIndex(j => j.name === state.judge)] : D.judges.map((_, i) => i);
const hit = (v) => state.outcome === "inconsistent" ? v[1] === false : v[0] === state.outcome;
function haystack(i) {
  if (hay[i] === undefined) {
    const p = D.prompts[i];
    hay[i] = [p[P_ID], p[P_PROMPT], p[P_TEACHER], ...p[P_ANS]].map(txt).join("\n").toLowerCase();
  }
  return hay[i];
}
function filter() {
  const ms = methodIdx(), js = judgeIdx(), q = state.q.trim().toLowerCase();
  matched = [];
  D.prompts.forEach((p, i) => {
    if (state.suite && D.suites[p[P_SUITE]] !== state.suite) return;
    if (state.method && p[P_ANS][ms[0]] == null && !p[P_VERD][ms[0]].some(v => v)) return;
    if (state.outcome && !ms.some(m => js.some(j => p[P_VERD][m][j] && hit(p[P_VERD][m][j])))) return;
    if (q && !haystack(i).includes(q)) return;
    matched.push(i);
  });
}

function verdictText(v, order) {
  if (v == null) return "no verdict";
  const who = order === "student_first" ? {A: "student", B: "teacher"} : {A: "teacher", B: "student"};
  return who[v] ? `${v} (${who[v]})` : v;
}
const fmt = (v) => Array.isArray(v) ? v.map(fmt).join(", ")
  : v && typeof v === "object" ? Object.entries(v).map(([k, x]) => `${k}: ${fmt(x)}`).join(", ") : txt(v);
function details(obj) {
  const box = el("div", "details");
  for (const [k, v] of Object.entries(obj || {})) {
    const t = fmt(v);
    box.append(el("span", "kv", el("span", "k", k + " "), t.length <= 160 ? t
      : el("details", null, el("summary", null, t.slice(0, 60) + "..."), el("pre", null, t))));
  }
  return box;
}
// per judge: a heading row with the outcome, then one row per answer order
function verdictTable(p, m, js) {
  const t = el("table", "verdicts");
  for (const j of js) {
    const v = p[P_VERD][m][j], name = D.judges[j].name + (D.judges[j].proxy ? " (proxy)" : "");
    if (!v) { t.append(el("tr", null, el("th", null, name + ": not judged"))); continue; }
    const head = el("th", "o-" + v[0], `${name}: ${v[0]}`, v[1] === false ? " (orders disagree)" : null,
                    v[2] ? el("div", "fail", v[2]) : null);
    head.colSpan = 3;
    t.append(el("tr", null, head));
    for (const [k, order, label] of [[3, "student_first", "student first"], [6, "teacher_first", "teacher first"]])
      t.append(el("tr", null, el("td", null, label), el("td", null, el("b", null, verdictText(v[k], order))),
        el("td", null, v[k + 1] ? el("div", "fail", v[k + 1]) : null, details(v[k + 2]))));
  }
  return t;
}
function answerCol(title, words, text, cls) {
  return el("section", "answer " + cls,
    el("h4", null, title, el("span", "words", words == null ? " (no answer)" : ` (${words} words)`)),
    el("pre", null, txt(text)));
}
function card(i) {
  const p = D.prompts[i], ms = methodIdx(), js = judgeIdx();
  const badges = el("span", "badges");
  for (const m of ms) for (const j of js) {
    const v = p[P_VERD][m][j];
    if (v) badges.append(el("span", "badge o-" + v[0], D.methods[m] + (js.length > 1 ? "/" + D.judges[j].name : "") + ": " + v[0]));
  }
  const cols = el("div", "answers", answerCol("teacher", p[P_TWORDS], p[P_TEACHER], "teacher"));
  for (const m of ms) {
    const c = answerCol(D.methods[m], p[P_WORDS][m], p[P_ANS][m], "method");
    c.dataset.method = D.methods[m];
    c.append(verdictTable(p, m, js));
    cols.append(c);
  }
  cols.style.gridTemplateColumns = `repeat(${1 + ms.length}, minmax(18rem, 1fr))`;
  const c = el("article", "card",
    el("header", null, el("span", "suite", D.suites[p[P_SUITE]]), " ", el("code", null, txt(p[P_ID])), " ", badges),
    el("div", "prompt", el("h4", null, "prompt"),
       el("pre", null, p[P_PROMPT] == null ? "(prompt not in the answer files)" : txt(p[P_PROMPT]))),
    p[P_REF] ? el("details", "reference", el("summary", null, "reference answer"), el("pre", null, txt(p[P_REF]))) : null,
    cols);
  c.dataset.id = txt(p[P_ID]);
  c.dataset.suite = D.suites[p[P_SUITE]];
  return c;
}

function pager(host) {
  const pages = Math.max(1, Math.ceil(matched.length / META.page_size));
  const btn = (label, page) => {
    const b = el("button", null, label);
    b.disabled = page < 1 || page > pages || page === state.page;
    b.addEventListener("click", () => { state.page = page; update(); $("answers").scrollIntoView(); });
    return b;
  };
  host.className = "pager";
  host.replaceChildren(btn("first", 1), btn("prev", state.page - 1),
    el("span", "count", ` page ${state.page} of ${pages}: ${matched.length} of ${D.prompts.length} prompts match `),
    btn("next", state.page + 1), btn("last", pages));
}
function update() {
  filter();
  const pages = Math.max(1, Math.ceil(matched.length / META.page_size));
  state.page = Math.min(Math.max(1, state.page), pages);
  const start = (state.page - 1) * META.page_size;
  $("cards").replaceChildren(...matched.slice(start, start + META.page_size).map(card));
  $("cards").dataset.matched = matched.length;
  pager($("pager"));
  pager($("pager-bottom"));
  writeHash();
}
function start(data) {
  D = data; hay = [];
  readHash();
  buildFilters();
  update();
}

async function parse(buf) {
  const b = new Uint8Array(buf);
  const text = b[0] === 0x1f && b[1] === 0x8b  // gzip, unless the server already decoded it
    ? await new Response(new Blob([buf]).stream().pipeThrough(new DecompressionStream("gzip"))).text()
    : new TextDecoder().decode(buf);
  return JSON.parse(text);
}
async function loadSidecar() {
  const st = $("browser-status"), mb = (META.sidecar_bytes / 1e6).toFixed(1);
  st.textContent = `This run's answers are in ${META.sidecar} (${mb} MB, gzip) beside this page; loading...`;
  try {
    const r = await fetch(META.sidecar);
    if (!r.ok) throw new Error("HTTP " + r.status);
    start(await parse(await r.arrayBuffer()));
    st.textContent = `Answers loaded from the sidecar ${META.sidecar} (${mb} MB, gzip).`;
  } catch (e) {
    const input = el("input");
    input.type = "file"; input.id = "sidecar-file"; input.accept = ".gz,.json";
    input.addEventListener("change", async () => {
      try {
        start(await parse(await input.files[0].arrayBuffer()));
        st.textContent = `Answers loaded from ${input.files[0].name}.`;
      } catch (err) { st.append(el("p", "fail", "could not read that file: " + err)); }
    });
    st.replaceChildren(el("p", null, `This run's answers are in the sidecar ${META.sidecar} (${mb} MB, gzip) ` +
      `beside this page, which stays small. A page opened from disk may not read it by itself (${e.message || e}): ` +
      "choose the file here, or serve this folder (python -m http.server) and open the page from there. "), input);
  }
}

if (!$("cards")) return;  // no run folder: the page says so
const inline = JSON.parse($("report-answers").textContent);
if (inline) start(inline); else if (META.sidecar) loadSidecar();
})();
"""
