// Conversation prompts as upstream's Conversation.get_prompt (SeparatorStyle.SINGLE) builds them:
// system + sep, then role + message + sep per finished message, and the bare role for the open one.
import type { ModelJson } from './package.js';

export type PromptSpec = ModelJson['prompt'];

export interface Turn {
  user: string;
  /** absent for the turn being answered */
  assistant?: string;
}

/** User text may not smuggle an image placeholder into the prompt. */
export function sanitizeUserText(text: string, spec: PromptSpec): string {
  return text.split(spec.imageToken).join('').trim();
}

/**
 * The first user message carries the image, as upstream Chat.upload_img + ask do; `image: false` builds a
 * text-only prompt (the language model alone, as upstream's text-only instruction data).
 */
export function conversationPrompt(spec: PromptSpec, turns: readonly Turn[], opts: { image?: boolean } = {}): string {
  if (turns.length === 0) throw new Error('a conversation prompt needs at least one turn');
  const [userRole, assistantRole] = spec.roles;
  let out = spec.system + spec.separator;
  turns.forEach((turn, i) => {
    const text = sanitizeUserText(turn.user, spec);
    const user = i === 0 && opts.image !== false ? [spec.imagePlaceholder, text].filter(Boolean).join(' ') : text;
    out += userRole + user + spec.separator;
    out += assistantRole;
    if (turn.assistant !== undefined) out += turn.assistant + spec.separator;
  });
  return out;
}
