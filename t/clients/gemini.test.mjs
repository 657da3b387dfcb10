// The official OpenAI and Anthropic SDKs for Node.js asking a running
// Smartflow gateway for Gemini models: the gateway translates both formats
// to Gemini's generateContent (and streamGenerateContent?alt=sse) and back.
//
//   SMARTFLOW_OPENAI_BASE_URL=http://127.0.0.1:1989/v1 \
//   SMARTFLOW_ANTHROPIC_BASE_URL=http://127.0.0.1:1989/anthropic \
//   SMARTFLOW_KEY=sk-... SMARTFLOW_GEMINI_KEY=gm-... \
//       node --test t/clients/gemini.test.mjs
//
// The gateway routes gemini-* to a Gemini-shaped provider (the mock,
// t/lib/mock_provider.js), gemini-broken to a Gemini provider nobody
// listens for, gemini-fallback to that one first and the mock after it,
// and gemini-length and gemini-blocked to canned Gemini answers.
// t/clients/003-gemini-sdk.t sets all of this up.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import {
    gatewayEnv, openaiClient, anthropicClient, user, weatherTool,
    weatherFunction, expectError, anthropicBody, collectChat, collectMessage,
} from './sdk.mjs';

const {
    SMARTFLOW_OPENAI_BASE_URL: OPENAI_BASE_URL,
    SMARTFLOW_ANTHROPIC_BASE_URL: ANTHROPIC_BASE_URL,
    SMARTFLOW_KEY: KEY,
    SMARTFLOW_GEMINI_KEY: GEMINI_KEY,
} = gatewayEnv('SMARTFLOW_OPENAI_BASE_URL', 'SMARTFLOW_ANTHROPIC_BASE_URL', 'SMARTFLOW_KEY',
    'SMARTFLOW_GEMINI_KEY');

const MODEL = 'gemini-2.0-flash';

const openai = openaiClient(OPENAI_BASE_URL, KEY);
const anthropic = anthropicClient(ANTHROPIC_BASE_URL, KEY);


test('OpenAI SDK: a chat completion from a Gemini model', async () => {
    const { data, response } = await openai().chat.completions.create({
        model: MODEL,
        messages: [
            { role: 'system', content: 'You are terse.' },
            { role: 'user', content: 'Hello gateway' },
        ],
    }).withResponse();

    assert.equal(response.status, 200);
    assert.equal(response.headers.get('x-mock-path'), `/v1beta/models/${MODEL}:generateContent`);
    assert.equal(response.headers.get('x-mock-api-key'), GEMINI_KEY);
    assert.equal(response.headers.get('x-mock-authorization'), '');
    assert.equal(response.headers.get('x-smartflow-deployment'), 'gemini/gemini-*');
    assert.equal(data.object, 'chat.completion');
    assert.equal(data.model, MODEL);
    assert.match(data.id, /^chatcmpl-/);
    assert.equal(data.choices.length, 1);
    assert.equal(data.choices[0].index, 0);
    assert.equal(data.choices[0].message.role, 'assistant');
    assert.equal(data.choices[0].message.content, 'mock reply to: Hello gateway');
    assert.equal(data.choices[0].finish_reason, 'stop');
    assert.deepEqual(data.usage, { prompt_tokens: 5, completion_tokens: 5, total_tokens: 10 });
});

test('OpenAI SDK: a multi-turn conversation to a Gemini model', async () => {
    const reply = await openai().chat.completions.create({
        model: MODEL,
        messages: [
            { role: 'user', content: 'What is 2+2?' },
            { role: 'assistant', content: '4' },
            { role: 'user', content: [{ type: 'text', text: 'And 3+3?' }] },
        ],
    });
    assert.equal(reply.choices[0].message.content, 'mock reply to: And 3+3?');
    assert.equal(reply.usage.prompt_tokens, 6);
});

test('OpenAI SDK: a streamed chat completion from a Gemini model', async () => {
    const { data: stream, response } = await openai().chat.completions.create({
        model: MODEL, messages: user('stream me please'), stream: true,
    }).withResponse();

    assert.match(response.headers.get('content-type'), /^text\/event-stream/);
    assert.equal(response.headers.get('x-accel-buffering'), 'no');
    assert.equal(response.headers.get('x-mock-path'), `/v1beta/models/${MODEL}:streamGenerateContent?alt=sse`);

    const { chunks, text } = await collectChat(stream);
    assert.equal(text, 'mock reply to: stream me please');
    for (const c of chunks) {
        assert.equal(c.object, 'chat.completion.chunk');
        assert.equal(c.model, MODEL);
        assert.equal(c.id, chunks[0].id);
        assert.ok(!c.usage, 'no usage without stream_options');
    }
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
});

