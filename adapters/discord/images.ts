// Where a Discord message's image is (attachments, image embeds, Discord CDN links) and a careful download:
// Discord's CDN hosts only (plus the configured API host, for tests against a fake Discord), a size cap, a
// timeout, redirects followed only to allowed hosts, and the bytes checked to be PNG, JPEG, WebP or GIF.
import type { Attachment, Embed } from 'discord.js';
import { DownloadFailure, plainUrl, safeDownload } from '../shared/download.js';
import { formatBytes } from '../../src/util/bytes.js';
import { shownName } from './format.js';
import { LIMITS } from '../../src/conversation/limits.js';

/** Discord's CDN hosts: attachments and Discord's media proxy. */
export const DISCORD_CDN_HOSTS: readonly string[] = ['cdn.discordapp.com', 'media.discordapp.net'];

export const DEFAULT_MAX_IMAGE_BYTES = LIMITS.imageBytes;
export const DEFAULT_DOWNLOAD_TIMEOUT_MS = 15_000;
const MAX_REDIRECTS = 3;

const IMAGE_TYPES = new Set(['image/png', 'image/jpeg', 'image/jpg', 'image/webp', 'image/gif']);
const IMAGE_EXT_RE = /\.(png|jpe?g|webp|gif)$/i;
const URL_RE = /https?:\/\/[^\s<>()]+/gi;

/** A bad input the user should hear about: `message` is the reply. */
export class ImageInputProblem extends Error {
  constructor(
    readonly kind: 'not_image' | 'too_large' | 'download' | 'timeout' | 'host',
    message: string,
  ) {
    super(message);
  }
}

export interface ImageSource {
  url: string;
  /** shown in replies */
  name: string;
  /** what Discord says the file has (attachments) */
  size?: number;
  where: 'attachment' | 'embed' | 'link';
  /** the attachment's id (attachments) */
  id?: string;
}

export interface DownloadPolicy {
  /** host names (or host:port) images may come from */
  hosts: ReadonlySet<string>;
  /** of those, the ones plain http is allowed for (the configured test API on loopback) */
  insecureHosts: ReadonlySet<string>;
  maxBytes: number;
  timeoutMs: number;
}

/** The download policy: Discord's CDN over https, plus `apiUrl`'s host with its own scheme. */
export function downloadPolicy(opts: { apiUrl?: string; maxBytes?: number; timeoutMs?: number } = {}): DownloadPolicy {
  const hosts = new Set(DISCORD_CDN_HOSTS);
  const insecureHosts = new Set<string>();
  if (opts.apiUrl) {
    const u = new URL(opts.apiUrl);
    hosts.add(u.host);
    if (u.protocol === 'http:') insecureHosts.add(u.host);
  }
  return {
    hosts,
    insecureHosts,
    maxBytes: opts.maxBytes ?? DEFAULT_MAX_IMAGE_BYTES,
    timeoutMs: opts.timeoutMs ?? DEFAULT_DOWNLOAD_TIMEOUT_MS,
  };
}

/** Whether a URL may be fetched under the policy. */
export function allowedUrl(url: string, policy: DownloadPolicy): boolean {
  const u = plainUrl(url);
  if (!u) return false;
  // `host` carries the port when it is not the scheme's default: Discord's CDN only on the default https
  // port, the configured API host only on its own port (never another service on the same machine).
  const host = u.host.toLowerCase();
  if (!policy.hosts.has(host)) return false;
  // a host configured with plain http (the test API) only with http, every other one only with https
  return u.protocol === (policy.insecureHosts.has(host) ? 'http:' : 'https:');
}

/** The URL without its query (Discord CDN signatures) for logs. */
export function urlForLog(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return '(invalid URL)';
  }
}

function isImageAttachment(a: Attachment): boolean | null {
  const ct = a.contentType?.split(';')[0].trim().toLowerCase();
  if (ct) return IMAGE_TYPES.has(ct);
  return IMAGE_EXT_RE.test(a.name ?? '') ? true : null;
}

