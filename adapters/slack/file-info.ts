// A Slack file's image bytes as the Web API gives them: the metadata from files.info when the event carries
// only the id (or nothing usable), type and size checked before anything is downloaded, Web API refusals
// told as a sentence for the user (FileInputError).
import type { webApi } from '@slack/bolt';
import { downloadSlackFile, fileLabel, FileInputError, isImageFile, notAnImage, SCOPE_MESSAGE, tooLarge, type SlackFile } from './files.js';
import { slackErrorCode } from './errors.js';

type WebClient = webApi.WebClient;

export interface ImageFetchOptions {
  /** the bot token, sent to Slack's file hosts only */
  token: string;
  maxBytes: number;
  timeoutMs: number;
  /** the Web API base URL override (its origin may serve files too) */
  apiUrl: string | undefined;
}

/** The file's bytes: metadata from files.info when the event has only the id; checks type and size first. */
export async function fetchImage(client: WebClient, file: SlackFile, o: ImageFetchOptions, signal: AbortSignal): Promise<Uint8Array> {
  let f = file;
  if (f.mode === 'tombstone') throw new FileInputError('not_found', 'That file has been deleted.');
  if (f.mode === 'hidden_by_limit')
    throw new FileInputError('refused', "That file is hidden by the workspace's plan limits, so I cannot read it.");
  if (f.file_access === 'check_file_info' || !(f.url_private_download || f.url_private) || (!f.mimetype && !f.filetype)) {
    f = await fileInfo(client, f.id);
  }
  if (!isImageFile(f)) throw notAnImage(f);
  const label = fileLabel(f);
  if (typeof f.size === 'number' && f.size > o.maxBytes) throw tooLarge(label, f.size, o.maxBytes);
  const url = f.url_private_download || f.url_private;
  if (!url) throw new FileInputError('failed', `Slack gave no download link for ${label}.`);
  return downloadSlackFile(url, {
    token: o.token,
    maxBytes: o.maxBytes,
    timeoutMs: o.timeoutMs,
    apiUrl: o.apiUrl,
    signal,
    label,
  });
}

/** files.info's file object; a refusal or a missing file as a FileInputError. */
export async function fileInfo(client: WebClient, id: string): Promise<SlackFile> {
  try {
    const res = await client.files.info({ file: id });
    if (!res.file || typeof res.file.id !== 'string') throw new FileInputError('not_found', 'Slack has no such file.');
    return res.file as unknown as SlackFile;
  } catch (err) {
    if (err instanceof FileInputError) throw err;
    const code = slackErrorCode(err);
    if (code === 'missing_scope' || code === 'no_permission' || code === 'not_allowed_token_type')
      throw new FileInputError('scope', SCOPE_MESSAGE, { cause: err });
    if (code === 'file_not_found' || code === 'file_deleted')
      throw new FileInputError('not_found', 'That file no longer exists (or I cannot see it).', { cause: err });
    throw new FileInputError('failed', 'Slack could not tell me about that file; please try again.', { cause: err });
  }
}