test('OpenAI SDK: include_usage ends a Gemini stream with the exact usage', async () => {
    const stream = await openai().chat.completions.create({
        model: MODEL, messages: user('count my tokens'), stream: true,
        stream_options: { include_usage: true },
    });
    const { chunks, text } = await collectChat(stream);

    assert.equal(text, 'mock reply to: count my tokens');
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, []);
    assert.deepEqual(last.usage, { prompt_tokens: 3, completion_tokens: 6, total_tokens: 9 });
    assert.equal(chunks.at(-2).choices[0].finish_reason, 'stop');
    for (const c of chunks.slice(0, -1)) assert.equal(c.usage ?? null, null);
});

test('OpenAI SDK: a Gemini stream in 3-byte pieces', async () => {
    const reply = 'split across packets, caf\u00e9 \u{1f600}';
    const stream = await openai().chat.completions.create(
        { model: MODEL, messages: user(reply), stream: true },
        { headers: { 'x-mock-split': '3' } },
    );
    const { text } = await collectChat(stream);
    assert.equal(text, `mock reply to: ${reply}`);
});

test('OpenAI SDK: the stream helper gathers a Gemini answer', async () => {
    const runner = openai().chat.completions.stream({
        model: MODEL, messages: user('helper please'), stream_options: { include_usage: true },
    });
    const final = await runner.finalChatCompletion();
    assert.equal(final.choices[0].message.content, 'mock reply to: helper please');
    assert.equal(final.choices[0].finish_reason, 'stop');
    assert.deepEqual(final.usage, { prompt_tokens: 2, completion_tokens: 5, total_tokens: 7 });
});

test('OpenAI SDK: a Gemini function call, arguments as JSON', async () => {
    const reply = await openai().chat.completions.create({
        model: MODEL, tools: [weatherFunction], tool_choice: 'auto',
        messages: user('What is the weather in Paris?'),
    });
    const { message, finish_reason: finish } = reply.choices[0];
    assert.equal(finish, 'tool_calls');
    assert.equal(message.content, null);
    assert.equal(message.tool_calls.length, 1);
    const [call] = message.tool_calls;
    assert.equal(call.type, 'function');
    assert.match(call.id, /^call_/);
    assert.equal(call.function.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.function.arguments), { location: 'Paris' });
    assert.deepEqual(reply.usage, { prompt_tokens: 6, completion_tokens: 3, total_tokens: 9 });
});

test('OpenAI SDK: a streamed Gemini function call, through the stream helper', async () => {
    const final = await openai().chat.completions.stream({
        model: MODEL, tools: [weatherFunction],
        messages: user('What is the weather in Paris?'),
    }).finalChatCompletion();

    const { message, finish_reason: finish } = final.choices[0];
    assert.equal(finish, 'tool_calls');
    assert.equal(message.tool_calls.length, 1);
    assert.match(message.tool_calls[0].id, /^call_/);
    assert.equal(message.tool_calls[0].function.name, 'get_weather');
    assert.deepEqual(JSON.parse(message.tool_calls[0].function.arguments), { location: 'Paris' });
});

test('OpenAI SDK: the tool result goes back to a Gemini model', async () => {
    const c = openai();
    const question = user('What is the weather in Paris?');
    const first = await c.chat.completions.create({
        model: MODEL, tools: [weatherFunction], messages: question,
    });
    const { message } = first.choices[0];
    assert.equal(message.tool_calls?.length, 1, 'a tool call to answer');

    const reply = await c.chat.completions.create({
        model: MODEL,
        tools: [weatherFunction],
        messages: [
            ...question,
            message,
            { role: 'tool', tool_call_id: message.tool_calls[0].id, content: '18 degrees, sunny' },
        ],
    });
    assert.equal(reply.choices[0].finish_reason, 'stop');
    assert.equal(reply.choices[0].message.content, 'mock reply to: What is the weather in Paris?');
});

