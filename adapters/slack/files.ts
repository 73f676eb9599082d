// Slack files: picking the image of a message, and downloading it with the bot token from Slack's own file
// hosts only (the token never goes anywhere else), with a size cap and a timeout.
import { formatBytes } from './format.js';

/** The fields of a Slack file object that the adapter uses. */
export interface SlackFile {
  id: string;
  name?: string | null;
  title?: string | null;
  mimetype?: string;
  filetype?: string;
  pretty_type?: string;
  size?: number;
  url_private?: string;
  url_private_download?: string;
  /** `check_file_info`: the event carries only the id; files.info has the rest */
  file_access?: string;
  /** `tombstone` (deleted), `hidden_by_limit` (free workspaces' old files) */
  mode?: string;
}

export type FileErrorReason = 'not_image' | 'too_large' | 'refused' | 'scope' | 'timeout' | 'not_found' | 'failed';

/** A file the bot cannot use, with the sentence to tell the user. */
export class FileInputError extends Error {
  constructor(
    readonly reason: FileErrorReason,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** File types sharp decodes (the model's image preprocessing uses sharp). */
const IMAGE_FILETYPES = new Set(['png', 'jpg', 'jpeg', 'gif', 'webp', 'tiff', 'tif', 'avif', 'heic', 'heif', 'bmp']);

export function isImageFile(f: SlackFile): boolean {
  const mime = (f.mimetype ?? '').toLowerCase();
  if (mime === 'image/svg+xml') return false;
  if (mime.startsWith('image/')) return true;
  return IMAGE_FILETYPES.has((f.filetype ?? '').toLowerCase());
}

/** Files as an event carries them: only objects with an id (anything else is ignored). */
export function eventFiles(files: unknown): SlackFile[] {
  if (!Array.isArray(files)) return [];
  return files.filter((f): f is SlackFile => !!f && typeof f === 'object' && typeof (f as SlackFile).id === 'string');
}

export function fileLabel(f: SlackFile): string {
  return (f.name || f.title || f.id).slice(0, 80);
}

export function notAnImage(f: SlackFile): FileInputError {
  const kind = f.pretty_type || f.filetype || f.mimetype;
  return new FileInputError(
    'not_image',
    `That file (${fileLabel(f)}${kind ? `, ${kind}` : ''}) is not an image. Attach a PNG, JPEG, WebP or GIF image and ask again.`,
  );
}

/** Slack's hosts for private files (`url_private[_download]`). */
export function isSlackFileHost(hostname: string): boolean {
  const h = hostname.toLowerCase();
  return (
    h === 'files.slack.com' ||
    /^files[.-][a-z0-9.-]*\.slack\.com$/.test(h) ||
    h === 'files.slack-gov.com' ||
    /^files[.-][a-z0-9.-]*\.slack-gov\.com$/.test(h)
  );
}

/**
 * Whether the bot token may be sent to `url`: https on one of Slack's file hosts, or the configured Web API's
 * own origin (the API URL override: a test double or a proxy that the deployment chose).
 */
export function isAllowedFileUrl(url: string, apiUrl?: string): boolean {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return false;
  }
  if (u.username || u.password) return false;
  if (u.protocol === 'https:' && isSlackFileHost(u.hostname) && (u.port === '' || u.port === '443')) return true;
  if (apiUrl) {
    try {
      const api = new URL(apiUrl);
      if (api.origin === u.origin) return true;
    } catch {
      // not a URL: nothing more is allowed
    }
  }
  return false;
}

export interface DownloadOptions {
  token: string;
  /** largest file accepted */
  maxBytes: number;
  timeoutMs: number;
  /** the Web API base URL override (its origin may serve files too) */
  apiUrl?: string;
  signal?: AbortSignal;
  /** the file's name for messages */
  label?: string;
}

const REFUSED_HOST = 'I can only download files stored by Slack, and this one is stored elsewhere.';
export const SCOPE_MESSAGE =
  'Slack refused to let me download the file: the app needs the `files:read` scope (add it under OAuth & Permissions and reinstall the app).';

/**
 * Downloads a private Slack file. Redirects are followed by hand (at most 3), each hop checked against the
 * allowed hosts before the token is sent. Throws FileInputError with a sentence for the user.
 */
export async function downloadSlackFile(url: string, opts: DownloadOptions): Promise<Uint8Array> {
  const label = opts.label ?? 'the file';
  const timeout = AbortSignal.timeout(opts.timeoutMs);
  const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
  let current = url;
  try {
    for (let hop = 0; ; hop++) {
      if (!isAllowedFileUrl(current, opts.apiUrl)) throw new FileInputError('refused', REFUSED_HOST);
      const res = await fetch(current, {
        headers: { Authorization: `Bearer ${opts.token}` },
        redirect: 'manual',
        signal,
      });
      if (res.status >= 300 && res.status < 400) {
        await res.body?.cancel().catch(() => {});
        const location = res.headers.get('location');
        if (!location || hop >= 3) throw new FileInputError('failed', `Slack did not hand out ${label} (too many redirects).`);
        current = new URL(location, current).toString();
        continue;
      }
      if (res.status === 401 || res.status === 403) {
        await res.body?.cancel().catch(() => {});
        throw new FileInputError('scope', SCOPE_MESSAGE);
      }
      if (res.status === 404) {
        await res.body?.cancel().catch(() => {});
        throw new FileInputError('not_found', `The file ${label} no longer exists.`);
      }
      if (!res.ok) {
        await res.body?.cancel().catch(() => {});
        throw new FileInputError('failed', `Downloading ${label} failed (HTTP ${res.status}); please try again.`);
      }
      // Without a token that may read files Slack answers with its sign-in page instead of the file.
      const type = (res.headers.get('content-type') ?? '').toLowerCase();
      if (type.startsWith('text/html')) {
        await res.body?.cancel().catch(() => {});
        throw new FileInputError('scope', SCOPE_MESSAGE);
      }
      const length = Number(res.headers.get('content-length'));
      if (Number.isFinite(length) && length > opts.maxBytes) {
        await res.body?.cancel().catch(() => {});
        throw tooLarge(label, length, opts.maxBytes);
      }
      return await readCapped(res, opts.maxBytes, label);
    }
  } catch (err) {
    if (err instanceof FileInputError) throw err;
    if (timeout.aborted) {
      throw new FileInputError('timeout', `Downloading ${label} took too long (more than ${Math.round(opts.timeoutMs / 1000)} s); please try again.`, { cause: err });
    }
    if (opts.signal?.aborted) throw err;
    throw new FileInputError('failed', `Downloading ${label} failed; please try again.`, { cause: err });
  }
}

/** `size` unknown (a download cut at the cap): the message says only the limit. */
export function tooLarge(label: string, size: number | undefined, max: number): FileInputError {
  const has = size !== undefined ? `${formatBytes(size)}; ` : '';
  return new FileInputError('too_large', `The image ${label} is too large (${has}the limit is ${formatBytes(max)}).`);
}

async function readCapped(res: Response, max: number, label: string): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  if (!res.body) return new Uint8Array(0);
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > max) {
      await reader.cancel().catch(() => {});
      throw tooLarge(label, undefined, max);
    }
    chunks.push(value);
  }
  const out = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.byteLength;
  }
  return out;
}
