"""Model access through litellm, and nothing else: one client, one LangChain chat-model adapter over it.

Invariants:
- litellm is imported lazily, on the first call, with ``LITELLM_LOCAL_MODEL_COST_MAP=True`` set before the import
  (otherwise the import fetches a price map from the network). Importing this module imports neither litellm
  nor anything heavy; the CLI's ``status`` may import it.
- Every litellm exception is translated at this boundary (``raise X(...) from exc``) into ``LlmTimeout``,
  ``LlmUnavailable`` (transient) or ``LlmError``; callers never see a litellm or openai exception type.
- Every answer reports its token usage and its cost in dollars (0.0 when litellm has no price for the model, which
  is logged once per model: the caller's token budget still bounds it).

Why a small ``BaseChatModel`` over litellm rather than ``langchain-litellm``: that package is not installed here and
pulls in MCP servers and JWT libraries the daemon does not need; the adapter is ~80 lines, keeps error translation
and cost accounting in one place, and gives the supervisor agent LangChain tool binding, so tests can swap in a
scripted ``GenericFakeChatModel`` without touching litellm at all.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.utils import convert_to_openai_messages
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict

from tools.errors import LlmError, LlmTimeout, LlmUnavailable

logger = logging.getLogger(__name__)

_UNPRICED: set[str] = set()


@dataclass(frozen=True)
class ToolCall:
    """One tool call the model asked for. ``arguments`` is None when the model sent arguments that are not JSON."""

    id: str
    name: str
    arguments: dict[str, Any] | None
    raw_arguments: str


@dataclass(frozen=True)
class LlmResponse:
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    model: str = ""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with warnings.catch_warnings():
        # litellm's response types trip pydantic's "ReadOnly TypedDict item" warning when their schema is first
        # built; build it here, once, so the warning (harmless, and litellm's to fix) never reaches callers.
        warnings.simplefilter("ignore")
        import litellm

        litellm.suppress_debug_info = True
        litellm.ModelResponse()
    return litellm


def _translate(exc: Exception, model: str) -> LlmError:
    """Map a litellm/openai exception onto the tools.errors tree (by class name: the import stays lazy)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    message = f"{model}: {type(exc).__name__}: {str(exc)[:300]}"
    if names & {"Timeout", "APITimeoutError"}:
        return LlmTimeout(message)
    transient = {
        "RateLimitError",
        "APIConnectionError",
        "InternalServerError",
        "ServiceUnavailableError",
        "BadGatewayError",
    }
    if names & transient:
        return LlmUnavailable(message)
    return LlmError(message)


@dataclass
class LlmClient:
    """A configured litellm model. ``extra`` is passed through to ``litellm.completion`` (tests: ``mock_response``).

    ``completion`` replaces ``litellm.completion`` (same keyword contract); None means litellm's own.
    """

    model: str
    api_base: str | None = None
    api_key: str | None = None
    timeout_s: float = 30.0
    max_retries: int = 2
    max_tokens: int = 1024
    temperature: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)
    completion: Callable[..., Any] | None = None

    def complete(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        response_format: Mapping[str, Any] | type | None = None,
    ) -> LlmResponse:
        litellm = _litellm()
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "timeout": self.timeout_s,
            "num_retries": self.max_retries,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            **self.extra,
        }
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.api_key:
            kwargs["api_key"] = self.api_key
        if tools:
            kwargs["tools"] = [dict(t) for t in tools]
            # With tools, litellm probes its MCP gateway, which imports the optional ``mcp`` package (the
            # litellm[mcp] extra, not installed). We never send MCP tools, so skip that probe.
            kwargs["_skip_mcp_handler"] = True
        if response_format is not None:
            kwargs["response_format"] = response_format
        call = self.completion or litellm.completion
        try:
            response = call(**kwargs)
        except Exception as exc:  # the adapter boundary: every litellm/openai/httpx error becomes ours
            raise _translate(exc, self.model) from exc
        return self._parse(litellm, response)

    def _parse(self, litellm: Any, response: Any) -> LlmResponse:
        try:
            message = response.choices[0].message
        except (AttributeError, IndexError) as exc:
            raise LlmError(f"{self.model}: an answer without a message") from exc
        calls = []
        for raw in getattr(message, "tool_calls", None) or []:
            text = raw.function.arguments or "{}"
            try:
                parsed = json.loads(text)
                arguments = parsed if isinstance(parsed, dict) else None
            except json.JSONDecodeError:
                arguments = None
            calls.append(ToolCall(id=str(raw.id), name=str(raw.function.name), arguments=arguments, raw_arguments=text))
        usage = getattr(response, "usage", None)
        return LlmResponse(
            content=str(getattr(message, "content", None) or ""),
            tool_calls=tuple(calls),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            cost_usd=self._cost(litellm, response),
            model=str(getattr(response, "model", None) or self.model),
        )

    def _cost(self, litellm: Any, response: Any) -> float:
        hidden = getattr(response, "_hidden_params", None) or {}
        cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
        if cost is None:
            try:
                cost = litellm.completion_cost(completion_response=response, model=self.model)
            except Exception:  # litellm raises several types for an unpriced model; the token budget still holds
                cost = None
        if cost is None:
            if self.model not in _UNPRICED:
                _UNPRICED.add(self.model)
                logger.warning(
                    "litellm has no price for %s: its calls are recorded at $0 (tokens still count)", self.model
                )
            return 0.0
        return float(cost)


class LiteLlmChatModel(BaseChatModel):
    """A LangChain chat model over ``LlmClient``: tool binding, usage metadata and ``response_metadata['cost_usd']``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: LlmClient

    @property
    def _llm_type(self) -> str:
        return "learning-pilot-litellm"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        answer = self.client.complete(
            convert_to_openai_messages(messages),  # type: ignore[arg-type]
            tools=kwargs.get("tools"),
            response_format=kwargs.get("response_format"),
        )
        tool_calls = [
            {"name": c.name, "args": c.arguments, "id": c.id, "type": "tool_call"}
            for c in answer.tool_calls
            if c.arguments is not None
        ]
        invalid = [
            {"name": c.name, "args": c.raw_arguments, "id": c.id, "error": "arguments are not a JSON object"}
            for c in answer.tool_calls
            if c.arguments is None
        ]
        message = AIMessage(
            content=answer.content,
            tool_calls=tool_calls,
            invalid_tool_calls=invalid,
            usage_metadata={
                "input_tokens": answer.prompt_tokens,
                "output_tokens": answer.completion_tokens,
                "total_tokens": answer.total_tokens,
            },
            response_metadata={"cost_usd": answer.cost_usd, "model": answer.model},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


class FunctionChatModel(BaseChatModel):
    """A fake chat model for tests, demos and benchmarks: ``respond(messages)`` writes each answer.

    ``bind_tools`` returns the model itself (the tools are described to ``respond`` by the messages it reads).
    Set ``usage_metadata`` on the returned AIMessage to report tokens, ``response_metadata['cost_usd']`` for cost.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    respond: Callable[[list[BaseMessage]], AIMessage]
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "learning-pilot-function-fake"

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls += 1
        return ChatResult(generations=[ChatGeneration(message=self.respond(list(messages)))])
