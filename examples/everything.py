"""The conformance suite's "everything" server, on Steward's operator API.

Serve it with ``steward serve --app examples.everything:app`` (from the repository's root); the
official suite runs against it in CI (``.ci/conformance``, docs/protocol.md "Conformance"). Names
and answers follow the fixtures the suite calls; the python-sdk's everything-server is the
reference for what each returns.
"""

from __future__ import annotations

import base64
import json

import trio

from server import Context, Steward, ToolError

__all__ = ["PNG_1PX", "WATCHED_URI", "app"]


app = Steward("steward-everything", "0.1.0", instructions="Conformance fixtures.")

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV_EMPTY = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
WATCHED_URI = "test://watched-resource"


def _image() -> dict[str, object]:
    return {"type": "image", "data": PNG_1PX, "mimeType": "image/png"}


def _text(text: str) -> dict[str, object]:
    return {"type": "text", "text": text}


@app.tool()
async def test_simple_text(ctx: Context) -> str:
    """Tests simple text content response"""
    return "This is a simple text response for testing."


@app.tool()
async def test_image_content(ctx: Context) -> list[dict[str, object]]:
    """Tests image content response"""
    return [_image()]


@app.tool()
async def test_audio_content(ctx: Context) -> list[dict[str, object]]:
    """Tests audio content response"""
    return [{"type": "audio", "data": WAV_EMPTY, "mimeType": "audio/wav"}]


@app.tool()
async def test_embedded_resource(ctx: Context) -> list[dict[str, object]]:
    """Tests embedded resource content response"""
    resource = {
        "uri": "test://embedded-resource",
        "mimeType": "text/plain",
        "text": "This is an embedded resource content.",
    }
    return [{"type": "resource", "resource": resource}]


@app.tool()
async def test_multiple_content_types(ctx: Context) -> list[dict[str, object]]:
    """Tests response with multiple content types (text, image, resource)"""
    resource = {
        "uri": "test://mixed-content-resource",
        "mimeType": "application/json",
        "text": '{"test": "data", "value": 123}',
    }
    return [
        _text("Multiple content types test:"),
        _image(),
        {"type": "resource", "resource": resource},
    ]


@app.tool()
async def test_tool_with_logging(ctx: Context) -> str:
    """Tests tool that emits log messages during execution"""
    for step in ("Tool execution started", "Tool processing data", "Tool execution completed"):
        await ctx.log("info", step)
        await trio.sleep(0.05)
    return "Tool with logging executed successfully"


@app.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    """Tests tool that reports progress notifications"""
    for done in (0, 50, 100):
        await ctx.progress(done, 100, f"Completed step {done} of 100")
        await trio.sleep(0.05)
    return str(ctx.progress_token if ctx.progress_token is not None else 0)


@app.tool()
async def test_error_handling(ctx: Context) -> str:
    """Tests error response handling"""
    raise ToolError("This tool intentionally returns an error for testing")


@app.tool()
async def test_sampling(ctx: Context, prompt: str) -> str:
    """Tests server-initiated sampling (LLM completion request)"""
    result = await ctx.sample([{"role": "user", "content": _text(prompt)}], max_tokens=100)
    content = result.get("content")
    answer = content.get("text") if isinstance(content, dict) else None
    return f"LLM response: {answer if isinstance(answer, str) else 'No response'}"


def _answer(result: dict[str, object]) -> tuple[object, str]:
    action = result.get("action")
    content = result.get("content") if action == "accept" else {}
    return action, json.dumps(content, separators=(",", ":"))


@app.tool()
async def test_elicitation(ctx: Context, message: str) -> str:
    """Tests server-initiated elicitation (user input request)"""
    schema = {
        "type": "object",
        "properties": {"response": {"type": "string", "description": "User's response"}},
        "required": ["response"],
    }
    action, content = _answer(await ctx.elicit(message, schema))
    return f"User response: action={action}, content={content}"


