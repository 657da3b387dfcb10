#!/usr/bin/env node
// Encrypts a provider key for smartflow_provider ... key=enc:VALUE, with
// the 256-bit key that smartflow_credentials_key names (AES-256-GCM, a
// random 12-byte nonce, additional data "smartflow-credential-v1").
//
//   scripts/smartflow-credential.mjs --key-file /etc/smartflow/cred.key < secret
//   SMARTFLOW_CREDENTIALS_KEY=<64 hex digits> scripts/smartflow-credential.mjs < secret
//   scripts/smartflow-credential.mjs --new-key     # prints a new random key
//
// The secret is read from standard input (one line; the newline is not
// part of it), never from the command line, where ps would show it.

import { createCipheriv, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';

const args = process.argv.slice(2);

if (args[0] === '--new-key') {
    process.stdout.write(randomBytes(32).toString('hex') + '\n');
    process.exit(0);
}

let hex = process.env.SMARTFLOW_CREDENTIALS_KEY;
if (args[0] === '--key-file' && args[1]) {
    hex = readFileSync(args[1], 'utf8');
}
hex = (hex || '').trim();

if (!/^[0-9a-fA-F]{64}$/.test(hex)) {
    process.stderr.write('smartflow-credential: the key must be 64 hex digits '
        + '(--key-file PATH or SMARTFLOW_CREDENTIALS_KEY)\n');
    process.exit(2);
}

const secret = readFileSync(0, 'utf8').replace(/\r?\n$/, '');
if (secret.length === 0) {
    process.stderr.write('smartflow-credential: no secret on standard input\n');
    process.exit(2);
}

const nonce = randomBytes(12);
const cipher = createCipheriv('aes-256-gcm', Buffer.from(hex, 'hex'), nonce);
cipher.setAAD(Buffer.from('smartflow-credential-v1'));
const body = Buffer.concat([cipher.update(secret, 'utf8'), cipher.final()]);
const value = Buffer.concat([nonce, body, cipher.getAuthTag()]).toString('base64');

process.stdout.write(`enc:${value}\n`);
