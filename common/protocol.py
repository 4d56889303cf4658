"""What a host agent may report to the relay's audit log: one closed vocabulary that the host
(hostagent/audit.py) sends and the relay (POST /api/v1/agent/audit) accepts.

The relay cannot see inside the tunnel, so these rows are the customer's computer's word: the
relay stores them marked as reported by the agent, with the agent's fields under one key, and
refuses any other event name (its own, such as "tunnel" or "ended", above all).
"""

from __future__ import annotations

from enum import StrEnum


class AgentEvent(StrEnum):
    """Every event an agent reports (the fields each carries are in AGENT_EVENTS and
    docs/PROTOCOL.md)."""

    TECHNICIAN_CONNECTED = "technician_connected"
    TECHNICIAN_DISCONNECTED = "technician_disconnected"
    SESSION_PASSWORD = "session_password"
    LOGINS_LOCKED = "logins_locked"
    LOGINS_UNLOCKED = "logins_unlocked"
    SHELL_OPENED = "shell_opened"
    SHELL_REATTACHED = "shell_reattached"
    SHELL_CLOSED = "shell_closed"
    COMMAND = "command"
    FILES_OPENED = "files_opened"
    FILE_WRITTEN = "file_written"
    FILE_READ = "file_read"
    FILE_REMOVED = "file_removed"
    FILE_RENAMED = "file_renamed"
    FILE_CHANGED = "file_attributes_changed"
    SYMLINK_CREATED = "symlink_created"
    HARDLINK_CREATED = "hardlink_created"
    FOLDER_CREATED = "folder_created"
    FOLDER_REMOVED = "folder_removed"
    DASHBOARD_OPENED = "dashboard_opened"
    FORWARD_REQUESTED = "forward_requested"
    FORWARD_OPENED = "forward_opened"
    FORWARD_CLOSED = "forward_closed"
    FORWARD_REFUSED = "forward_refused"
    REFUSED = "refused"
    AUDIT_LOST = "audit_lost"


# event -> what it records and with which fields (docs/PROTOCOL.md lists the same)
AGENT_EVENTS: dict[str, str] = {
    AgentEvent.TECHNICIAN_CONNECTED: "a technician logged in to the host (field: method, "
                                      "password or publickey)",
    AgentEvent.TECHNICIAN_DISCONNECTED: "that technician's connection to the host ended",
    AgentEvent.SESSION_PASSWORD: "a wrong session password (outcome wrong; field: failures, "
                                 "in the session)",
    AgentEvent.LOGINS_LOCKED: "logins stopped after too many wrong passwords in a row "
                              "(outcome locked; field: failures)",
    AgentEvent.LOGINS_UNLOCKED: "the customer allowed logins again (actor customer; field: "
                                "refused, attempts while locked)",
    AgentEvent.SHELL_OPENED: "a shell started (fields: shell_id; with a command: command, "
                             "command_chars, command_sha256, command_cut)",
    AgentEvent.SHELL_REATTACHED: "a technician returned to a shell that was still running "
                                 "(field: shell_id)",
    AgentEvent.SHELL_CLOSED: "a shell ended (fields as shell_opened)",
    AgentEvent.COMMAND: "a command ran without a terminal (fields: command, command_chars, "
                        "command_sha256, command_cut)",
    AgentEvent.FILES_OPENED: "the file manager (SFTP) started",
    AgentEvent.FILE_WRITTEN: "a file was uploaded or changed (fields: path, direction, "
                             "transferred, size, sha256 or error; permissions, setuid, setgid)",
    AgentEvent.FILE_READ: "a file was downloaded (fields as file_written)",
    AgentEvent.FILE_REMOVED: "a file was removed (field: path)",
    AgentEvent.FILE_RENAMED: "a file or folder was renamed (fields: path, to)",
    AgentEvent.FILE_CHANGED: "SFTP setstat: size (truncate), mode (setuid included), owner or "
                             "times changed (fields: path, follow_links and what changed: "
                             "size, permissions, setuid, setgid, uid, gid, atime, mtime)",
    AgentEvent.SYMLINK_CREATED: "a symbolic link was created (fields: path, target)",
    AgentEvent.HARDLINK_CREATED: "a hard link was created (fields: path, target)",
    AgentEvent.FOLDER_CREATED: "a folder was created (fields: path, permissions)",
    AgentEvent.FOLDER_REMOVED: "a folder was removed (field: path)",
    AgentEvent.DASHBOARD_OPENED: "the system dashboard started",
    AgentEvent.FORWARD_REQUESTED: "a technician asked to reach a host and port through the "
                                  "customer's computer (fields: host, port)",
    AgentEvent.FORWARD_OPENED: "the customer allowed a port forward and it opened (fields: "
                               "host, port)",
    AgentEvent.FORWARD_CLOSED: "a port forward closed (fields: host, port, bytes_in, bytes_out)",
    AgentEvent.FORWARD_REFUSED: "a port forward was refused (fields: host, port, why)",
    AgentEvent.REFUSED: "something the plan or the customer does not allow (outcome refused; "
                        "field: what)",
    AgentEvent.AUDIT_LOST: "the agent dropped this many events while the relay was out of "
                           "reach (actor agent; field: count)",
}
# The virtual address an agent opens a channel to, on its connection to any relay, to learn
# every relay of the cluster: the relay answers {"relays": [{"ssh": HOST:PORT|null, "http":
# URL}, ...]} as one line of JSON and closes the channel (docs/PROTOCOL.md).
RELAYS_HOST = "adhoc.relays"
RELAYS_MAX = 64  # an agent keeps at most this many relays' routes
AGENT_OUTCOMES = ("ok", "refused", "wrong", "locked", "lost", "failed")
# The relay stores at most this many fields of this many characters per agent event.
AGENT_FIELDS_MAX = 32
AGENT_FIELD_CHARS_MAX = 8192
# What the host writes on a shell channel's stderr just before it closes the channel because
# another connection took the shell (the same ADHOC_SHELL_ID): a console that reads it stops
# reconnecting, or two consoles would take the shell from each other in turn.
SHELL_TAKEN_OVER = b"[this shell was taken over by another connection]"
