"""Chat messages -> one prompt string for a base model without a chat template.

The node uses the same function to count prompt tokens, so that usage is computed by the
node from what the worker was asked to run, never taken from the worker's own report.
"""

from __future__ import annotations

ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant", "developer": "System"}

PREAMBLE = "The following is a conversation between a user and a helpful, concise assistant.\n\n"

# Where a base model starts inventing the next turn; generation stops there.
STOP_SEQUENCES = ["\nUser:", "\nSystem:"]


def message_text(content) -> str:
    """OpenAI content is a string or a list of parts; only text parts are read."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def format_chat(messages: list[dict]) -> str:
    lines = [PREAMBLE]
    for message in messages:
        label = ROLE_LABELS.get(message.get("role"), "User")
        lines.append(f"{label}: {message_text(message.get('content')).strip()}\n")
    lines.append("Assistant:")
    return "".join(lines)


def job_prompt(*, messages: list[dict] | None, prompt: str | None) -> tuple[str, list[str]]:
    """(text to run, stop sequences the format adds) for a chat job or a raw completion job."""
    if prompt is not None:
        return prompt, []
    return format_chat(messages or []), list(STOP_SEQUENCES)