test('OpenAI SDK: Gemini stop reasons: MAX_TOKENS is length, SAFETY content_filter', async () => {
    const c = openai();
    const cut = await c.chat.completions.create({ model: 'gemini-length', max_tokens: 3, messages: user('say a lot') });
    assert.equal(cut.choices[0].finish_reason, 'length');
    assert.equal(cut.choices[0].message.content, 'cut sho');
    assert.deepEqual(cut.usage, { prompt_tokens: 4, completion_tokens: 3, total_tokens: 7 });

    const streamed = await c.chat.completions.create({
        model: 'gemini-length', max_tokens: 3, messages: user('say a lot'), stream: true,
        stream_options: { include_usage: true },
    });
    const { chunks, text } = await collectChat(streamed);
    assert.equal(text, 'cut sho');
    assert.equal(chunks.at(-2).choices[0].finish_reason, 'length');
    assert.deepEqual(chunks.at(-1).usage, { prompt_tokens: 4, completion_tokens: 3, total_tokens: 7 });

    const blocked = await c.chat.completions.create({ model: 'gemini-blocked', messages: user('something bad') });
    assert.equal(blocked.choices[0].finish_reason, 'content_filter');
});

test('OpenAI SDK: a Gemini provider\'s 429 is a RateLimitError with its Retry-After', async () => {
    const err = await expectError(
        openai().chat.completions.create({ model: MODEL, messages: user('hi') },
            { headers: { 'x-mock-status': '429', 'x-mock-retry-after': '7' } }),
        OpenAI.RateLimitError, { status: 429, code: 'rate_limit_exceeded', type: 'rate_limit_error' });
    assert.equal(err.headers.get('retry-after'), '7');
    assert.match(err.message, /Resource has been exhausted/);

    // on a stream request too, before any event
    await expectError(
        openai().chat.completions.create({ model: MODEL, messages: user('hi'), stream: true },
            { headers: { 'x-mock-status': '429' } }),
        OpenAI.RateLimitError, { status: 429, code: 'rate_limit_exceeded' });
});

test('OpenAI SDK: a Gemini provider\'s other errors as the SDK error classes', async () => {
    const c = openai();
    const req = { model: MODEL, messages: user('hi') };

    await expectError(c.chat.completions.create(req, { headers: { 'x-mock-status': '400' } }),
        OpenAI.BadRequestError, { status: 400, type: 'invalid_request_error' });
    await expectError(c.chat.completions.create(req, { headers: { 'x-mock-status': '403' } }),
        OpenAI.PermissionDeniedError, { status: 403, type: 'permission_error' });
    await expectError(c.chat.completions.create(req, { headers: { 'x-mock-status': '503' } }),
        OpenAI.InternalServerError, { status: 503, code: 'overloaded', type: 'api_error' });
    await expectError(
        c.chat.completions.create({ ...req, stream: true }, { headers: { 'x-mock-status': '500' } }),
        OpenAI.InternalServerError, { status: 500, type: 'api_error' });
});

test('OpenAI SDK: a Gemini stream that breaks fails the iteration', async () => {
    const stream = await openai().chat.completions.create(
        { model: MODEL, messages: user('this stream will be cut short'), stream: true },
        { headers: { 'x-mock-drop': 'mid-stream', 'x-mock-chunk-delay-ms': '5' } },
    );
    let text = '';
    const err = await expectError((async () => {
        for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
    })(), OpenAI.APIError);
    assert.match(err.message, /stream ended before completion/);
    assert.ok('mock reply to: this stream will be cut short'.startsWith(text), text);
});

test('OpenAI SDK: an unreachable Gemini provider is a 502, a fallback deployment answers', async () => {
    const err = await expectError(
        openai().chat.completions.create({ model: 'gemini-broken', messages: user('anyone?') }),
        OpenAI.InternalServerError, { status: 502, code: 'upstream_unreachable' });
    assert.match(err.message, /gdown/);

    const { data, response } = await openai().chat.completions.create({
        model: 'gemini-fallback', messages: user('anyone?'),
    }).withResponse();
    assert.equal(response.headers.get('x-smartflow-deployment'), 'gemini/gemini-2.0-flash');
    assert.equal(data.model, 'gemini-fallback');
    assert.equal(data.choices[0].message.content, 'mock reply to: anyone?');
});

test('OpenAI SDK: completions and embeddings of a Gemini model are refused', async () => {
    await expectError(openai().completions.create({ model: MODEL, prompt: 'hi' }),
        OpenAI.BadRequestError, { status: 400, code: 'unsupported_model', param: 'model' });
    await expectError(openai().embeddings.create({ model: MODEL, input: 'hi' }),
        OpenAI.BadRequestError, { status: 400, code: 'unsupported_model', param: 'model' });
});

