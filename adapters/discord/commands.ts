// The application commands the bot answers: `/describe`, the "Describe image" message context menu, and `/forget`
// (a thread's image and history deleted).
// `minigpt register-commands` sends these definitions to Discord.
import {
  ApplicationCommandOptionType,
  ApplicationCommandType,
  ApplicationIntegrationType,
  InteractionContextType,
  type RESTPostAPIApplicationCommandsJSONBody,
} from 'discord.js';
import { TASKS } from '../../src/grounding/tasks.js';

export const DESCRIBE_COMMAND = 'describe';
export const FORGET_COMMAND = 'forget';
export const DESCRIBE_IMAGE_MENU = 'Describe image';

const TASK_LABELS: Record<(typeof TASKS)[number] | 'chat', string> = {
  chat: 'chat (no task tag)',
  grounding: 'grounding: detailed description with boxes',
  refer: 'refer: find the object you describe',
  detection: 'detection: find all objects of a kind',
  identify: 'identify: what is in a box {<x1><y1><x2><y2>}',
  vqa: 'vqa: short answer to a question',
  caption: 'caption: a short description',
};

/** The command definitions, as Discord's bulk-overwrite endpoint takes them. */
export function commandDefinitions(): RESTPostAPIApplicationCommandsJSONBody[] {
  const contexts = [InteractionContextType.Guild, InteractionContextType.BotDM];
  const integration_types = [ApplicationIntegrationType.GuildInstall];
  return [
    {
      type: ApplicationCommandType.ChatInput,
      name: DESCRIBE_COMMAND,
      description: 'Describe an image or ask about it (MiniGPT-v2); follow up in the thread it opens',
      contexts,
      integration_types,
      options: [
        {
          type: ApplicationCommandOptionType.Attachment,
          name: 'image',
          description: 'The image (PNG, JPEG, WebP or GIF); in a bot thread, default: its image',
          required: false,
        },
        {
          type: ApplicationCommandOptionType.String,
          name: 'prompt',
          description: 'Your question or instruction',
          required: false,
          max_length: 1500,
        },
        {
          type: ApplicationCommandOptionType.String,
          name: 'task',
          description: 'MiniGPT-v2 task (default: from a [tag] in the prompt, else chat)',
          required: false,
          choices: (['chat', ...TASKS] as const).map((t) => ({ name: TASK_LABELS[t], value: t })),
        },
        {
          type: ApplicationCommandOptionType.Number,
          name: 'temperature',
          description: 'Sampling temperature; 0 = greedy',
          required: false,
          min_value: 0,
          max_value: 2,
        },
      ],
    },
    { type: ApplicationCommandType.Message, name: DESCRIBE_IMAGE_MENU, contexts, integration_types },
    {
      type: ApplicationCommandType.ChatInput,
      name: FORGET_COMMAND,
      description: "Delete this thread's image and history from the bot (in a thread it started, or in a DM)",
      contexts,
      integration_types,
    },
  ];
}
