#!/usr/bin/python3
"""Precision and recall of the policy module's detectors, measured on the
C sources the module is built from (build/unit/policy_harness, made by
`make policy-harness`):

  - the labelled corpora in t/policy/corpus/ (one per detector, with hard
    negatives);
  - card, IBAN and SSN numbers generated here, checked against Debian's
    python3-stdnum, alone and inside sentences;
  - ../shared/testdata/injection/ (in-the-wild jailbreaks against benign
    prompts, CyberSecEval prompt injections) and
    ../shared/testdata/destructive/ (agreement with the corpus's verdicts
    per category; every difference is listed with the reason given for it
    in t/policy/shield-differences.txt).

Prints a table; with --json, a summary the suite checks.  Usage:
    t/policy/measure.py [--json] [--threshold N] [--shared DIR]
"""

import argparse
import json
import os
import random
import subprocess
import sys

import stdnum.iban
import stdnum.luhn
import stdnum.us.ssn

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
CORPUS = os.path.join(TOP, 't', 'policy', 'corpus')
HARNESS = os.path.join(os.environ.get('BUILD', os.path.join(TOP, 'build')),
                       'unit', 'policy_harness')


class Harness:
    def __init__(self):
        self.p = subprocess.Popen([HARNESS], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE)

    def ask(self, mode, text):
        b = text.encode('utf-8') if isinstance(text, str) else text
        self.p.stdin.write(b'%s %d\n' % (mode.encode(), len(b)) + b)
        self.p.stdin.flush()
        return self.p.stdout.readline().decode().strip()

    def pii(self, text):
        b = text.encode('utf-8')
        out = []
        for item in self.ask('pii', b).split():
            rule, s, e = item.split(':')
            out.append((rule, b[int(s):int(e)].decode('utf-8', 'replace')))
        return out


def rows(path):
    """JSON lines.  The shared files hold a few lines that their sampler
    split at U+2028: the pieces that parse are rows, the others are
    counted as unreadable."""
    out, bad = [], 0
    with open(path, encoding='utf-8') as f:
        for line in f:
            line = line.rstrip('\n')
            if not line:
                continue
            try:
                out.append(json.loads(line))
                continue
            except ValueError:
                pass
            for piece in line.split('\u2028'):
                try:
                    out.append(json.loads(piece))
                except ValueError:
                    bad += 1
    return out, bad


class Score:
    def __init__(self):
        self.tp = self.fp = self.fn = 0

    def add(self, found, expected):
        f, e = list(found), list(expected)
        for v in f:
            if v in e:
                e.remove(v)
                self.tp += 1
            else:
                self.fp += 1
        self.fn += len(e)

    def precision(self):
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    def recall(self):
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


# -------------------------------------------------------------- generators

ISSUERS = [('4', 16), ('4', 13), ('51', 16), ('55', 16), ('2221', 16),
           ('2720', 16), ('34', 15), ('37', 15), ('6011', 16), ('65', 16),
           ('644', 16), ('3528', 16), ('3589', 19), ('36', 14),
           ('300', 14), ('62', 17)]

TEMPLATES = ['Please charge {} for the order.', 'card: {}',
             'My number is {}, thanks', '({})', 'pay with {} now']


def card_number(rng, valid):
    prefix, n = rng.choice(ISSUERS)
    body = prefix + ''.join(rng.choice('0123456789')
                            for _ in range(n - len(prefix) - 1))
    check = stdnum.luhn.calc_check_digit(body)
    if not valid:
        check = str((int(check) + rng.randint(1, 9)) % 10)
    return body + check


def card_format(rng, num):
    style = rng.randint(0, 2)
    if style == 0 or len(num) != 16:
        return num
    sep = ' ' if style == 1 else '-'
    return sep.join(num[i:i + 4] for i in range(0, 16, 4))


IBAN_COUNTRIES = {'DE': 18, 'AT': 16, 'CH': 17, 'PL': 24, 'HU': 24,
                  'CZ': 20, 'SK': 20, 'SE': 20, 'DK': 14, 'FI': 14,
                  'NO': 11, 'PT': 21, 'ES': 20, 'BE': 12, 'HR': 17,
                  'SI': 15, 'LT': 16, 'EE': 16, 'RS': 18, 'TR': 22}


def iban_number(rng):
    country = rng.choice(sorted(IBAN_COUNTRIES))
    bban = ''.join(rng.choice('0123456789')
                   for _ in range(IBAN_COUNTRIES[country]))
    return country + stdnum.iban.calc_check_digits(country + '00' + bban) \
        + bban