@app.tool()
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    """Tests elicitation with default values for all primitive types (SEP-1034)"""
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "default": "John Doe", "description": "User name"},
            "age": {"type": "integer", "default": 30, "description": "User age"},
            "score": {"type": "number", "default": 95.5, "description": "User score"},
            "status": {
                "type": "string",
                "enum": ["active", "inactive", "pending"],
                "default": "active",
                "description": "User status",
            },
            "verified": {"type": "boolean", "default": True, "description": "Verification status"},
        },
    }
    action, content = _answer(await ctx.elicit("Please provide user information", schema))
    return f"Elicitation result: action={action}, content={content}"


@app.tool()
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    """Tests elicitation with enum schema variations per SEP-1330"""

    def titled(*pairs: tuple[str, str]) -> list[dict[str, str]]:
        return [{"const": value, "title": title} for value, title in pairs]

    schema = {
        "type": "object",
        "properties": {
            "untitledSingle": {
                "type": "string",
                "description": "Simple enum without titles",
                "enum": ["active", "inactive", "pending"],
            },
            "titledSingle": {
                "type": "string",
                "description": "Enum with titled options (oneOf)",
                "oneOf": titled(
                    ("low", "Low Priority"),
                    ("medium", "Medium Priority"),
                    ("high", "High Priority"),
                ),
            },
            "untitledMulti": {
                "type": "array",
                "description": "Multi-select without titles",
                "items": {"type": "string", "enum": ["read", "write", "execute"]},
            },
            "titledMulti": {
                "type": "array",
                "description": "Multi-select with titled options",
                "items": {
                    "anyOf": titled(
                        ("feature", "New Feature"), ("bug", "Bug Fix"), ("docs", "Documentation")
                    )
                },
            },
            "legacyEnum": {
                "type": "string",
                "description": "Legacy enum with enumNames",
                "enum": ["small", "medium", "large"],
                "enumNames": ["Small Size", "Medium Size", "Large Size"],
            },
        },
        "required": [
            "untitledSingle",
            "titledSingle",
            "untitledMulti",
            "titledMulti",
            "legacyEnum",
        ],
    }
    message = "Please select values using different enum schema types"
    action, content = _answer(await ctx.elicit(message, schema))
    return f"Elicitation completed: action={action}, content={content}"


@app.tool()
async def test_reconnection(ctx: Context) -> str:
    """Tests SSE polling by closing stream mid-call (SEP-1699)"""
    await ctx.log("info", "Before disconnect")
    await ctx.close_stream()
    await trio.sleep(0.2)  # the client reconnects with Last-Event-ID meanwhile
    await ctx.log("info", "After reconnect")
    return "Reconnection test completed"


@app.tool(
    description="Tool with JSON Schema 2020-12 features",
    input_schema={
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {
                "$anchor": "addressDef",
                "type": "object",
                "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
            }
        },
        "properties": {
            "name": {"type": "string"},
            "address": {"$ref": "#/$defs/address"},
            "contactMethod": {"type": "string", "enum": ["phone", "email"]},
            "phone": {"type": "string"},
            "email": {"type": "string"},
        },
        "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
        "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
        "then": {"required": ["phone"]},
        "else": {"required": ["email"]},
        "additionalProperties": False,
    },
)
async def json_schema_2020_12_tool(ctx: Context, **arguments: object) -> str:
    """An explicit input schema is served as given, 2020-12 keywords included (SEP-1613, 2106)."""
    return f"received {sorted(arguments)}"


@app.resource("test://static-text")
async def static_text(ctx: Context) -> str:
    """A static text resource for testing"""
    return "This is the content of the static text resource."


@app.resource("test://static-binary", mime_type="image/png")
async def static_binary(ctx: Context) -> bytes:
    """A static binary resource (image) for testing"""
    return base64.b64decode(PNG_1PX)


@app.resource_template("test://template/{id}/data", mime_type="application/json")
async def template_data(ctx: Context, id: str) -> str:
    """A resource template with parameter substitution"""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@app.resource(WATCHED_URI)
async def watched(ctx: Context) -> str:
    """A resource that can be subscribed to for updates"""
    return "Watched resource content"


@app.prompt()
async def test_simple_prompt(ctx: Context) -> list[dict[str, object]]:
    """A simple prompt without arguments"""
    return [{"role": "user", "content": _text("This is a simple prompt for testing.")}]


