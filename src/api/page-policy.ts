/**
 * The HTML pages the API serves (the dashboard, the docs) go out with a Content-Security-Policy
 * that allows exactly their own inline script and style, by hash (no `unsafe-inline`), talks to
 * this origin only, and may not be framed (`frame-ancestors 'none'`, and X-Frame-Options for older
 * browsers): a page that holds an API key must not run anyone else's code nor sit in another site.
 */
import { createHash } from "node:crypto";

/**
 * The headers a static page is served with, computed once from the page itself. `self`: the page
 * also loads scripts and styles from this server (the console's chart library).
 */
export function pageHeaders(html: string, self = false): Record<string, string> {
  const hashes = (tag: string): string[] =>
    [...html.matchAll(new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`, "g"))].map(
      (m) => `'sha256-${createHash("sha256").update(m[1]!).digest("base64")}'`,
    );
  const list = (xs: string[]): string => [...xs, ...(self ? ["'self'"] : [])].join(" ") || "'none'";
  const csp = [
    "default-src 'none'",
    `script-src ${list(hashes("script"))}`,
    `style-src ${list(hashes("style"))}`,
    "connect-src 'self'",
    "img-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join("; ");
  return {
    "content-type": "text/html; charset=utf-8",
    "content-security-policy": csp,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
  };
}
