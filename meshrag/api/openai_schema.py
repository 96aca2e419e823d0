"""Validation of /v1/chat/completions bodies (the OpenAI request shape) into a ChatRequest.

What this API honours, what it accepts and ignores (fields that only tune
sampling or label a request) and what it refuses with a 400 naming the field
(n > 1, tools, logprobs, JSON output, audio, unknown fields). Kept apart from
api/openai_compat.py, which is the routes and the response shapes.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from meshrag.api.schema import _integer, _optional_filter, _quoted, _require_object, _session, _type_name
from meshrag.config import ApiConfig, GenerationConfig
from meshrag.errors import NotFound, ValidationError
from meshrag.store.filters import Filter
from meshrag.wire import check_text, printable

RETRIEVAL_HEADER = "X-Meshrag-Retrieval"
MAX_MESSAGES = 512
MAX_QUERY_CHARS = 8192  # the retrieval query, as /v1/ask's query
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_STOP_CHARS = 256
# Roles a message may have; "developer" is OpenAI's newer name for "system" (templates know "system").
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Keys a message may carry besides role and content, with the values that mean "not used":
# a message echoed back from a response (message.model_dump()) carries them as nulls.
_MESSAGE_INERT = {"name": None, "refusal": None, "annotations": None, "audio": None, "tool_calls": None, "function_call": None}
# Chars per token of the prompt estimate (usage.prompt_tokens): English text under
# common tokenizers; flagged as an estimate in the response's meshrag.usage.
CHARS_PER_TOKEN = 4


class ModelNotFound(NotFound):
    code = "model_not_found"


# ---------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ChatRequest:
    """A validated /v1/chat/completions body."""

    model: str | None  # None: not given
    messages: list[dict[str, str]]  # role (system, user, assistant) and text content
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with usage
    max_tokens: int  # clamped to generation.max_tokens
    max_tokens_requested: int | None
    temperature: float
    stop: tuple[str, ...]
    retrieval: bool | None  # None: not in the body (the header, else on)
    k: int
    filter: Filter | None
    session: str | None
    query_index: int  # the last user message, -1 when there is none


def _shown(value: Any) -> str:
    """A client's value in a message: numbers as they are, strings cut short, else the type."""
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)[:32] if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return _quoted(value)


def _not_supported(what: str) -> Callable[[Any, str], None]:
    """A field accepted only with a value that asks for nothing this API cannot do."""
    def check(value: Any, path: str) -> None:
        if value is None or value is False or value == [] or value == {} or (value == 0 and not isinstance(value, bool)):
            return
        raise ValidationError(f"{path}: {what}", field=path)
    return check


def _kind(*types: type, low: float | None = None, high: float | None = None) -> Callable[[Any, str], None]:
    """An ignored field, checked for its type (and range) so that garbage is still named."""
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object"}
    expected = "a number" if float in types else names[types[0]]

    def check(value: Any, path: str) -> None:
        if value is None:
            return
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise ValidationError(f"{path} must be {expected}, got {_type_name(value)}", field=path)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
                raise ValidationError(f"{path} = {value} is out of range {low}..{high}", field=path)
    return check


def _n(value: Any, path: str) -> None:
    if value is None or (value == 1 and not isinstance(value, bool)):
        return
    raise ValidationError(f"{path} = {_shown(value)}: this API returns one choice (n = 1); send n separate requests", field=path)


def _tool_choice(value: Any, path: str) -> None:
    if value not in (None, "none", "auto"):
        raise ValidationError(f"{path}: this API calls no tools; only none or auto is accepted", field=path)