// ------------------------------------------------------------ Anthropic SDK

test('Anthropic SDK: a message from a Gemini model', async () => {
    const { data, response } = await anthropic().messages.create({
        model: MODEL,
        max_tokens: 64,
        system: 'You are terse.',
        messages: user('Hello gateway'),
    }).withResponse();

    assert.equal(response.status, 200);
    assert.equal(response.headers.get('x-mock-path'), `/v1beta/models/${MODEL}:generateContent`);
    assert.equal(response.headers.get('x-mock-api-key'), GEMINI_KEY);
    assert.equal(data.type, 'message');
    assert.equal(data.role, 'assistant');
    assert.equal(data.model, MODEL);
    assert.match(data.id, /^msg_/);
    assert.deepEqual(data.content, [{ type: 'text', text: 'mock reply to: Hello gateway' }]);
    assert.equal(data.stop_reason, 'end_turn');
    assert.equal(data.stop_sequence, null);
    assert.equal(data.usage.input_tokens, 5);
    assert.equal(data.usage.output_tokens, 5);
});

test('Anthropic SDK: a Gemini stream, event by event', async () => {
    const stream = anthropic().messages.stream({
        model: MODEL, max_tokens: 64, messages: user('stream me please'),
    });
    const events = [];
    stream.on('streamEvent', (event) => events.push(event.type));
    const { texts, message } = await collectMessage(stream);

    assert.deepEqual(texts, ['mock', ' reply', ' to:', ' stream', ' me', ' please']);
    assert.equal(events[0], 'message_start');
    assert.ok(events.includes('content_block_start'), events.join(' '));
    assert.ok(events.includes('content_block_stop'), events.join(' '));
    assert.equal(events.at(-2), 'message_delta');
    assert.equal(events.at(-1), 'message_stop');
    assert.match(message.id, /^msg_/);
    assert.equal(message.model, MODEL);
    assert.equal(message.content.length, 1);
    assert.equal(message.content[0].type, 'text');
    assert.equal(message.content[0].text, 'mock reply to: stream me please');
    assert.equal(message.stop_reason, 'end_turn');
    // exact usage from the provider, carried by message_delta
    assert.equal(message.usage.input_tokens, 3);
    assert.equal(message.usage.output_tokens, 6);
});

test('Anthropic SDK: a Gemini stream in 5-byte pieces', async () => {
    const stream = anthropic().messages.stream(
        { model: MODEL, max_tokens: 64, messages: user('split across packets, caf\u00e9 \u{1f600}') },
        { headers: { 'x-mock-split': '5' } },
    );
    const { texts, message } = await collectMessage(stream);
    assert.equal(texts.join(''), 'mock reply to: split across packets, caf\u00e9 \u{1f600}');
    assert.equal(message.content[0].text, 'mock reply to: split across packets, caf\u00e9 \u{1f600}');
    assert.equal(message.usage.output_tokens, 8);
});

test('Anthropic SDK: a Gemini function call is a tool_use block, input parsed', async () => {
    const message = await anthropic().messages.create({
        model: MODEL, max_tokens: 64, tools: [weatherTool],
        tool_choice: { type: 'auto' },
        messages: user('What is the weather in Paris?'),
    });
    assert.equal(message.stop_reason, 'tool_use');
    assert.equal(message.content.length, 1);
    const [block] = message.content;
    assert.equal(block.type, 'tool_use');
    assert.match(block.id, /^call_/);
    assert.equal(block.name, 'get_weather');
    assert.deepEqual(block.input, { location: 'Paris' });
    assert.equal(message.usage.output_tokens, 3);
});

test('Anthropic SDK: a streamed Gemini function call', async () => {
    const stream = anthropic().messages.stream({
        model: MODEL, max_tokens: 64, tools: [weatherTool],
        messages: user('What is the weather in Paris?'),
    });
    const pieces = [];
    stream.on('inputJson', (partial) => pieces.push(partial));
    const message = await stream.finalMessage();

    assert.equal(pieces.join(''), '{"location":"Paris"}');
    assert.equal(message.stop_reason, 'tool_use');
    assert.equal(message.content[0].type, 'tool_use');
    assert.equal(message.content[0].name, 'get_weather');
    assert.deepEqual(message.content[0].input, { location: 'Paris' });
});

