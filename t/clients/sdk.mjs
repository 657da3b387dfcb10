// What the SDK client tests share: the gateway named by the environment,
// clients of the official SDKs that fail fast, the requests they repeat,
// and the helpers that collect streams and check errors.
//
//     import { gatewayEnv, openaiClient, user, expectError } from './sdk.mjs';

import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';

// The named environment variables, all of which must be set: the .t file
// that runs the test sets them to the gateway it started.
export function gatewayEnv(...names) {
    const missing = names.filter((name) => !process.env[name]);
    if (missing.length) {
        throw new Error(`${names.join(', ')} must name a running gateway `
            + `(unset: ${missing.join(', ')})`);
    }
    return Object.fromEntries(names.map((name) => [name, process.env[name]]));
}

// Clients that fail fast: no retries, so an error status shows at once.
// Each returns a function of the client's further options.
const fast = { maxRetries: 0, timeout: 20000 };

export function openaiClient(baseURL, apiKey) {
    return (options = {}) => new OpenAI({ baseURL, apiKey, ...fast, ...options });
}

export function anthropicClient(baseURL, apiKey) {
    return (options = {}) => new Anthropic({ baseURL, apiKey, ...fast, ...options });
}

export const user = (content) => [{ role: 'user', content }];

// The same tool in both APIs' shapes.
export const weatherTool = {
    name: 'get_weather',
    description: 'The current weather of a city',
    input_schema: {
        type: 'object',
        properties: { location: { type: 'string' } },
        required: ['location'],
    },
};

export const weatherFunction = {
    type: 'function',
    function: {
        name: 'get_weather',
        description: 'The current weather of a city',
        parameters: weatherTool.input_schema,
    },
};

// Asserts that `promise` rejects with an instance of `Class` and the given
// fields (status, code, param, type ...); returns the error.
export async function expectError(promise, Class, fields = {}) {
    let error;
    try {
        await promise;
    } catch (err) {
        error = err;
    }
    assert.ok(error, `expected ${Class.name}, the call succeeded`);
    assert.ok(error instanceof Class,
        `expected ${Class.name}, got ${error.constructor.name}: ${error.message}`);
    for (const [name, value] of Object.entries(fields)) {
        assert.equal(error[name], value, `error.${name} (${error.message})`);
    }
    return error;
}

// The error body of an Anthropic SDK error: { type: 'error', error: { type, message } }.
export function anthropicBody(err) {
    assert.equal(err.error?.type, 'error', `error body: ${JSON.stringify(err.error)}`);
    return err.error.error;
}

// Collects a chat stream: the chunks and the text their deltas carry.
export async function collectChat(stream) {
    const chunks = [];
    let text = '';
    for await (const chunk of stream) {
        chunks.push(chunk);
        for (const choice of chunk.choices) text += choice.delta?.content ?? '';
    }
    return { chunks, text };
}

// Collects a legacy completions stream: the chunks and their text.
export async function collectCompletion(stream) {
    const chunks = [];
    let text = '';
    for await (const chunk of stream) {
        chunks.push(chunk);
        for (const choice of chunk.choices) text += choice.text ?? '';
    }
    return { chunks, text };
}

// Collects an Anthropic message stream: the text events and the final message.
export async function collectMessage(stream) {
    const texts = [];
    stream.on('text', (delta) => texts.push(delta));
    const message = await stream.finalMessage();
    return { texts, message };
}