def _response_format(value: Any, path: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or value.get("type") != "text":
        raise ValidationError(f"{path}: only {{\"type\": \"text\"}} is supported (no JSON mode or schemas)", field=path)


def _modalities(value: Any, path: str) -> None:
    if value is not None and value != ["text"]:
        raise ValidationError(f"{path}: only [\"text\"] is supported", field=path)


# OpenAI fields the API accepts without acting on them (sampling hints, labels, storage);
# values that would need something it cannot do are refused, naming the field.
_IGNORED_FIELDS: dict[str, Callable[[Any, str], None]] = {
    "n": _n,
    "top_p": _kind(int, float, low=0, high=1),
    "frequency_penalty": _kind(int, float, low=-2, high=2),
    "presence_penalty": _kind(int, float, low=-2, high=2),
    "seed": _kind(int),
    "user": _kind(str),
    "metadata": _kind(dict),
    "store": _kind(bool),
    "service_tier": _kind(str),
    "reasoning_effort": _kind(str),
    "verbosity": _kind(str),
    "prompt_cache_key": _kind(str),
    "safety_identifier": _kind(str),
    "parallel_tool_calls": _kind(bool),
    "tool_choice": _tool_choice,
    "function_call": _tool_choice,
    "response_format": _response_format,
    "modalities": _modalities,
    "tools": _not_supported("this API calls no tools; send tools = null or []"),
    "functions": _not_supported("this API calls no functions; send functions = null or []"),
    "logprobs": _not_supported("log probabilities are not available"),
    "top_logprobs": _not_supported("log probabilities are not available"),
    "logit_bias": _not_supported("logit_bias is not supported; send null or {}"),
    "audio": _not_supported("audio output is not supported"),
    "prediction": _not_supported("predicted outputs are not supported"),
    "web_search_options": _not_supported("web search is not supported; retrieval from the cluster is on by default"),
}
_HONOURED_FIELDS = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature", "stop",
    "retrieval", "k", "filter", "session",
})
_ALLOWED_FIELDS = _HONOURED_FIELDS | frozenset(_IGNORED_FIELDS)


