// Virtual keys through the official Anthropic SDK for Node.js, on the
// gateway's native /anthropic endpoint: the SDK's error classes and the
// Anthropic error body for a wrong, revoked or out-of-scope key, for rate
// limits and budgets, with the key sent as x-api-key (the SDK's apiKey) or
// as a bearer token (its authToken).
//
//   SMARTFLOW_ANTHROPIC_BASE_URL=http://127.0.0.1:1987/anthropic \
//   SMARTFLOW_ADMIN_URL=http://127.0.0.1:1987/api/auth/virtual-keys \
//   SMARTFLOW_KEY=<master key> node --test t/clients/keys-anthropic.test.mjs
//
// The gateway routes smartflow-echo and other-echo to the built-in echo
// provider; t/clients/005-keys-anthropic-sdk.t sets it up.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';

const BASE_URL = process.env.SMARTFLOW_ANTHROPIC_BASE_URL;
const ADMIN_URL = process.env.SMARTFLOW_ADMIN_URL;
const MASTER = process.env.SMARTFLOW_KEY;

if (!BASE_URL || !ADMIN_URL || !MASTER) {
    throw new Error('SMARTFLOW_ANTHROPIC_BASE_URL, SMARTFLOW_ADMIN_URL and '
        + 'SMARTFLOW_KEY must name a running gateway');
}

// no retries: the SDK would otherwise retry a 429 by itself
const client = (apiKey) => new Anthropic({ baseURL: BASE_URL, apiKey, maxRetries: 0, timeout: 20000 });
const bearer = (authToken) => new Anthropic({ baseURL: BASE_URL, apiKey: null, authToken, maxRetries: 0, timeout: 20000 });

const hello = { model: 'smartflow-echo', max_tokens: 64, messages: [{ role: 'user', content: 'hello' }] };

let names = 0;

async function createKey(fields = {}) {
    const res = await fetch(ADMIN_URL, {
        method: 'POST',
        headers: { authorization: `Bearer ${MASTER}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name: `anthropic-sdk-${process.pid}-${++names}`, ...fields }),
    });
    assert.equal(res.status, 201);
    const key = await res.json();
    assert.match(key.key, /^sk-sf-[0-9a-f]{48}$/);
    return key;
}

// Asserts that `promise` rejects with an instance of `Class`, the status,
// and an Anthropic error body of the given type; returns the error.
async function expectError(promise, Class, status, type) {
    let error;
    try {
        await promise;
    } catch (err) {
        error = err;
    }
    assert.ok(error, `expected ${Class.name}, the call succeeded`);
    assert.ok(error instanceof Class,
        `expected ${Class.name}, got ${error.constructor.name}: ${error.message}`);
    assert.equal(error.status, status);
    assert.equal(error.error?.type, 'error', JSON.stringify(error.error));
    assert.equal(error.error?.error?.type, type, JSON.stringify(error.error));
    assert.equal(typeof error.error.error.message, 'string');
    return error;
}

test('a virtual key works as x-api-key and as a bearer token', async () => {
    const key = await createKey({ team: 'anthropic-sdk' });
    for (const sdk of [client(key.key), bearer(key.key)]) {
        const msg = await sdk.messages.create(hello);
        assert.equal(msg.type, 'message');
        assert.equal(msg.content[0].text, 'Echo: hello');
    }
});

test('an unknown key is an AuthenticationError', async () => {
    await expectError(client('sk-sf-' + '0'.repeat(48)).messages.create(hello),
        Anthropic.AuthenticationError, 401, 'authentication_error');
    await expectError(bearer('sk-sf-' + '1'.repeat(48)).messages.create(hello),
        Anthropic.AuthenticationError, 401, 'authentication_error');
});

test('a revoked key is an AuthenticationError that says so', async () => {
    const key = await createKey();
    await client(key.key).messages.create(hello);

    const res = await fetch(`${ADMIN_URL}/${key.id}`, {
        method: 'DELETE', headers: { authorization: `Bearer ${MASTER}` },
    });
    assert.equal(res.status, 200);

    const err = await expectError(client(key.key).messages.create(hello),
        Anthropic.AuthenticationError, 401, 'authentication_error');
    assert.match(err.error.error.message, /has been revoked/);
});

test('an expired key is an AuthenticationError', async () => {
    const key = await createKey({ expires_at: '2020-01-01T00:00:00Z' });
    await expectError(client(key.key).messages.create(hello),
        Anthropic.AuthenticationError, 401, 'authentication_error');
});

test('a model outside the key is a PermissionDeniedError', async () => {
    const key = await createKey({ models: ['smartflow-*'] });
    const err = await expectError(
        client(key.key).messages.create({ ...hello, model: 'other-echo' }),
        Anthropic.PermissionDeniedError, 403, 'permission_error');
    assert.match(err.error.error.message, /other-echo/);

    // the models it may use still work
    const msg = await client(key.key).messages.create(hello);
    assert.equal(msg.content[0].text, 'Echo: hello');
});

test('requests per minute: the headers, then a RateLimitError with Retry-After', async () => {
    const key = await createKey({ rpm: 2, tpm: 100000 });
    const sdk = client(key.key);

    const { response } = await sdk.messages.create(hello).withResponse();
    assert.equal(response.headers.get('x-ratelimit-limit-requests'), '2');
    assert.equal(response.headers.get('x-ratelimit-remaining-requests'), '1');

    await sdk.messages.create(hello);

    const err = await expectError(sdk.messages.create(hello),
        Anthropic.RateLimitError, 429, 'rate_limit_error');
    assert.match(err.headers['retry-after'] ?? err.headers.get?.('retry-after'), /^\d+$/);
    assert.match(err.error.error.message, /requests per min/);
});

test('a streamed request over its limit fails before any event', async () => {
    const key = await createKey({ rpm: 1 });
    const sdk = client(key.key);

    const stream = await sdk.messages.create({ ...hello, stream: true });
    let text = '';
    for await (const ev of stream) {
        if (ev.type === 'content_block_delta') {
            text += ev.delta.text;
        }
    }
    assert.equal(text, 'Echo: hello');

    await expectError(sdk.messages.create({ ...hello, stream: true }),
        Anthropic.RateLimitError, 429, 'rate_limit_error');
});

test('a spent budget is a RateLimitError', async () => {
    const key = await createKey({ budget_usd: 0 });
    const err = await expectError(client(key.key).messages.create(hello),
        Anthropic.RateLimitError, 429, 'rate_limit_error');
    assert.match(err.error.error.message, /budget/i);
});

test('the admin API refuses a virtual key', async () => {
    const key = await createKey();
    const res = await fetch(ADMIN_URL, { headers: { 'x-api-key': key.key } });
    assert.equal(res.status, 403);
});
