// Slack files: picking the image of a message, and downloading it with the bot token from Slack's own file
// hosts only (the token never goes anywhere else), with a size cap and a timeout.
import { DownloadFailure, plainUrl, safeDownload } from '../shared/download.js';
import { formatBytes } from '../../src/util/bytes.js';

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
  const u = plainUrl(url);
  if (!u) return false;
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
  try {
    return await safeDownload(url, {
      allowed: (u) => isAllowedFileUrl(u, opts.apiUrl),
      headers: { Authorization: `Bearer ${opts.token}` },
      maxBytes: opts.maxBytes,
      timeoutMs: opts.timeoutMs,
      signal: opts.signal,
      // Without a token that may read files Slack answers with its sign-in page instead of the file.
      refuse: (res) => (signInPage(res) ? new FileInputError('scope', SCOPE_MESSAGE) : undefined),
    });
  } catch (err) {
    if (!(err instanceof DownloadFailure)) throw err;
    switch (err.kind) {
      case 'host':
        throw new FileInputError('refused', REFUSED_HOST);
      case 'redirects':
        throw new FileInputError('failed', `Slack did not hand out ${label} (too many redirects).`);
      case 'http':
        if (err.detail.status === 401 || err.detail.status === 403) throw new FileInputError('scope', SCOPE_MESSAGE);
        if (err.detail.status === 404) throw new FileInputError('not_found', `The file ${label} no longer exists.`);
        throw new FileInputError('failed', `Downloading ${label} failed (HTTP ${err.detail.status}); please try again.`);
      case 'too_large':
        throw tooLarge(label, err.detail.declared ? err.detail.size : undefined, opts.maxBytes);
      case 'timeout':
        throw new FileInputError(
          'timeout',
          `Downloading ${label} took too long (more than ${Math.round(opts.timeoutMs / 1000)} s); please try again.`,
          { cause: err.cause },
        );
      case 'network':
        throw new FileInputError('failed', `Downloading ${label} failed; please try again.`, { cause: err.cause });
    }
  }
}

const signInPage = (res: Response) => (res.headers.get('content-type') ?? '').toLowerCase().startsWith('text/html');

/** `size` unknown (a download cut at the cap): the message says only the limit. */
export function tooLarge(label: string, size: number | undefined, max: number): FileInputError {
  const has = size !== undefined ? `${formatBytes(size)}; ` : '';
  return new FileInputError('too_large', `The image ${label} is too large (${has}the limit is ${formatBytes(max)}).`);
}
