// The image of a chat request as bytes: a base64 data URL decoded, or an http(s) URL fetched, only from the
// hosts the operator listed (API_IMAGE_HOSTS) and with the adapters' careful download (every redirect
// checked, size cap, timeout). Whether the bytes are an image is the conversation manager's check.
import { DownloadFailure, plainUrl, safeDownload } from '../shared/download.js';
import { formatBytes } from '../../src/util/bytes.js';
import { ApiError, badRequest } from './errors.js';
import type { ImageSource } from './request.js';

export interface ImageFetchOptions {
  /** host names (`example.com`), host:port, or `*.example.com` for its subdomains; empty: no URL is fetched */
  allowedHosts: readonly string[];
  maxBytes: number;
  timeoutMs?: number;
  signal?: AbortSignal;
}

const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/;

export const tooLarge = (size: number, max: number): ApiError =>
  new ApiError(
    413,
    'invalid_request_error',
    'image_too_large',
    `The image is too large (${formatBytes(size)}): the limit is ${formatBytes(max)}.`,
    'messages',
  );

/** Whether `url` is on the allow-list (exact host, host:port, or a `*.` suffix; http(s) only). */
export function imageHostAllowed(url: string, allowed: readonly string[]): boolean {
  const u = plainUrl(url);
  if (!u || (u.protocol !== 'http:' && u.protocol !== 'https:')) return false;
  const host = u.hostname.toLowerCase();
  const hostPort = u.host.toLowerCase();
  return allowed.some((entry) => {
    const e = entry.trim().toLowerCase();
    if (!e) return false;
    if (e.startsWith('*.')) return host.endsWith(e.slice(1)) && host.length > e.length - 1;
    return e === host || e === hostPort;
  });
}

export async function imageBytes(src: ImageSource, opts: ImageFetchOptions): Promise<Uint8Array> {
  if (src.kind === 'data') {
    const b64 = src.base64.replace(/\s+/g, '');
    if (!BASE64_RE.test(b64) || b64.length % 4 === 1)
      throw badRequest('The image data URL is not valid base64.', 'messages', 'invalid_image');
    const size = Math.floor((b64.length * 3) / 4) - (b64.endsWith('==') ? 2 : b64.endsWith('=') ? 1 : 0);
    if (size > opts.maxBytes) throw tooLarge(size, opts.maxBytes);
    return new Uint8Array(Buffer.from(b64, 'base64'));
  }
  const shown = plainUrl(src.url)?.host ?? 'that address';
  if (!imageHostAllowed(src.url, opts.allowedHosts)) {
    throw badRequest(
      `Images are not fetched from ${shown} on this server (allowed hosts: API_IMAGE_HOSTS${opts.allowedHosts.length ? ` = ${opts.allowedHosts.join(', ')}` : ', empty'}); send the image as a data: URL instead.`,
      'messages',
      'image_url_not_allowed',
    );
  }
  try {
    return await safeDownload(src.url, {
      allowed: (u) => imageHostAllowed(u, opts.allowedHosts),
      maxBytes: opts.maxBytes,
      timeoutMs: opts.timeoutMs ?? 15_000,
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
  } catch (err) {
    if (!(err instanceof DownloadFailure)) throw err;
    switch (err.kind) {
      case 'too_large':
        throw tooLarge(err.detail.size ?? opts.maxBytes + 1, opts.maxBytes);
      case 'host':
        throw badRequest(
          `The image at ${shown} redirects to a host that is not allowed (API_IMAGE_HOSTS).`,
          'messages',
          'image_url_not_allowed',
        );
      case 'http':
        throw badRequest(`Downloading the image from ${shown} failed (HTTP ${err.detail.status}).`, 'messages', 'image_download_failed');
      case 'timeout':
        throw badRequest(`Downloading the image from ${shown} timed out.`, 'messages', 'image_download_failed');
      default:
        throw badRequest(`Downloading the image from ${shown} failed (${err.kind}).`, 'messages', 'image_download_failed');
    }
  }
}