function embedImage(e: Embed, policy: DownloadPolicy): string | undefined {
  for (const m of [e.image, e.thumbnail]) {
    if (!m) continue;
    if (m.url && allowedUrl(m.url, policy)) return m.url;
    if (m.proxyURL && allowedUrl(m.proxyURL, policy)) return m.proxyURL;
  }
  return undefined;
}

/** What images are found in: a message, or just an interaction's attachment option. */
export interface ImageCarrier {
  attachments: { values(): Iterable<Attachment> };
  embeds: readonly Embed[];
  content: string;
}

/**
 * The message's image: its first image attachment, else an image embed, else a Discord CDN link in the
 * text. Attachments that are not images are reported when there is no image at all.
 */
export function findImage(msg: ImageCarrier, policy: DownloadPolicy): { source?: ImageSource; rejected?: string } {
  let rejected: string | undefined;
  for (const a of msg.attachments.values()) {
    const ok = isImageAttachment(a);
    if (ok === false || ok === null) {
      rejected ??= a.name ?? 'attachment';
      continue;
    }
    return { source: { url: a.url, name: a.name ?? 'image', size: a.size, where: 'attachment', id: a.id } };
  }
  for (const e of msg.embeds) {
    const url = embedImage(e, policy);
    if (url) return { source: { url, name: new URL(url).pathname.split('/').pop() || 'image', where: 'embed' } };
  }
  for (const m of msg.content.matchAll(URL_RE)) {
    const url = m[0].replace(/[.,;:!?'"]+$/, '');
    if (allowedUrl(url, policy))
      return { source: { url, name: decodeURIComponent(new URL(url).pathname.split('/').pop() || 'image'), where: 'link' } };
  }
  return rejected ? { rejected } : {};
}

export const NOT_AN_IMAGE = (name: string) => `I can only read images (PNG, JPEG, WebP or GIF), and ${shownName(name)} is not one.`;

/** PNG, JPEG, GIF or WebP by their magic bytes. */
export function sniffImage(b: Uint8Array): 'png' | 'jpeg' | 'gif' | 'webp' | null {
  if (b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) return 'png';
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'jpeg';
  if (b.length >= 6 && b[0] === 0x47 && b[1] === 0x49 && b[2] === 0x46 && b[3] === 0x38) return 'gif';
  if (b.length >= 12 && String.fromCharCode(...b.subarray(0, 4)) === 'RIFF' && String.fromCharCode(...b.subarray(8, 12)) === 'WEBP')
    return 'webp';
  return null;
}

/** Downloads an image under the policy; problems the user should hear about are ImageInputProblem. */
export async function downloadImage(source: ImageSource, policy: DownloadPolicy, signal?: AbortSignal): Promise<Uint8Array> {
  const tooLarge = (n: number) =>
    new ImageInputProblem('too_large', `That image is too large (${formatBytes(n)}); the limit is ${formatBytes(policy.maxBytes)}.`);
  if (source.size !== undefined && source.size > policy.maxBytes) throw tooLarge(source.size);
  let data: Uint8Array;
  try {
    data = await safeDownload(source.url, {
      allowed: (url) => allowedUrl(url, policy),
      headers: { accept: 'image/*' },
      maxBytes: policy.maxBytes,
      timeoutMs: policy.timeoutMs,
      maxRedirects: MAX_REDIRECTS,
      signal,
    });
  } catch (err) {
    if (!(err instanceof DownloadFailure)) throw err;
    switch (err.kind) {
      case 'host':
        throw new ImageInputProblem('host', "I only download images from Discord itself (attachments, or links to Discord's CDN).");
      case 'redirects':
        throw new ImageInputProblem('download', "I couldn't download the image (too many redirects).");
      case 'http':
        throw new ImageInputProblem('download', `I couldn't download the image (HTTP ${err.detail.status}); please upload it again.`);
      case 'too_large':
        throw tooLarge(err.detail.size!);
      case 'timeout':
        throw new ImageInputProblem('timeout', 'Downloading the image took too long; please try again.');
      case 'network':
        throw new ImageInputProblem('download', "I couldn't download the image; please upload it again.");
    }
  }
  if (!sniffImage(data)) throw new ImageInputProblem('not_image', NOT_AN_IMAGE(source.name));
  return data;
}