def parse_chat(body: Any, limits: ApiConfig, generation: GenerationConfig) -> ChatRequest:
    """Validate a chat completions body; every rejection names the field at fault."""
    obj = _require_object(body, "body")
    for key, value in obj.items():
        if key not in _ALLOWED_FIELDS:
            close = difflib.get_close_matches(str(key), sorted(_ALLOWED_FIELDS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValidationError(
                f"unknown field {printable(key)!r}; {hint}this API takes the OpenAI chat fields and retrieval, k, filter, session",
                field=printable(key),
            )
        check = _IGNORED_FIELDS.get(key)
        if check is not None:
            check(value, key)
    model = obj.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValidationError(f"model must be a model name (GET /v1/models lists them), got {_shown(model)}", field="model")
    messages = _messages(obj.get("messages"))
    stream = _flag(obj, "stream", False)
    include_usage = False
    options = obj.get("stream_options")
    if options is not None:
        options = _require_object(options, "stream_options")
        for key in options:
            if key not in ("include_usage", "include_obfuscation"):
                raise ValidationError(f"unknown field {printable(key)!r}; allowed: include_usage, include_obfuscation", field=f"stream_options.{printable(key)}")
        include_usage = _flag(options, "include_usage", False, "stream_options.include_usage")
        _flag(options, "include_obfuscation", False, "stream_options.include_obfuscation")  # nothing to obfuscate against
    requested = _max_tokens(obj)
    retrieval = obj.get("retrieval")
    if retrieval is not None and not isinstance(retrieval, bool):
        raise ValidationError(f"retrieval must be true or false, got {_type_name(retrieval)}", field="retrieval")
    query_index = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=include_usage and stream,
        max_tokens=min(requested, generation.max_tokens) if requested is not None else generation.max_tokens,
        max_tokens_requested=requested,
        temperature=_temperature(obj, generation.temperature),
        stop=_stop(obj.get("stop")),
        retrieval=retrieval,
        k=_integer(obj, "k", "k", limits.ask_default_k, 1, min(limits.max_k, 100)),
        filter=_optional_filter(obj),
        session=_session(obj),
        query_index=query_index,
    )


def _flag(obj: Mapping[str, Any], key: str, default: bool, path: str | None = None) -> bool:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ValidationError(f"{path or key} must be true or false, got {_type_name(value)}", field=path or key)
    return value


def _messages(value: Any) -> list[dict[str, str]]:
    if value is None:
        raise ValidationError("messages is required: an array of {role, content}", field="messages")
    if not isinstance(value, list):
        raise ValidationError(f"messages must be an array, got {_type_name(value)}", field="messages")
    if not 1 <= len(value) <= MAX_MESSAGES:
        raise ValidationError(f"messages has {len(value)} entries; 1..{MAX_MESSAGES} allowed", field="messages")
    return [_message(item, f"messages[{i}]") for i, item in enumerate(value)]


def _message(value: Any, path: str) -> dict[str, str]:
    obj = _require_object(value, path)
    role = obj.get("role")
    if role in ("tool", "function"):
        raise ValidationError(f"{path}.role = {role!r}: this API calls no tools, so it takes no tool results", field=f"{path}.role")
    if not isinstance(role, str) or role not in ROLES:
        raise ValidationError(f"{path}.role = {_shown(role)}; allowed: {', '.join(ROLES)}", field=f"{path}.role")
    for key, item in obj.items():
        if key in ("role", "content"):
            continue
        if key not in _MESSAGE_INERT:
            raise ValidationError(f"unknown field {printable(key)!r}; a message has role, content and name", field=f"{path}.{printable(key)}")
        if key == "name":
            if item is not None and not isinstance(item, str):
                raise ValidationError(f"{path}.name must be a string, got {_type_name(item)}", field=f"{path}.name")
        elif item not in (None, [], {}):
            raise ValidationError(f"{path}.{key}: not supported (this API calls no tools and answers in text)", field=f"{path}.{key}")
    return {"role": ROLES[role], "content": _content(obj.get("content"), f"{path}.content")}


def _content(value: Any, path: str) -> str:
    """A string, or OpenAI's content parts of type text (joined by newlines)."""
    if value is None:
        raise ValidationError(f"{path} is required", field=path)
    if isinstance(value, str):
        check_text(value, path)
        return value
    if not isinstance(value, list):
        raise ValidationError(f"{path} must be a string or an array of text parts, got {_type_name(value)}", field=path)
    texts = []
    for index, part in enumerate(value):
        part_path = f"{path}[{index}]"
        part = _require_object(part, part_path)
        if part.get("type") != "text":
            raise ValidationError(f"{part_path}.type = {_shown(part.get('type'))}: only text parts are supported", field=f"{part_path}.type")
        text = part.get("text")
        if not isinstance(text, str):
            raise ValidationError(f"{part_path}.text must be a string, got {_type_name(text)}", field=f"{part_path}.text")
        check_text(text, f"{part_path}.text")
        texts.append(text)
    return "\n".join(texts)


def _max_tokens(obj: Mapping[str, Any]) -> int | None:
    """max_completion_tokens (OpenAI's current name) or max_tokens; both must agree."""
    values = {}
    for key in ("max_completion_tokens", "max_tokens"):
        if obj.get(key) is not None:
            values[key] = _integer(obj, key, key, 0, 1, 1 << 31)
    if len(set(values.values())) > 1:
        raise ValidationError("max_tokens and max_completion_tokens differ; send one of them", field="max_tokens")
    return next(iter(values.values()), None)


def _temperature(obj: Mapping[str, Any], default: float) -> float:
    value = obj.get("temperature")
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 2:
        raise ValidationError(f"temperature must be a number in 0..2, got {_shown(value)}", field="temperature")
    return float(value)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > MAX_STOP_SEQUENCES:
        raise ValidationError(f"stop must be a string or an array of at most {MAX_STOP_SEQUENCES} strings", field="stop")
    for index, item in enumerate(items):
        path = "stop" if isinstance(value, str) else f"stop[{index}]"
        if not isinstance(item, str) or not item or len(item) > MAX_STOP_CHARS:
            raise ValidationError(f"{path} must be a non-empty string of at most {MAX_STOP_CHARS} characters", field=path)
        check_text(item, path)
    return tuple(items)


def retrieval_header(value: str | None) -> bool | None:
    """X-Meshrag-Retrieval: on/off (true/false, 1/0); None when absent."""
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in ("on", "true", "1", "yes"):
        return True
    if lowered in ("off", "false", "0", "no"):
        return False
    raise ValidationError(f"{RETRIEVAL_HEADER} must be on or off, got {value[:32]!r}", field=RETRIEVAL_HEADER)
