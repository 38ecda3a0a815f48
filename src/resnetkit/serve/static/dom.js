// DOM helpers. Every string handed to them becomes a text node or an attribute value set
// with setAttribute: server data never passes through an HTML parser (no innerHTML).

const SVG_NS = "http://www.w3.org/2000/svg";

function setAttributes(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      for (const [k, v] of Object.entries(value)) node.dataset[k] = String(v);
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

function appendChildren(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An HTML element: el("td", {class: "num"}, "3.2 ms"). Strings become text nodes. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttributes(node, attrs);
  appendChildren(node, children);
  return node;
}

/** An SVG element, the same way. */
export function svgEl(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttributes(node, attrs);
  appendChildren(node, children);
  return node;
}

/** Replace everything inside ``container`` with ``children``. */
export function fill(container, ...children) {
  container.replaceChildren();
  appendChildren(container, children);
  return container;
}

/** The element with this id (an error that names it when the page lacks it). */
export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`the page has no element #${id}`);
  return node;
}

/** A readable message line, for a panel whose data could not be shown. */
export function errorLine(message) {
  return el("p", { class: "error", role: "alert" }, message);
}

/** A muted line, for a panel with nothing to show. */
export function emptyLine(message) {
  return el("p", { class: "empty" }, message);
}

/** A small coloured label: badge("ready", "ok"). */
export function badge(text, kind = "neutral") {
  return el("span", { class: `badge badge-${kind}` }, text);
}

/** A table from a header row and rows of cells (strings or nodes). */
export function table(headers, rows, attrs = {}) {
  return el(
    "table",
    attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el(
      "tbody",
      {},
      rows.map((cells) => el("tr", {}, cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c))))),
    ),
  );
}
