"""What a host agent may report to the relay's audit log: one closed vocabulary that the host
(hostagent/audit.py) sends and the relay (POST /api/v1/agent/audit) accepts.

The relay cannot see inside the tunnel, so these rows are the customer's computer's word: the
relay stores them marked as reported by the agent, with the agent's fields under one key, and
refuses any other event name (its own, such as "tunnel" or "ended", above all).
"""

from __future__ import annotations

# event -> what it records (docs/PROTOCOL.md lists the same)
AGENT_EVENTS: dict[str, str] = {
    "technician_connected": "a technician logged in to the host with the session password",
    "technician_disconnected": "that technician's connection to the host ended",
    "session_password": "a wrong session password (outcome wrong), or logins locked after "
                        "too many (outcome locked)",
    "shell_opened": "a shell started (fields: shell_id, command)",
    "shell_reattached": "a technician returned to a shell that was still running",
    "shell_closed": "a shell ended",
    "command": "a command ran without a terminal (fields: command, command_sha256, "
               "command_chars)",
    "files_opened": "the file manager (SFTP) started",
    "file_read": "a file was downloaded (fields: path, transferred, size, sha256)",
    "file_written": "a file was uploaded or changed (fields: path, transferred, size, sha256)",
    "file_removed": "a file was removed (field: path)",
    "file_renamed": "a file or folder was renamed (fields: path, to)",
    "folder_created": "a folder was created (field: path)",
    "folder_removed": "a folder was removed (field: path)",
    "file_attributes_changed": "SFTP setstat: mode, owner, times or size changed (fields: "
                               "path, mode, uid, gid, atime, mtime, size)",
    "file_mode_changed": "a file's permissions changed, setuid included (fields: path, mode)",
    "file_truncated": "a file was truncated or extended (fields: path, size)",
    "file_times_changed": "a file's access or modification time changed (fields: path, "
                          "atime, mtime)",
    "symlink_created": "a symbolic link was created (fields: path, target)",
    "link_created": "a hard link was created (fields: path, target)",
    "dashboard_opened": "the system dashboard started",
    "chat_opened": "the chat started",
    "forward_requested": "a technician asked to forward a port (fields: host, port)",
    "forward_opened": "the customer allowed a port forward and it opened",
    "forward_closed": "a port forward closed",
    "forward_refused": "a port forward was refused",
    "refused": "something the plan or the customer does not allow (field: what)",
    "audit_lost": "the agent dropped this many events while the relay was out of reach "
                  "(field: count)",
}
AGENT_OUTCOMES = ("ok", "refused", "wrong", "locked", "lost", "failed")
# The relay stores at most this many fields of this many characters per agent event.
AGENT_FIELDS_MAX = 32
AGENT_FIELD_CHARS_MAX = 8192