@app.prompt()
async def test_prompt_with_arguments(ctx: Context, arg1: str, arg2: str) -> list[dict[str, object]]:
    """A prompt with required arguments"""
    text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
    return [{"role": "user", "content": _text(text)}]


@app.prompt()
async def test_prompt_with_embedded_resource(
    ctx: Context, resourceUri: str
) -> list[dict[str, object]]:
    """A prompt that includes an embedded resource"""
    resource = {
        "uri": resourceUri,
        "mimeType": "text/plain",
        "text": "Embedded resource content for testing.",
    }
    return [
        {"role": "user", "content": {"type": "resource", "resource": resource}},
        {"role": "user", "content": _text("Please process the embedded resource above.")},
    ]


@app.prompt()
async def test_prompt_with_image(ctx: Context) -> list[dict[str, object]]:
    """A prompt that includes image content"""
    return [
        {"role": "user", "content": _image()},
        {"role": "user", "content": _text("Please analyze the image above.")},
    ]


@app.completion("ref/prompt", "test_prompt_with_arguments")
async def complete_arguments(
    ctx: Context, argument: str, value: str, context: dict[str, object]
) -> list[str]:
    options = {"arg1": ["alpha", "apple", "avocado"], "arg2": ["beta", "banana"]}
    return [o for o in options.get(argument, []) if o.startswith(value)]


# -- SEP-2322 input requests (2026-07-28: input_required results; 2025: server requests) ---------


def _object(**properties: str) -> dict[str, object]:
    return {
        "type": "object",
        "properties": {name: {"type": kind} for name, kind in properties.items()},
        "required": list(properties),
    }


def _said(result: dict[str, object]) -> str:
    content = result.get("content")
    text = content.get("text") if isinstance(content, dict) else None
    return text if isinstance(text, str) else ""


def _field(answer: dict[str, object], name: str) -> object:
    content = answer.get("content")
    return content.get(name) if isinstance(content, dict) else None


@app.tool()
async def test_input_required_result_elicitation(ctx: Context) -> str:
    """Asks the user's name through an input request keyed user_name"""
    answer = await ctx.elicit("What is your name?", _object(name="string"), key="user_name")
    return f"Hello, {_field(answer, 'name')}!"


@app.tool()
async def test_input_required_result_sampling(ctx: Context) -> str:
    """Asks the client's model through an input request keyed capital_question"""
    question = [{"role": "user", "content": _text("What is the capital of France?")}]
    result = await ctx.sample(question, max_tokens=100, key="capital_question")
    return f"The model answered: {_said(result)}"


@app.tool()
async def test_input_required_result_list_roots(ctx: Context) -> str:
    """Asks for the client's roots through an input request keyed client_roots"""
    roots = await ctx.list_roots(key="client_roots")
    return "Client roots: " + ", ".join(str(r.get("uri")) for r in roots)


@app.tool()
async def test_input_required_result_request_state(ctx: Context) -> str:
    """Continues only through the requestState it issued"""
    answer = await ctx.elicit("Please confirm", _object(ok="boolean"), key="confirm")
    return f"state-ok: confirmed={_field(answer, 'ok')}"


# the same exchange, for the scenario that alters the requestState before retrying
app.tool(
    "test_input_required_result_tampered_state",
    description="A requestState that was altered is refused",
)(test_input_required_result_request_state)


@app.tool()
async def test_input_required_result_multiple_inputs(ctx: Context) -> str:
    """Asks for three inputs at once"""
    greeting = [{"role": "user", "content": _text("Generate a greeting")}]
    answers = await ctx.ask(
        {
            "user_name": (
                "elicitation/create",
                {"message": "What is your name?", "requestedSchema": _object(name="string")},
            ),
            "greeting": ("sampling/createMessage", {"messages": greeting, "maxTokens": 50}),
            "client_roots": ("roots/list", {}),
        }
    )
    roots = answers["client_roots"].get("roots") or []
    return (
        f"name={_field(answers['user_name'], 'name')}, greeting={_said(answers['greeting'])}, "
        f"roots={len(roots)}"
    )


