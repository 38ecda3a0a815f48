// Number and time formatting for the page.

/** Seconds as milliseconds: "3.2 ms" ("–" for none). */
export function ms(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const value = seconds * 1000;
  return `${value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2)} ms`;
}

/** A share as a percentage: "1.5%" ("–" for none). */
export function pct(share, digits = 1) {
  if (share === null || share === undefined || !Number.isFinite(share)) return "–";
  return `${(share * 100).toFixed(digits)}%`;
}

/** Requests per second: "12.5 req/s". */
export function rps(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  return `${value >= 100 ? value.toFixed(0) : value.toFixed(1)} req/s`;
}

/** A number with a few significant digits ("–" for none). */
export function num(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  const n = Number(value);
  if (!Number.isFinite(n)) return String(value);
  if (n !== 0 && (Math.abs(n) < 1e-3 || Math.abs(n) >= 1e5)) return n.toExponential(2);
  return String(Number(n.toPrecision(digits)));
}

/** An ISO timestamp in the viewer's local time: "2026-12-03 10:51:31". */
export function when(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso ?? "–");
  const pad = (n) => String(n).padStart(2, "0");
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
  );
}

/** A version reference "v3", or "–". */
export function version(v) {
  return v === null || v === undefined ? "–" : `v${v}`;
}
