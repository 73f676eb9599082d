// The Regenerate button on the last message of an answer given in full: the person who asked gets a new answer to
// the same question, posted after it in its thread (or DM), which replaces it in the conversation; the old answer
// loses its button and says it was replaced, or gets its button back when the new one was not given. Anyone else, or
// an answer followed up since (its button then removed), is told why privately.
import type { webApi } from '@slack/bolt';
import { regeneration } from '../../src/conversation/index.js';
import type { ArrivalTurn } from '../shared/arrival-order.js';
import { REGENERATED_LINE, REPLACED_LINE } from '../shared/regenerate.js';
import { answer, dmKey, isDirectMessage, REGENERATE_ACTION, slackKey, type AnswerContext } from './answer.js';
import { describeSlackError } from './errors.js';
import type { SlackConversationManager } from './options.js';
import { withButton } from './reply.js';

type WebClient = webApi.WebClient;

const REGENERATED = `_${REGENERATED_LINE}_`;
const REPLACED = `_${REPLACED_LINE}_`;

/** A press of the button, as Slack's block_actions payload gives it. */
export interface RegeneratePress {
  team: string;
  channel: string;
  user: string;
  /** the answer's message: its ts, its thread, its text (the answer as posted) */
  message: { ts: string; thread_ts?: string; text?: string };
  /** the button's value: the request id of the stored answer */
  requestId: string;
  actionTs: string;
}

export interface RegenerateHost {
  readonly ctx: AnswerContext;
  readonly manager: Pick<SlackConversationManager, 'history'>;
  /** counts the request against the user's limit; over it, tells them and returns false */
  withinRate(team: string, user: string, tell: (text: string) => Promise<void>): Promise<boolean>;
}

/** The press in a block_actions payload (`team`: the workspace when the payload does not say), if it is complete. */
export function regeneratePress(body: unknown, team: string): RegeneratePress | undefined {
  const b = body as {
    team?: { id?: string };
    user?: { id?: string; team_id?: string };
    channel?: { id?: string };
    message?: { ts?: string; thread_ts?: string; text?: string };
    actions?: { value?: string; action_ts?: string }[];
  };
  const msg = b.message;
  const action = b.actions?.[0];
  if (!b.channel?.id || !msg?.ts || !b.user?.id || !action?.value) return undefined;
  return {
    team: b.team?.id ?? b.user.team_id ?? team,
    channel: b.channel.id,
    user: b.user.id,
    message: { ts: msg.ts, ...(msg.thread_ts ? { thread_ts: msg.thread_ts } : {}), ...(msg.text !== undefined ? { text: msg.text } : {}) },
    requestId: action.value,
    actionTs: action.action_ts ?? `${Date.now() / 1000}`,
  };
}

/** The thread (a DM: the whole DM) whose conversation a press is about. */
export function regenerateThread(p: Pick<RegeneratePress, 'message'>): string {
  return p.message.thread_ts ?? p.message.ts;
}

export async function onRegenerate(
  host: RegenerateHost,
  p: RegeneratePress,
  client: WebClient,
  tell: (text: string) => Promise<void>,
  turn?: ArrivalTurn,
): Promise<void> {
  const { ctx } = host;
  const dm = isDirectMessage(p.channel);
  const thread = regenerateThread(p);
  const key = dm ? dmKey(p.team, p.channel) : slackKey(p.team, p.channel, thread);
  const text = p.message.text ?? '';
  // the old answer's message: its text, with or without the button, or with a line after it
  const setOld = async (blocks: ReturnType<typeof withButton> | [], line?: string) => {
    try {
      await client.chat.update({ channel: p.channel, ts: p.message.ts, text: line ? `${text}\n${line}` : text, blocks });
    } catch (err) {
      ctx.log(`slack: regenerate in ${p.channel}: could not update the old answer: ${describeSlackError(err)}`);
    }
  };

  const verdict = regeneration(await host.manager.history(key), p.requestId, p.user);
  if ('code' in verdict) {
    if (verdict.code === 'stale') await setOld([]);
    await tell(verdict.message);
    return;
  }
  if (!(await host.withinRate(p.team, p.user, tell))) return;
  await setOld([]);
  const answered = await answer(ctx, {
    client,
    team: p.team,
    channel: p.channel,
    // (an answer in a DM itself, not in a thread there, is followed by the new one in the DM)
    ...(!dm || p.message.thread_ts ? { thread } : {}),
    ...(dm ? { dm: true } : {}),
    user: p.user,
    text: '',
    regenerate: p.requestId,
    // (the new answer answers the message that asked the turn, as the old one did)
    ...(verdict.askedAs !== undefined ? { asked: verdict.askedAs } : {}),
    header: REGENERATED,
    requestId: `slack:${p.channel}:rg${p.actionTs}`,
    what: `regenerate in ${p.channel} thread ${thread}`,
    turn,
  });
  if (answered) await setOld([], REPLACED);
  else await setOld(withButton(text, 'Regenerate', { actionId: REGENERATE_ACTION, value: p.requestId }));
}