test('Anthropic SDK: the tool result goes back to a Gemini model', async () => {
    const c = anthropic();
    const question = user('What is the weather in Paris?');
    const first = await c.messages.create({
        model: MODEL, max_tokens: 64, tools: [weatherTool], messages: question,
    });
    const call = first.content.find((b) => b.type === 'tool_use');
    assert.ok(call, 'a tool_use block');

    const { data, response } = await c.messages.create({
        model: MODEL,
        max_tokens: 64,
        tools: [weatherTool],
        messages: [
            ...question,
            { role: 'assistant', content: first.content },
            { role: 'user', content: [{ type: 'tool_result', tool_use_id: call.id, content: '18 degrees, sunny' }] },
        ],
    }).withResponse();

    assert.equal(response.status, 200);
    assert.equal(data.stop_reason, 'end_turn');
    assert.equal(data.content[0].text, 'mock reply to: What is the weather in Paris?');
});

test('Anthropic SDK: Gemini stop reasons: MAX_TOKENS is max_tokens, SAFETY a refusal', async () => {
    const c = anthropic();
    const cut = await c.messages.create({ model: 'gemini-length', max_tokens: 3, messages: user('say a lot') });
    assert.equal(cut.stop_reason, 'max_tokens');
    assert.equal(cut.content[0].text, 'cut sho');
    assert.equal(cut.usage.input_tokens, 4);
    assert.equal(cut.usage.output_tokens, 3);

    const { texts, message } = await collectMessage(c.messages.stream({
        model: 'gemini-length', max_tokens: 3, messages: user('say a lot'),
    }));
    assert.equal(texts.join(''), 'cut sho');
    assert.equal(message.stop_reason, 'max_tokens');
    assert.equal(message.usage.output_tokens, 3);

    const blocked = await c.messages.create({ model: 'gemini-blocked', max_tokens: 8, messages: user('something bad') });
    assert.equal(blocked.stop_reason, 'refusal');
});

test('Anthropic SDK: a Gemini provider\'s 429 is a RateLimitError with its Retry-After', async () => {
    const err = await expectError(
        anthropic().messages.create({ model: MODEL, max_tokens: 8, messages: user('hi') },
            { headers: { 'x-mock-status': '429', 'x-mock-retry-after': '7' } }),
        Anthropic.RateLimitError, { status: 429 });
    const body = anthropicBody(err);
    assert.equal(body.type, 'rate_limit_error');
    assert.equal(body.message, 'Resource has been exhausted (e.g. check quota).');
    assert.equal(err.headers.get('retry-after'), '7');
});

test('Anthropic SDK: a Gemini provider\'s other errors as the SDK error classes', async () => {
    const c = anthropic();
    const req = { model: MODEL, max_tokens: 8, messages: user('hi') };

    let err = await expectError(c.messages.create(req, { headers: { 'x-mock-status': '400' } }),
        Anthropic.BadRequestError, { status: 400 });
    assert.equal(anthropicBody(err).type, 'invalid_request_error');

    err = await expectError(c.messages.create(req, { headers: { 'x-mock-status': '503' } }),
        Anthropic.InternalServerError, { status: 503 });
    assert.equal(anthropicBody(err).type, 'overloaded_error');

    err = await expectError(c.messages.create({ ...req, stream: true }, { headers: { 'x-mock-status': '500' } }),
        Anthropic.InternalServerError, { status: 500 });
    assert.equal(anthropicBody(err).type, 'api_error');

    err = await expectError(
        c.messages.create({ model: 'gemini-broken', max_tokens: 8, messages: user('anyone?') }),
        Anthropic.InternalServerError, { status: 502 });
    assert.equal(anthropicBody(err).type, 'api_error');
    assert.match(anthropicBody(err).message, /could not be reached/);
});

test('Anthropic SDK: a Gemini stream that breaks fails the SDK stream with an api_error', async () => {
    const stream = anthropic().messages.stream(
        { model: MODEL, max_tokens: 64, messages: user('this stream will be cut short') },
        { headers: { 'x-mock-drop': 'mid-stream', 'x-mock-chunk-delay-ms': '5' } },
    );
    const texts = [];
    stream.on('text', (t) => texts.push(t));
    const err = await expectError(stream.finalMessage(), Anthropic.APIError);
    assert.equal(err.error?.error?.type, 'api_error', err.message);
    assert.match(err.error.error.message, /stream ended before completion/);
    assert.ok('mock reply to: this stream will be cut short'.startsWith(texts.join('')), texts.join(''));
});
