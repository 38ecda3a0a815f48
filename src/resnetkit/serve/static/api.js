// Talking to the server: relative URLs (the page works behind a path prefix), and every
// failure turned into an Error with a readable message.

/** An HTTP error answer: the status and the server's {"error": ...} message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

async function errorMessage(response) {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "string") return body.error;
  } catch {
    // not JSON: fall through to the status line
  }
  return `${response.status} ${response.statusText || "error"}`.trim();
}

/**
 * Fetch ``path`` (relative to the page) and return its JSON, or a Blob with as = "blob".
 * Throws ApiError for an error status, Error when the server cannot be reached.
 */
export async function api(path, options = {}, as = "json") {
  let response;
  try {
    response = await fetch(path, { cache: "no-store", ...options });
  } catch (err) {
    throw new Error(`cannot reach the server (${err.message})`);
  }
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  if (as === "blob") return response.blob();
  try {
    return await response.json();
  } catch {
    throw new ApiError(response.status, `the server's answer to ${path} is not JSON`);
  }
}
