// The conversation port: what every adapter gets from the conversations, whether a local ConversationManager
// or a front end's RemoteConversations (src/cluster/frontend.ts) answers (docs/architecture.md, "The
// conversation port"). Each adapter names the part it uses (Pick), so a test's fake implements no more.
import type Keyv from 'keyv';
import type {
  AnswerEvent,
  ConversationKey,
  ConversationRequest,
  ConversationState,
  QuestionOutcome,
  ResetOptions,
  ResetOutcome,
} from '../../src/conversation/index.js';

export interface ConversationPort {
  handle(req: ConversationRequest): AsyncIterable<AnswerEvent>;
  /** forgets the conversation after its earlier requests (with `by`: only if that user took part in it) */
  reset(key: ConversationKey, opts?: ResetOptions): Promise<ResetOutcome>;
  /**
   * forgets the question of a deleted message (asked as request id `asked`), after the conversation's earlier requests:
   * its turn, or the whole conversation where that message brought the image (`turnOnly`: its answer was deleted, the
   * turn alone)
   */
  forgetQuestion(key: ConversationKey, asked: string, opts?: { turnOnly?: boolean }): Promise<QuestionOutcome>;
  history(key: ConversationKey): Promise<ConversationState | null>;
  /**
   * forgets every conversation of a platform's workspace (the app was removed there; or of each workspace the function
   * picks) or, with `channel`, of one of its channels (deleted); how many, if the store can be walked
   */
  forgetWorkspace(
    platform: ConversationKey['platform'],
    workspace: string | ((workspace: string) => boolean),
    channel?: string,
  ): Promise<number | undefined>;
  /** the conversation store (STORE_URL): adapters keep their own marks there (Slack's handled events) */
  readonly store: Keyv;
}
