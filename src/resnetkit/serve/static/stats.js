// Pure functions over /v1/stats bodies: rates and latency quantiles from the differences
// between two polls. No DOM here, so the browser test can check them against the server's
// own Python implementation.

/** The series /v1/stats reports for requests no model answered (health checks, this page). */
export const OTHER_ROUTES = "-";

/** "name:version", the key of one served version. */
export function versionKey(entry) {
  return `${entry.model}:${entry.version}`;
}

/** [[bound, cumulative]] with "+Inf" turned into Infinity, sorted by bound. */
export function parseBuckets(raw) {
  return (raw || [])
    .map(([bound, count]) => [bound === "+Inf" ? Infinity : Number(bound), Number(count)])
    .sort((a, b) => a[0] - b[0]);
}

/**
 * The ``q`` quantile of cumulative buckets, as Prometheus' histogram_quantile estimates it:
 * linear within the bucket holding the rank; the largest finite bound when the rank falls
 * in the +Inf bucket; null without observations.
 */
export function quantileFromBuckets(q, buckets) {
  if (!buckets.length || buckets[buckets.length - 1][1] <= 0) return null;
  const rank = q * buckets[buckets.length - 1][1];
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [bound, count] of buckets) {
    if (count >= rank) {
      if (bound === Infinity) return lowerBound;
      const share = count > lowerCount ? (rank - lowerCount) / (count - lowerCount) : 1;
      return lowerBound + (bound - lowerBound) * share;
    }
    lowerBound = bound;
    lowerCount = count;
  }
  return lowerBound;
}

/** Cumulative buckets ``current - previous``, by bound; null after a counter reset. */
export function bucketDelta(previous, current) {
  const before = new Map(previous.map(([bound, count]) => [bound, count]));
  const out = [];
  for (const [bound, count] of current) {
    const delta = count - (before.get(bound) ?? 0);
    if (delta < 0) return null;
    out.push([bound, delta]);
  }
  return out;
}

/** Several cumulative bucket lists summed by bound (the same bounds for every version). */
export function sumBuckets(lists) {
  const total = new Map();
  for (const list of lists) {
    for (const [bound, count] of list) total.set(bound, (total.get(bound) ?? 0) + count);
  }
  return [...total.entries()].sort((a, b) => a[0] - b[0]);
}

function modelEntries(stats) {
  return (stats?.models || []).filter((m) => m.model !== OTHER_ROUTES);
}

/**
 * What happened between two /v1/stats bodies ``seconds`` apart, over every served version
 * (not the "-" series, which counts this page's own polling):
 * ``{seconds, requests, errors, clientErrors, rps, perVersion: {key: rps}, buckets}``.
 * A version missing from ``previous`` counts from zero (it was loaded in between); one whose
 * counters went backwards (a restart) is left out of this interval.
 */
export function intervalBetween(previous, current, seconds) {
  const before = new Map(modelEntries(previous).map((m) => [versionKey(m), m]));
  const out = { seconds, requests: 0, errors: 0, clientErrors: 0, perVersion: {}, buckets: [] };
  const deltas = [];
  for (const entry of modelEntries(current)) {
    const prev = before.get(versionKey(entry));
    const requests = entry.requests - (prev?.requests ?? 0);
    const errors = entry.errors - (prev?.errors ?? 0);
    const clientErrors = entry.client_errors - (prev?.client_errors ?? 0);
    const buckets = bucketDelta(parseBuckets(prev?.latency_buckets), parseBuckets(entry.latency_buckets));
    if (requests < 0 || errors < 0 || clientErrors < 0 || buckets === null) continue;
    out.requests += requests;
    out.errors += errors;
    out.clientErrors += clientErrors;
    out.perVersion[versionKey(entry)] = seconds > 0 ? requests / seconds : 0;
    deltas.push(buckets);
  }
  out.rps = seconds > 0 ? out.requests / seconds : 0;
  out.buckets = sumBuckets(deltas);
  return out;
}

/** Latency and error figures of one interval, or of several summed (null: no requests). */
export function summarize(intervals) {
  const requests = intervals.reduce((n, i) => n + i.requests, 0);
  const errors = intervals.reduce((n, i) => n + i.errors, 0);
  const clientErrors = intervals.reduce((n, i) => n + i.clientErrors, 0);
  const seconds = intervals.reduce((n, i) => n + i.seconds, 0);
  const buckets = sumBuckets(intervals.map((i) => i.buckets));
  return {
    requests,
    rps: seconds > 0 ? requests / seconds : 0,
    p50: quantileFromBuckets(0.5, buckets),
    p95: quantileFromBuckets(0.95, buckets),
    errorRate: requests > 0 ? errors / requests : null,
    clientErrorRate: requests > 0 ? clientErrors / requests : null,
  };
}

/** Batches per bucket, summed over the served versions: [[label, count], ...]. */
export function batchDistribution(stats) {
  const totals = new Map();
  for (const entry of modelEntries(stats)) {
    for (const [bound, count] of Object.entries(entry.batch_sizes || {})) {
      totals.set(bound, (totals.get(bound) ?? 0) + Number(count));
    }
  }
  const bounds = [...totals.keys()].sort((a, b) => boundValue(a) - boundValue(b));
  let lower = 0;
  return bounds.map((bound) => {
    const label = batchLabel(lower, bound);
    lower = boundValue(bound);
    return [label, totals.get(bound)];
  });
}

function boundValue(bound) {
  return bound === "+Inf" ? Infinity : Number(bound);
}

function batchLabel(lower, bound) {
  if (bound === "+Inf") return `>${lower}`;
  const upper = Number(bound);
  return upper - lower <= 1 ? String(upper) : `${lower + 1}–${upper}`;
}

/** Where each alias of a model points now, replaying its audit log: {alias: version}. */
export function currentAliases(events) {
  const aliases = {};
  for (const event of [...(events || [])].sort((a, b) => a.id - b.id)) {
    if (event.kind === "remove" || event.to_version === null || event.to_version === undefined) {
      delete aliases[event.alias];
    } else {
      aliases[event.alias] = event.to_version;
    }
  }
  return aliases;
}
