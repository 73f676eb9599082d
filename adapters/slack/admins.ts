// Who is a workspace admin or owner (users.info, with the optional `users:read` scope): they may stop anyone's
// answer and make the bot forget anyone's thread, as Slack has no per-channel moderator permission to go by.
// Asked only when someone other than the asker or a participant acts, and remembered for a few minutes.
import type { webApi } from '@slack/bolt';
import { describeSlackError, slackErrorCode } from './errors.js';

type WebClient = webApi.WebClient;

const REMEMBER_MS = 5 * 60 * 1000;
const MAX_REMEMBERED = 1000;

export class WorkspaceAdmins {
  private readonly known = new Map<string, { admin: boolean; until: number }>();
  private warnedScope = false;

  constructor(private readonly log: (line: string) => void) {}

  /** Whether `user` is an admin or owner of the workspace; false when Slack cannot say (logged). */
  async isAdmin(client: WebClient, user: string): Promise<boolean> {
    const hit = this.known.get(user);
    if (hit && hit.until > Date.now()) return hit.admin;
    try {
      const res = await client.users.info({ user });
      const u = res.user as { is_admin?: boolean; is_owner?: boolean; is_primary_owner?: boolean } | undefined;
      const admin = !!(u?.is_admin || u?.is_owner || u?.is_primary_owner);
      if (this.known.size >= MAX_REMEMBERED) this.known.clear();
      this.known.set(user, { admin, until: Date.now() + REMEMBER_MS });
      return admin;
    } catch (err) {
      if (slackErrorCode(err) === 'missing_scope') {
        if (!this.warnedScope)
          this.log(
            "slack: the app lacks the users:read scope, so workspace admins cannot stop or forget others' answers (add the scope and reinstall the app)",
          );
        this.warnedScope = true;
      } else this.log(`slack: users.info for ${user} failed: ${describeSlackError(err)}`);
      return false;
    }
  }
}
