export { ConversationManager, type ConversationManagerOptions } from './manager.js';
export type { EncodedImage, SharedImageCache } from './image-input.js';
export { createStore, conversationId, STORE_NAMESPACE, StoreUrlError } from './store.js';
export { DEFAULT_PROMPT, TEMPLATE_MARKERS, neutralizeMarkers, selectorTask } from './text.js';
export { LIMITS } from './limits.js';
export { edition, EDIT_REFUSED, regeneration, REGENERATE_REFUSED, withoutQuestion, type Regeneration } from './turn.js';
export type {
  AnswerEvent,
  AnswerLogprob,
  LogprobToken,
  ConversationKey,
  ConversationRequest,
  ConversationState,
  ErrorCode,
  ImageRef,
  PriorTurn,
  RequestGeneration,
  ResetOptions,
  QuestionOutcome,
  ResetOutcome,
  StoredTurn,
  TaskTag,
} from './types.js';