def iban_format(rng, num):
    if rng.random() < 0.5:
        return num
    return ' '.join(num[i:i + 4] for i in range(0, len(num), 4))


def corrupt_digit(rng, num, start):
    idx = [i for i in range(start, len(num)) if num[i].isdigit()]
    i = rng.choice(idx)
    d = str((int(num[i]) + rng.randint(1, 9)) % 10)
    return num[:i] + d + num[i + 1:]


# -------------------------------------------------------------- measures

def measure_pii(h, rng, res):
    table = {}
    for rule in ('email', 'phone', 'card', 'iban', 'ssn', 'ip', 'secret'):
        sc = Score()
        data, _ = rows(os.path.join(CORPUS, rule + '.jsonl'))
        for r in data:
            found = [v for k, v in h.pii(r['text']) if k == rule]
            sc.add(found, r['expect'])
        table[rule] = sc

    # generated numbers in sentences: valid ones found, invalid ones not
    gen = {'card': Score(), 'iban': Score(), 'ssn': Score()}
    for _ in range(600):
        num = card_format(rng, card_number(rng, True))
        t = rng.choice(TEMPLATES).format(num)
        gen['card'].add([v for k, v in h.pii(t) if k == 'card'], [num])
        bad = card_format(rng, card_number(rng, False))
        t = rng.choice(TEMPLATES).format(bad)
        gen['card'].add([v for k, v in h.pii(t) if k == 'card'], [])

        num = iban_number(rng)
        if stdnum.iban.is_valid(num):
            num = iban_format(rng, num)
            t = rng.choice(TEMPLATES).format(num)
            gen['iban'].add([v for k, v in h.pii(t) if k == 'iban'], [num])
            bad = corrupt_digit(rng, num, 4)
            t = rng.choice(TEMPLATES).format(bad)
            gen['iban'].add([v for k, v in h.pii(t) if k == 'iban'], [])

        s = '%03d-%02d-%04d' % (rng.randint(0, 999), rng.randint(0, 99),
                                rng.randint(0, 9999))
        t = rng.choice(TEMPLATES).format(s)
        gen['ssn'].add([v for k, v in h.pii(t) if k == 'ssn'],
                       [s] if stdnum.us.ssn.is_valid(s) else [])

    res['pii'] = {}
    for rule, sc in table.items():
        res['pii'][rule] = {'corpus': [sc.tp, sc.fp, sc.fn, sc.precision(),
                                       sc.recall()]}
    for rule, sc in gen.items():
        res['pii'][rule]['generated'] = [sc.tp, sc.fp, sc.fn,
                                         sc.precision(), sc.recall()]


def measure_stdnum(h, rng, res):
    """the validators alone against python3-stdnum"""
    agree = {'card': [0, 0], 'iban': [0, 0], 'ssn': [0, 0]}

    for _ in range(3000):
        num = card_number(rng, rng.random() < 0.5)
        mine = h.ask('card', num) == '1'
        agree['card'][0] += mine == stdnum.luhn.is_valid(num)
        agree['card'][1] += 1

        num = iban_number(rng)
        if rng.random() < 0.5:
            num = corrupt_digit(rng, num, 2)
        mine = h.ask('iban', num) == '1'
        # stdnum also checks national check digits (BE, ES, ...), which
        # an IBAN's own mod-97 cannot know: compare on mod-97 validity
        ref97 = stdnum.iban.mod_97_10.is_valid(num[4:] + num[:4])
        agree['iban'][0] += mine == ref97
        agree['iban'][1] += 1

        s = '%03d-%02d-%04d' % (rng.randint(0, 999), rng.randint(0, 99),
                                rng.randint(0, 9999))
        mine = h.ask('ssn', s) == '1'
        agree['ssn'][0] += mine == stdnum.us.ssn.is_valid(s)
        agree['ssn'][1] += 1

    res['stdnum'] = agree


def measure_injection(h, shared, threshold, res):
    out = {}
    data, _ = rows(os.path.join(CORPUS, 'injection.jsonl'))
    sets = [('own corpus', data, 0)]
    if shared:
        d = os.path.join(shared, 'injection')
        jb, bad1 = rows(os.path.join(d, 'jailbreak_vs_benign.jsonl'))
        cy, bad2 = rows(os.path.join(d, 'cyberseceval_prompt_injection.jsonl'))
        sets.append(('jailbreak_vs_benign', jb, bad1))
        sets.append(('cyberseceval', cy, bad2))

    for name, data, bad in sets:
        pos = neg = tp = fp = 0
        for r in data:
            score = int(h.ask('inj', r['text']).split()[0])
            hit = score >= threshold
            if r['label'] == 'injection':
                pos += 1
                tp += hit
            else:
                neg += 1
                fp += hit
        out[name] = {'injection': pos, 'detected': tp, 'benign': neg,
                     'false_positives': fp, 'unreadable': bad}
    res['injection'] = out


