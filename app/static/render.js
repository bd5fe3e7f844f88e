// Model output as HTML: Markdown (markdown-it 14.1.0), code highlighted (highlight.js 11.12.0, its common
// languages) and TeX between $...$, $$...$$, \(...\) and \[...\] as MathML (KaTeX 0.19.1), all vendored in
// vendor/ and loaded before this module as plain scripts.

// html: false escapes any HTML in the model's output; markdown-it's validateLink drops javascript:,
// vbscript:, file: and non-image data: links. highlight.js escapes the code it colours; KaTeX with
// trust: false renders no links or classes of the author's, and as MathML only it writes no style
// attribute (which the page's Content-Security-Policy would refuse) and needs no fonts. The policy is
// the second line.
const md = window.markdownit({
  html: false,
  linkify: true,
  breaks: true,
  highlight: (code, lang) => {
    if (!lang || !window.hljs.getLanguage(lang)) return ""; // markdown-it escapes it, uncoloured
    return window.hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
  },
});

md.renderer.rules.link_open = (tokens, i, options, env, self) => {
  tokens[i].attrSet("target", "_blank");
  tokens[i].attrSet("rel", "noopener noreferrer");
  return self.renderToken(tokens, i, options);
};

// A formula that does not parse is shown as its source, marked, with KaTeX's reason as its tooltip:
// KaTeX's own error output (throwOnError: false) carries a style attribute that the CSP refuses.
function tex(source, displayMode) {
  try {
    return window.katex.renderToString(source, {
      output: "mathml", displayMode, throwOnError: true, trust: false, strict: "ignore",
    });
  } catch (error) {
    const reason = md.utils.escapeHtml(String(error.message ?? error));
    return `<span class="math-error" title="${reason}">${md.utils.escapeHtml(source)}</span>`;
  }
}

// --- TeX in Markdown --------------------------------------------------------------------------------

const DELIMITERS = [
  { open: "$$", close: "$$", display: true },
  { open: "\\[", close: "\\]", display: true },
  { open: "\\(", close: "\\)", display: false },
  { open: "$", close: "$", display: false },
];

// An inline formula. A single $ must touch its formula on both sides and the closing one may not be
// followed by a digit, so that "costs $5 and $10" stays text. `$` and `\` are among markdown-it's
// terminator characters, so this rule is asked at each of them.
function mathInline(state, silent) {
  const { src, pos } = state;
  const delimiter = DELIMITERS.find((d) => src.startsWith(d.open, pos));
  if (!delimiter) return false;
  const start = pos + delimiter.open.length;
  let end = src.indexOf(delimiter.close, start);
  if (delimiter.open === "$") {
    if (/\s/.test(src[start] ?? " ")) return false;
    while (end > 0 && (src[end - 1] === "\\" || /\s/.test(src[end - 1]) || /\d/.test(src[end + 1] ?? ""))) {
      end = src.indexOf("$", end + 1);
    }
  }
  if (end <= start) return false;
  if (!silent) {
    const token = state.push(delimiter.display ? "math_display" : "math_inline", "math", 0);
    token.content = src.slice(start, end);
  }
  state.pos = end + delimiter.close.length;
  return true;
}

// A formula on lines of its own: $$ or \[ first on a line, its closing delimiter last on that line or a
// later one (blank lines included, which would otherwise end the paragraph).
function mathBlock(state, startLine, endLine, silent) {
  const lineStart = (line) => state.bMarks[line] + state.tShift[line];
  const lineText = (line) => state.src.slice(lineStart(line), state.eMarks[line]);
  if (state.sCount[startLine] - state.blkIndent >= 4) return false;
  const first = lineText(startLine);
  const delimiter = DELIMITERS.find((d) => d.display && first.startsWith(d.open));
  if (!delimiter) return false;
  let body = first.slice(delimiter.open.length);
  let line = startLine;
  let closed = body.trimEnd().endsWith(delimiter.close) && body.trim().length >= delimiter.close.length;
  while (!closed && ++line < endLine) {
    const text = lineText(line);
    body += `\n${text}`;
    closed = text.trimEnd().endsWith(delimiter.close);
  }
  if (!closed) return false; // still streaming, or not a formula: a paragraph, as typed
  if (silent) return true;
  body = body.trimEnd();
  const token = state.push("math_block", "math", 0);
  token.content = body.slice(0, body.length - delimiter.close.length).trim();
  token.map = [startLine, line + 1];
  state.line = line + 1;
  return true;
}

md.inline.ruler.before("escape", "math_inline", mathInline);
md.block.ruler.before("fence", "math_block", mathBlock, { alt: ["paragraph", "reference", "blockquote", "list"] });
md.renderer.rules.math_inline = (tokens, i) => tex(tokens[i].content, false);
md.renderer.rules.math_display = (tokens, i) => tex(tokens[i].content, true);
md.renderer.rules.math_block = (tokens, i) => `<div class="math-block">${tex(tokens[i].content, true)}</div>\n`;

export function renderMarkdown(text) {
  return md.render(text);
}

// Renders `text` into `element`, each code block with its Copy button (made here, never from the HTML).
export function renderInto(element, text) {
  element.innerHTML = renderMarkdown(text);
  for (const pre of element.querySelectorAll("pre")) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy-code";
    button.textContent = "Copy";
    button.title = "Copy this code";
    pre.prepend(button);
  }
}