@app.tool()
async def test_input_required_result_multi_round(ctx: Context) -> str:
    """Asks twice, one round after the other"""
    first = await ctx.elicit("Step 1: What is your name?", _object(name="string"), key="step1")
    second = await ctx.elicit(
        "Step 2: What is your favorite color?", _object(color="string"), key="step2"
    )
    return f"name={_field(first, 'name')}, color={_field(second, 'color')}"


@app.tool()
async def test_input_required_result_capabilities(ctx: Context) -> str:
    """Asks only for what the client declared it supports"""
    wanted: dict[str, tuple[str, dict[str, object]]] = {}
    if "sampling" in ctx.client_capabilities:
        prompt = [{"role": "user", "content": _text("Say hello")}]
        wanted["greeting"] = ("sampling/createMessage", {"messages": prompt, "maxTokens": 20})
    if "elicitation" in ctx.client_capabilities:
        schema = _object(name="string")
        wanted["user_name"] = (
            "elicitation/create",
            {"message": "Name?", "requestedSchema": schema},
        )
    if not wanted:
        return "the client declared neither sampling nor elicitation: nothing to ask"
    answers = await ctx.ask(wanted)
    return "answered: " + ", ".join(sorted(answers))


@app.prompt()
async def test_input_required_result_prompt(ctx: Context) -> list[dict[str, object]]:
    """A prompt that asks the user for its context first"""
    answer = await ctx.elicit(
        "What context should the prompt use?", _object(context="string"), key="user_context"
    )
    text = f"Use this context: {_field(answer, 'context')}"
    return [{"role": "user", "content": _text(text)}]


# -- 2026-07-28 diagnostics ----------------------------------------------------------------------


@app.tool()
async def test_missing_capability(ctx: Context) -> str:
    """Needs sampling: a client that did not declare it gets -32021"""
    prompt = [{"role": "user", "content": _text("Say hello")}]
    result = await ctx.sample(prompt, max_tokens=20, key="greeting")
    return f"The model said: {_said(result)}"


@app.tool()
async def test_streaming_elicitation(ctx: Context) -> str:
    """Reports progress, then asks the user: the stream carries notifications and the input
    request as a result, never an independent request"""
    await ctx.progress(1, 2, "asking")
    answer = await ctx.elicit("What is your name?", _object(name="string"), key="user_name")
    await ctx.progress(2, 2, "answered")
    return f"Hello, {_field(answer, 'name')}!"


@app.tool()
async def test_logging_tool(ctx: Context) -> str:
    """Logs at every level; a 2026 request without a logLevel receives none of it"""
    for level in ("debug", "info", "warning", "error"):
        await ctx.log(level, f"a {level} message")
    return "logged"


@app.tool(
    input_schema={
        "type": "object",
        "properties": {
            "region": {
                "type": "string",
                "description": "Mirrored into the Mcp-Param-Region header (SEP-2243)",
                "x-mcp-header": "Region",
            }
        },
        "required": ["region"],
    }
)
async def test_custom_header(ctx: Context, region: str) -> str:
    """An argument that also travels as an HTTP header, checked against the body"""
    return f"region={region}"


async def _dynamic_tool(ctx: Context) -> str:
    """A tool that the trigger hook adds and removes"""
    return "I come and go"


async def _dynamic_prompt(ctx: Context) -> str:
    """A prompt that the trigger hook adds and removes"""
    return "A prompt that comes and goes."


@app.tool()
async def test_trigger_tool_change(ctx: Context) -> str:
    """Adds or removes the tool test_dynamic_tool: listeners get tools/list_changed"""
    if "test_dynamic_tool" in app.tools:
        app.remove_tool("test_dynamic_tool")
        return "removed test_dynamic_tool"
    app.tool("test_dynamic_tool")(_dynamic_tool)
    return "added test_dynamic_tool"


@app.tool()
async def test_trigger_prompt_change(ctx: Context) -> str:
    """Adds or removes the prompt test_dynamic_prompt: listeners get prompts/list_changed"""
    if "test_dynamic_prompt" in app.prompts:
        app.remove_prompt("test_dynamic_prompt")
        return "removed test_dynamic_prompt"
    app.prompt("test_dynamic_prompt")(_dynamic_prompt)
    return "added test_dynamic_prompt"