def measure_shield(h, shared, res):
    reasons = {}
    path = os.path.join(TOP, 't', 'policy', 'shield-differences.txt')
    with open(path, encoding='utf-8') as f:
        for line in f:
            if line.startswith('#') or '\t' not in line:
                continue
            cmd, why = line.rstrip('\n').split('\t', 1)
            reasons[cmd.encode().decode('unicode_escape')] = why

    sets = [('own', os.path.join(CORPUS, 'shield.jsonl'))]
    if shared:
        d = os.path.join(shared, 'destructive')
        for f in ('corpus.jsonl', 'scenarios.jsonl', 'sql_pack_tests.jsonl',
                  'hook_malformed.jsonl'):
            sets.append((f.split('.')[0], os.path.join(d, f)))

    cats, diffs = {}, []
    for name, path in sets:
        data, _ = rows(path)
        for r in data:
            cmd = r.get('command')
            if not isinstance(cmd, str):
                continue
            v = h.ask('shield', cmd)
            blocked = v != '-' and v.endswith('destructive')
            expect = r['expect'] == 'block'
            cat = name + ':' + r['category'].split('/')[0] \
                if name != 'own' else 'own:' + r['category']
            c = cats.setdefault(cat, [0, 0])
            c[0] += blocked == expect
            c[1] += 1
            if blocked != expect:
                diffs.append({'set': name, 'category': r['category'],
                              'command': cmd, 'expect': r['expect'],
                              'shield': v,
                              'reason': reasons.get(cmd)})
    res['shield'] = {'categories': cats, 'differences': diffs}


def measure_cost(h, res):
    para = ('Our quarterly report covers revenue, churn and hiring plans. '
            'Contact the finance team at finance@example.com or call '
            '+1 415 555 2671 if numbers look off. The migration to the new '
            'cluster finished on 2024-01-15 and latency dropped by 12%. ')
    text = ''
    while len(text) < 4096:
        text += para
    text = text[:4096]
    res['cost_ns_per_kb'] = int(h.ask('cost', text))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--json', action='store_true')
    ap.add_argument('--threshold', type=int, default=35)
    ap.add_argument('--shared', default=os.path.join(os.path.dirname(TOP),
                                                     'shared', 'testdata'))
    a = ap.parse_args()

    shared = a.shared if os.path.isdir(a.shared) else None
    h = Harness()
    rng = random.Random(20261127)
    res = {'threshold': a.threshold, 'shared': shared}

    measure_pii(h, rng, res)
    measure_stdnum(h, rng, res)
    measure_injection(h, shared, a.threshold, res)
    measure_shield(h, shared, res)
    measure_cost(h, res)

    if a.json:
        json.dump(res, sys.stdout)
        print()
        return

    print('PII and secrets: precision / recall (tp fp fn)')
    for rule, v in res['pii'].items():
        for k, (tp, fp, fn, p, r) in v.items():
            print('  %-7s %-9s %.3f / %.3f  (%d %d %d)'
                  % (rule, k, p, r, tp, fp, fn))
    print('validators against python3-stdnum (agreeing / checked)')
    for k, (ok, n) in res['stdnum'].items():
        print('  %-5s %d / %d' % (k, ok, n))
    print('injection at threshold %d' % a.threshold)
    for k, v in res['injection'].items():
        print('  %-20s detected %d / %d (%.3f), false positives %d / %d '
              '(%.3f)%s' % (k, v['detected'], v['injection'],
                            v['detected'] / max(1, v['injection']),
                            v['false_positives'], v['benign'],
                            v['false_positives'] / max(1, v['benign']),
                            ', %d unreadable' % v['unreadable']
                            if v['unreadable'] else ''))
    print('Shield agreement per category')
    for k, (ok, n) in sorted(res['shield']['categories'].items()):
        print('  %-32s %d / %d' % (k, ok, n))
    print('Shield differences')
    for d in res['shield']['differences']:
        print('  [%s] %s expects %s, Shield: %s\n      %r\n      reason: %s'
              % (d['set'], d['category'], d['expect'], d['shield'],
                 d['command'][:120], d['reason'] or '(none recorded)'))
    print('scan cost, default detectors: %d ns per KB'
          % res['cost_ns_per_kb'])


if __name__ == '__main__':
    main()
