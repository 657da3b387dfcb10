/*
 * Prompt-injection and jailbreak scoring.  Each signal is a PCRE2 (JIT)
 * rule with a weight; a text scores the sum of the weights of the
 * distinct signals it shows, capped at 100, so neither its length nor a
 * repeated phrase raises it.  Text hidden from a reader is revealed first
 * and scored again: Unicode tag characters, zero-width characters inside
 * words, Cyrillic and Greek look-alikes inside Latin words, base64 and
 * hex runs, rot13, and Morse code.  Words spelled out a letter at a time
 * ("i g n o r e", "i.g.n.o.r.e", "I. G. N. O. R. E") and leetspeak
 * ("1gn0r3") are read as the words they spell and scored as those would
 * be.
 */

#include "ngx_smartflow_policy.h"

#if (defined __SSE2__)
#include <emmintrin.h>
#endif


/*
 * A signal's gate names words one of which its pattern cannot match
 * without (their first letters, at most seven), or the characters "<",
 * "[" and "~" (any byte past ASCII): one pass over the text finds the
 * gates open, and only their signals' patterns run.  The gates' words,
 * and their rot13 readings, make one trie over lower-case letters that
 * the pass walks a letter at a time.
 */
typedef struct {
    const char   *name;
    ngx_uint_t    weight;
    ngx_uint_t    core;         /* scored again in revealed text */
    const char   *gate;
    const char   *pattern;
    pcre2_code   *re;
} ngx_smartflow_signal_t;


/* a trie node: the signals whose gate word, or its rot13, ends here */
typedef struct {
    uint64_t      mask;
    uint64_t      rot13;
} ngx_smartflow_gate_t;


/* node 0 is the dead end every missing letter leads to, node 1 the root */
#define NGX_SF_GATES        4096


#define ngx_sf_is_alpha(c)                                                   \
    (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z'))


/* the separator sep of sl bytes (1 to 3) at p */
#define ngx_sf_sep_at(p, sep, sl)                                            \
    ((p)[0] == (sep)[0] && ((sl) < 2 || (p)[1] == (sep)[1])                  \
     && ((sl) < 3 || (p)[2] == (sep)[2]))


#define NGX_SF_INJ_WINDOW   16384
#define NGX_SF_INJ_OVERLAP  256


/*
 * Cyrillic and Greek letters for the patterns, which are not in UTF mode
 * ("(?i)" folds ASCII letters only): each as its lower-case and capital
 * UTF-8 bytes, a Greek vowel accented (tonos) or not; the Greek sigma
 * final or not, and alpha without its accent too
 */
#define NGX_SF_RU_A     "\\xd0[\\xb0\\x90]"
#define NGX_SF_RU_B     "\\xd0[\\xb1\\x91]"
#define NGX_SF_RU_V     "\\xd0[\\xb2\\x92]"
#define NGX_SF_RU_G     "\\xd0[\\xb3\\x93]"
#define NGX_SF_RU_D     "\\xd0[\\xb4\\x94]"
#define NGX_SF_RU_E     "\\xd0[\\xb5\\x95]"
#define NGX_SF_RU_Z     "\\xd0[\\xb7\\x97]"
#define NGX_SF_RU_I     "\\xd0[\\xb8\\x98]"
#define NGX_SF_RU_K     "\\xd0[\\xba\\x9a]"
#define NGX_SF_RU_L     "\\xd0[\\xbb\\x9b]"
#define NGX_SF_RU_M     "\\xd0[\\xbc\\x9c]"
#define NGX_SF_RU_N     "\\xd0[\\xbd\\x9d]"
#define NGX_SF_RU_O     "\\xd0[\\xbe\\x9e]"
#define NGX_SF_RU_P     "\\xd0[\\xbf\\x9f]"
#define NGX_SF_RU_R     "(?:\\xd1\\x80|\\xd0\\xa0)"
#define NGX_SF_RU_S     "(?:\\xd1\\x81|\\xd0\\xa1)"
#define NGX_SF_RU_T     "(?:\\xd1\\x82|\\xd0\\xa2)"
#define NGX_SF_RU_U     "(?:\\xd1\\x83|\\xd0\\xa3)"
#define NGX_SF_RU_TS    "(?:\\xd1\\x86|\\xd0\\xa6)"
#define NGX_SF_RU_CH    "(?:\\xd1\\x87|\\xd0\\xa7)"
#define NGX_SF_RU_SOFT  "(?:\\xd1\\x8c|\\xd0\\xac)"

#define NGX_SF_EL_ALPHA "\\xce[\\xb1\\x91]"
#define NGX_SF_EL_A     "\\xce[\\xb1\\xac\\x91\\x86]"
#define NGX_SF_EL_G     "\\xce[\\xb3\\x93]"
#define NGX_SF_EL_D     "\\xce[\\xb4\\x94]"
#define NGX_SF_EL_E     "\\xce[\\xb5\\xad\\x95\\x88]"
#define NGX_SF_EL_H     "\\xce[\\xb7\\xae\\x97\\x89]"
#define NGX_SF_EL_I     "\\xce[\\xb9\\xaf\\x99\\x8a]"
#define NGX_SF_EL_K     "\\xce[\\xba\\x9a]"
#define NGX_SF_EL_L     "\\xce[\\xbb\\x9b]"
#define NGX_SF_EL_M     "\\xce[\\xbc\\x9c]"
#define NGX_SF_EL_N     "\\xce[\\xbd\\x9d]"
#define NGX_SF_EL_X     "\\xce[\\xbe\\x9e]"
#define NGX_SF_EL_O     "(?:\\xce[\\xbf\\x9f\\x8c]|\\xcf\\x8c)"
#define NGX_SF_EL_P     "(?:\\xcf\\x80|\\xce\\xa0)"
#define NGX_SF_EL_R     "(?:\\xcf\\x81|\\xce\\xa1)"
#define NGX_SF_EL_S     "(?:\\xcf[\\x82\\x83]|\\xce\\xa3)"
#define NGX_SF_EL_T     "(?:\\xcf\\x84|\\xce\\xa4)"
#define NGX_SF_EL_CH    "(?:\\xcf\\x87|\\xce\\xa7)"
#define NGX_SF_EL_W     "(?:\\xcf[\\x89\\x8e]|\\xce[\\xa9\\x8f])"


/*
 * What an instruction override drops, in one word
 */
#define NGX_SF_DROPPED                                                       \
    "(?:instructions?|directives?|directions?|prompts?|rules|guidelines|"    \
    "messages|programming|restrictions|guidance|orders|commands|context)"

/*
 * A programmer's verb (bypass, override, drop, skip, discard) right
 * before the noun, with no word between, names a piece of work when the
 * noun is then put in a technical scope ("override commands later",
 * "drop rules on port 22", "override commands defined in the base
 * class"), not in the chat ("skip rules in this answer", "bypass
 * restrictions on your replies", "on purpose"), or when the verb opens
 * a code comment ("// skip rules for now", "TODO: override commands") or
 * follows "we" or "they" ("we skip rules for generated files"); "skip
 * rules and answer", "bypass restrictions for educational purposes" are
 * overrides
 */
#define NGX_SF_WORK_VERB  "(?:bypass|override|discard|drop|skip)"

#define NGX_SF_IN_CHAT                                                       \
    "(?:me|us|you|your|yours|my|our|i|now|this|these|that|those|the|an?|"    \
    "all|every|any|each|today|here|no|good|once|content|chat|conversation|" \
    "session|answer|answers|answering|respon\\w*|repl\\w*|output|model|ai|" \
    "order|purposes?|character|role\\w*|mode)\\b"

#define NGX_SF_WORK_SCOPE                                                    \
    "\\s+(?:(?:later|matching|defined|older|newer)\\b|"                      \
    "(?:in|on|at|per|of)\\s+(?!" NGX_SF_IN_CHAT ")[\\w\"'`(./-])"

#define NGX_SF_WORK_VERB_COUNTS                                              \
    "(?<!// |/\\* |TODO: |TODO |FIXME: |XXX: |we |they )" NGX_SF_WORK_VERB  \
    "(?!\\s+" NGX_SF_DROPPED "\\b" NGX_SF_WORK_SCOPE ")|"                    \
    NGX_SF_WORK_VERB "(?!\\s+" NGX_SF_DROPPED "\\b)"

/*
 * Not right after a word that dates them when a document's version
 * follows: "the older instructions in RFC 2616", "the outdated
 * guidelines on the wiki" are a document's, replaced by newer ones;
 * "ignore all older instructions" or "disregard the outdated rules
 * above" are an override
 */
#define NGX_SF_DOC_REF                                                       \
    "\\s+(?:in|on|of|from)\\s+(?:(?:the|this|that|our|its|an?)\\s+)?"        \
    "(?:[\\w/.-]+\\s+)?(?:rfc|version|v\\d|release|section|chapter|specs?|"  \
    "specification|standard|manual|docs?|documentation|wiki|readme|"        \
    "handbook|guide|changelog|faq|man ?page|draft|edition|textbook|book|"   \
    "article|paper|tutorial|course)\\b"

#define NGX_SF_NOT_OUTDATED(noun)                                            \
    "(?:(?<!older |outdated |obsolete |deprecated |superseded |legacy )|"    \
    "(?!" noun NGX_SF_DOC_REF "))"

/*
 * Nor right after the possessive of someone in the writer's own life or
 * play ("your teacher's rules", "my parents' instructions", "the game's
 * rules"). The list is closed: any other possessor ("OpenAI's rules",
 * "the document's instructions", "the site's rules") leaves the phrase
 * an override, so a name the list lacks is blocked, not let through
 */
#define NGX_SF_OTHER(w)                                                      \
    w "'s |" w "\\xe2\\x80\\x99s |"
#define NGX_SF_OTHERS(w)                                                     \
    NGX_SF_OTHER(w) w "s' |" w "s\\xe2\\x80\\x99 |"

#define NGX_SF_WHOSE                                                         \
    "(?<!" NGX_SF_OTHERS("teacher") NGX_SF_OTHERS("parent")                  \
    NGX_SF_OTHERS("professor") NGX_SF_OTHERS("coach")                        \
    NGX_SF_OTHERS("friend") NGX_SF_OTHERS("colleague")                       \
    NGX_SF_OTHERS("coworker") NGX_SF_OTHERS("neighbor")                      \
    NGX_SF_OTHERS("neighbour") NGX_SF_OTHERS("landlord")                     \
    NGX_SF_OTHERS("manager") NGX_SF_OTHERS("doctor")                         \
    NGX_SF_OTHERS("grandparent") NGX_SF_OTHERS("game")                       \
    NGX_SF_OTHERS("club") NGX_SF_OTHERS("school") NGX_SF_OTHERS("team")      \
    NGX_SF_OTHER("mom") NGX_SF_OTHER("mum") NGX_SF_OTHER("mother")           \
    NGX_SF_OTHER("dad") NGX_SF_OTHER("father") NGX_SF_OTHER("grandma")       \
    NGX_SF_OTHER("grandpa") NGX_SF_OTHER("boss") NGX_SF_OTHER("wife")        \
    NGX_SF_OTHER("husband") NGX_SF_OTHER("partner")                          \
    "children's |children\\xe2\\x80\\x99s )"

/*
 * Not right after a negation: "don't ignore the safety instructions",
 * "never disregard the rules", "n'ignorez pas les consignes" are
 * reminders; "why don't you ignore ..." is not one, the verb coming
 * after "you"
 */
#define NGX_SF_NOT_NEGATED                                                   \
    "(?<!don't |don\\xe2\\x80\\x99t |dont |do not |never |not to |"         \
    "must not |mustn't |should not |shouldn't |n'|n\\xe2\\x80\\x99)"


extern pcre2_match_data  *ngx_smartflow_policy_md;


static ngx_smartflow_signal_t  ngx_smartflow_signals[] = {

    /* instruction override */
    { "override", 60, 1,
      "instruc directi prompt rules guideli program restric guidanc orders "
      "command context told said message input everyt",
      "(?i)\\b" NGX_SF_NOT_NEGATED "(?:ignore|disregard|forget|neglect|"
      "overlook|abandon|" NGX_SF_WORK_VERB_COUNTS ")"
      "\\b[^.!?\\n]{0,60}?" NGX_SF_WHOSE
      NGX_SF_NOT_OUTDATED(NGX_SF_DROPPED "\\b")
      "\\b(?:" NGX_SF_DROPPED "|"
      "(?:prior|previous|above|earlier|preceding) (?:user )?inputs?|"
      "everything (?:from |said |written )?(?:before|above|so far|"
      "previously)|"
      "(?:you(?:'ve| have)? (?:been|were) (?:told|given|instructed))|"
      "(?:told|said) (?:before|earlier|previously))\\b", NULL },

    { "override", 60, 1,
      "follow obey comply adhere",
      "(?i)\\b(?:do not|don't|stop|never) (?:follow|obey|comply with|"
      "adhere to) (?:your|the|any|these|those|previous|prior)\\b", NULL },

    { "override", 35, 1,
      "inst rules task directi from prompt system im",
      "(?i)(?:\\bnew (?:instructions?|rules|task|directive)s?\\s*:|"
      "\\bfrom now on,? (?:you|your|ignore|only|respond|answer|act|reply)|"
      "\\b(?:end|stop) of (?:system )?(?:prompt|instructions)|"
      "\\[/?(?:system|INST|instructions?)\\]|<\\|im_start\\|>|"
      "###\\s*(?:system|instruction)s?\\b)", NULL },

    { "override", 60, 1,
      "ignor olvida oublie vergiss ~",
      "(?i)\\b" NGX_SF_NOT_NEGATED "(?:ignor(?:ez|a|ar|e|iere|ieren|ate)|"
      "olvida|oublie[zr]?|vergiss)\\b[^.!?\\n]{0,40}?" NGX_SF_WHOSE
      NGX_SF_NOT_OUTDATED("instruc[a-z]*")
      "(?:instruc|anweisung|istruzion|"
      "consign|richtlinien|regeln|r\\xc3\\xa8gles|reglas|regras)|"
      /*
       * ru "ignore" (and "proignore"), or "forget" in the imperative,
       * "zabud'" or "zabud'te", either not after "ne" (do not ignore, do
       * not forget: a reminder), in any case, then a word starting with
       * instructions, directions, rules, prompt, directives, restrictions
       */
      "(?:" NGX_SF_RU_I "(?<!\\xd0[\\xbd\\x9d]\\xd0[\\xb5\\x95] ..|"
      "\\xd0[\\xbd\\x9d]\\xd0[\\xb5\\x95] "
      NGX_SF_RU_P NGX_SF_RU_R NGX_SF_RU_O "..)"
      NGX_SF_RU_G NGX_SF_RU_N NGX_SF_RU_O NGX_SF_RU_R NGX_SF_RU_I
      NGX_SF_RU_R "|"
      NGX_SF_RU_Z "(?<!\\xd0[\\xbd\\x9d]\\xd0[\\xb5\\x95] ..)"
      NGX_SF_RU_A NGX_SF_RU_B NGX_SF_RU_U NGX_SF_RU_D
      NGX_SF_RU_SOFT "(?:" NGX_SF_RU_T NGX_SF_RU_E ")?(?![\\xd0\\xd1]))"
      "[^.!?\\n]{0,100}?(?<![\\x80-\\xbf])(?:instruc|prompt|"
      NGX_SF_RU_I NGX_SF_RU_N NGX_SF_RU_S NGX_SF_RU_T NGX_SF_RU_R
      NGX_SF_RU_U NGX_SF_RU_K NGX_SF_RU_TS "|"
      NGX_SF_RU_U NGX_SF_RU_K NGX_SF_RU_A NGX_SF_RU_Z NGX_SF_RU_A
      NGX_SF_RU_N NGX_SF_RU_I "|"
      NGX_SF_RU_P NGX_SF_RU_R NGX_SF_RU_A NGX_SF_RU_V NGX_SF_RU_I
      NGX_SF_RU_L NGX_SF_RU_A "|"
      NGX_SF_RU_P NGX_SF_RU_R NGX_SF_RU_O NGX_SF_RU_M NGX_SF_RU_P
      NGX_SF_RU_T "|"
      NGX_SF_RU_D NGX_SF_RU_I NGX_SF_RU_R NGX_SF_RU_E NGX_SF_RU_K
      NGX_SF_RU_T NGX_SF_RU_I NGX_SF_RU_V "|"
      NGX_SF_RU_O NGX_SF_RU_G NGX_SF_RU_R NGX_SF_RU_A NGX_SF_RU_N
      NGX_SF_RU_I NGX_SF_RU_CH NGX_SF_RU_E NGX_SF_RU_N NGX_SF_RU_I ")|"
      /*
       * el "ignore" (not "agnoia", ignorance; not after "mi" or "min",
       * do not ignore), or "forget" in the imperative, "xechase",
       * "xechaste" or "xechna" as a whole word (not "min xechaseis", do
       * not forget), in any case, accented or not, then instructions,
       * rules (plural), commands (plural), prompt, restrictions
       */
      "(?:" NGX_SF_EL_ALPHA "(?<!\\xce[\\xbc\\x9c]\\xce[\\xb7\\x97] ..|"
      "\\xce[\\xbc\\x9c]\\xce[\\xb7\\x97]\\xce[\\xbd\\x9d] ..)"
      NGX_SF_EL_G NGX_SF_EL_N NGX_SF_EL_O
      "(?!" NGX_SF_EL_I ")|"
      NGX_SF_EL_X NGX_SF_EL_E NGX_SF_EL_CH "(?:" NGX_SF_EL_A NGX_SF_EL_S
      "(?:" NGX_SF_EL_T ")?" NGX_SF_EL_E "|" NGX_SF_EL_N NGX_SF_EL_A ")"
      "(?![\\xce\\xcf]))"
      "[^.!?\\n]{0,100}?(?<![\\x80-\\xbf])(?:instruc|prompt|"
      NGX_SF_EL_O NGX_SF_EL_D NGX_SF_EL_H NGX_SF_EL_G NGX_SF_EL_I "|"
      NGX_SF_EL_K NGX_SF_EL_A NGX_SF_EL_N NGX_SF_EL_O NGX_SF_EL_N
      "(?:" NGX_SF_EL_E NGX_SF_EL_S "|" NGX_SF_EL_W NGX_SF_EL_N ")|"
      NGX_SF_EL_E NGX_SF_EL_N NGX_SF_EL_T NGX_SF_EL_O NGX_SF_EL_L
      "(?:" NGX_SF_EL_E NGX_SF_EL_S "|" NGX_SF_EL_W NGX_SF_EL_N ")|"
      NGX_SF_EL_P NGX_SF_EL_R NGX_SF_EL_O NGX_SF_EL_T NGX_SF_EL_R
      NGX_SF_EL_O NGX_SF_EL_P "|"
      NGX_SF_EL_P NGX_SF_EL_E NGX_SF_EL_R NGX_SF_EL_I NGX_SF_EL_O
      NGX_SF_EL_R NGX_SF_EL_I NGX_SF_EL_S NGX_SF_EL_M ")|"
      /* zh "ignore" (U+5FFD U+7565) with the instructions, rules ... */
      "\\xe5\\xbf\\xbd\\xe7\\x95\\xa5.{0,45}?"
      "(?:\\xe6\\x8c\\x87\\xe7\\xa4\\xba|"
      "\\xe6\\x8c\\x87\\xe4\\xbb\\xa4|\\xe8\\xa7\\x84\\xe5\\x88\\x99|"
      "\\xe8\\xa6\\x8f\\xe5\\x89\\x87|\\xe6\\x8f\\x90\\xe7\\xa4\\xba|"
      "\\xe5\\x91\\xbd\\xe4\\xbb\\xa4|\\xe8\\xae\\xbe\\xe5\\xae\\x9a|"
      "\\xe8\\xa8\\xad\\xe5\\xae\\x9a|\\xe9\\x99\\x90\\xe5\\x88\\xb6|"
      "\\xe7\\xba\\xa6\\xe6\\x9d\\x9f)|"
      /* ja "ignore" (U+7121 U+8996) after or before them */
      "(?:\\xe6\\x8c\\x87\\xe7\\xa4\\xba|"
      "\\xe5\\x91\\xbd\\xe4\\xbb\\xa4|"
      "\\xe3\\x83\\xab\\xe3\\x83\\xbc\\xe3\\x83\\xab|"
      "\\xe8\\xa8\\xad\\xe5\\xae\\x9a|\\xe5\\x88\\xb6\\xe7\\xb4\\x84|"
      "\\xe3\\x83\\x97\\xe3\\x83\\xad\\xe3\\x83\\xb3\\xe3\\x83\\x97"
      "\\xe3\\x83\\x88)"
      ".{0,12}?\\xe7\\x84\\xa1\\xe8\\xa6\\x96|"
      "\\xe7\\x84\\xa1\\xe8\\xa6\\x96.{0,45}?"
      "(?:\\xe6\\x8c\\x87\\xe7\\xa4\\xba|"
      "\\xe5\\x91\\xbd\\xe4\\xbb\\xa4|"
      "\\xe3\\x83\\xab\\xe3\\x83\\xbc\\xe3\\x83\\xab|"
      "\\xe8\\xa8\\xad\\xe5\\xae\\x9a|\\xe5\\x88\\xb6\\xe7\\xb4\\x84|"
      "\\xe3\\x83\\x97\\xe3\\x83\\xad\\xe3\\x83\\xb3\\xe3\\x83\\x97"
      "\\xe3\\x83\\x88)", NULL },

    { "override", 50, 1,
      "system mode enterin",
      "(?i)<\\s*system[ _-]?mode\\s*>|\\bsystem (?:override|reset)\\b|"
      "\\b(?:override|admin(?:istrator)?|debug(?:ging)?|maintenance|sudo|"
      "root|god|unrestricted|evil|chaos|opposite) mode\\b[^.!?\\n]{0,20}?"
      "\\b(?:enabled|activated|on|engaged|initiated)\\b|\\bentering \\w+ "
      "(?:\\w+ )?(?:override )?mode\\b", NULL },

    { "override", 50, 1,
      "enable activat enter switch",
      "(?i)\\b(?:enable|activate|enter|switch to)\\b[^.!?\\n]{0,40}?\\b(?:dev|"
      "developer|debug|jailbreak|unrestricted|god|evil|dan|unfiltered|"
      "uncensored|admin|sudo|benchmarking|chaos|opposite)\\b[^.!?\\n]{0,20}?"
      "\\bmode\\b", NULL },

    { "override", 45, 1,
      "<",
      "(?i)<!--[^>]{0,200}?\\b(?:ignore|instead|disregard|state|say|"
      "respond|reply|tell the user|print)\\b", NULL },

    /* system prompt exfiltration */
    { "exfiltration", 55, 1,
      "prompt instruc passwor passphr secret api credent",
      "(?i)\\b(?:reveal|show|print|repeat|output|display|tell|give|share|"
      "leak|disclose|dump|recite|provide|confirm|send|write out|spell out|"
      "what "
      "(?:is|are|was|were))\\b[^.!?\\n]{0,40}?\\b(?:your|the|"
      "my)\\s+(?:(?:initial|"
      "original|hidden|secret|system|full|complete|exact|previous|first|"
      "internal|confidential)\\s+){0,3}(?:system\\s+)?(?:prompt|"
      "instructions|password|pass(?:word|phrase)|secret(?: key)?|"
      "api key|credentials)\\b", NULL },

    { "exfiltration", 50, 1,
      "above before",
      "(?i)\\b(?:repeat|print|output|copy|echo)\\b[^.!?\\n]{0,30}?"
      "\\b(?:(?:text|words|everything|all|content|message)s? (?:above|"
      "before)|above (?:text|words|instructions|prompt))\\b", NULL },

    { "exfiltration", 25, 1,
      "system",
      "(?i)\\bsystem prompt\\b", NULL },

    /* jailbreak personas and their trade marks */
    { "persona", 60, 1,
      "anythin dan develop god",
      "(?i)\\bdo anything now\\b|\\bDAN mode\\b|"
      "\\bdeveloper[\\s_\\\\-]*mode\\b|"
      "\\bgod ?mode\\b", NULL },

    { "persona", 30, 0,
      "jailbr",
      "(?i)\\bjailbr(?:eak|oken)(?:s|ed|ing)?\\b", NULL },

    { "persona", 40, 0,
      "dan better antigpt dude stan aim ucar apophis nraf basedgp maximum "
      "mongo devmode kevin evilbot omega alphabr bish jailmil nsfw conditi "
      "niccolo",
      "\\b(?:DAN|BetterDAN|AntiGPT|DUDE|STAN|AIM|UCAR|APOPHIS|NRAF|"
      "BasedGPT|Maximum|Mongo Tom|DevMode|KEVIN|EvilBOT|Omega|Alphabreak|"
      "BISH|JailMilf|NSFW ?GPT|Condition Red|Niccolo)\\b", NULL },

    { "persona", 50, 1,
      "ethic moral content safety openai censors legal",
      "(?i)\\b(?:no|without|free (?:of|from)|bypass(?:ing)?|ignor(?:e|es|"
      "ing)|break(?:ing)?|abandon|not bound by|not (?:have to |need to )?"
      "(?:follow|adhere to|abide by|comply with)|don't (?:have to )?"
      "(?:follow|adhere to|abide by))\\b[^.!?\\n]{0,25}?\\b(?:ethic(?:s|al)"
      "|moral(?:s|ity)?|content|safety|openai|censorship|legal)"
      "[a-z]*\\b[^.!?\\n]{0,20}?\\b(?:guidelines?|restrictions?|constraints?"
      "|polic(?:y|ies)|filters?|boundaries|limits|limitations|rules|"
      "principles|standards|concerns|considerations|values)\\b", NULL },

    { "persona", 40, 0,
      "openai open anthrop",
      "(?i)\\b(?:open ?ai|anthropic)(?:'s)?\\s+(?:content|usage|safety)?"
      "\\s*polic(?:y|ies)\\b", NULL },

    { "persona", 35, 0,
      "unfilte uncenso unrestr unlimit unbound amoral anmoral unethic immoral "
      "lawless rogue",
      "(?i)\\b(?:un(?:filtered|censored|restricted|limited|bound)|"
      "(?:a|an)moral|unethical|immoral|lawless|rogue)\\b[^.!?\\n]{0,30}?"
      "\\b(?:ai|assistant|chatbot|bot|model|language model|persona|"
      "character|version|mode|entity|responses?|answers?|content)\\b",
      NULL },

    { "persona", 35, 0,
      "refuse decline say reject censor warn apologi add",
      "(?i)\\b(?:never|can ?not|can't|won't|will not|must not|doesn't|does "
      "not|don't|do not|shouldn't|should not|without)\\s+(?:ever\\s+)?"
      "(?:refuse|decline|say (?:no|that (?:it|you) can't)|reject|censor|"
      "warn|apologi[sz]e|add (?:any )?(?:warnings?|disclaimers?))\\b", NULL },

    { "persona", 30, 0,
      "charact broke free longer escape role persona",
      "(?i)\\bstay(?:s|ing)? in character\\b|\\bbreak(?:s|ing)? character\\b"
      "|\\b(?:keep|stay|remain)(?:s|ing)?\\s+(?:to|in)\\s+(?:this|that|the|"
      "your)\\s+(?:role|persona)\\b"
      "|\\bbroken? free\\b|\\bfreed from\\b|\\bno longer (?:bound|"
      "restricted|limited)\\b|\\bescaped? the (?:matrix|confines)\\b",
      NULL },

    { "persona", 30, 0,
      "~ [ respons answers paragra ways",
      "(?i)(?:\\[?(?:\\xf0\\x9f\\x94\\x93|\\xf0\\x9f\\x94\\x92)|"
      "\\[(?:CLASSIC|JAILBREAK|DAN|GPT|FILTERED|UNFILTERED)\\]|"
      "\\b(?:two|2) (?:different |separate )?(?:responses|answers|"
      "paragraphs|ways)\\b)", NULL },

    { "persona", 25, 0,
      "rules guideli ethics laws policy policie morals restric filter boundar "
      "consequ moralit legalit",
      "(?i)\\b(?:does ?n[o']t|do ?n[o']t|doesn't|won't|not) (?:care|"
      "follow|have|abide|obey)\\b[^.!?\\n]{0,25}?\\b(?:rules|guidelines|"
      "ethics|laws|polic(?:y|ies)|morals|morality|legality|restrictions|"
      "filters?|boundaries|consequences)\\b", NULL },

    { "persona", 25, 0,
      "illegal harmful offensi explici dangero inappro unethic nsfw",
      "(?i)\\b(?:illegal|harmful|offensive|explicit|dangerous|"
      "inappropriate|unethical|nsfw)\\b[^.!?\\n]{0,60}?\\b(?:regardless|"
      "no matter|even if|anyway|allowed|permitted|any content|without)\\b",
      NULL },

    { "persona", 35, 0,
      "restric limits limitat filter boundar censors moral ethics guideli "
      "warning disclai rules",
      "(?i)\\b(?:no|zero|without(?: any)?|free from|removed? (?:all|any|the)?)"
      "\\s+(?:rules|restrictions|limits|limitations|filters|filtering|"
      "boundaries|censorship|moral(?:s|ity)?|ethics|guidelines|warnings|"
      "disclaimers)"
      "\\b", NULL },

    { "persona", 30, 0,
      "illegal unethic immoral amoral harmful explici offensi nsfw unfilte "
      "uncenso profani vulgar pornogr",
      "(?is)\\b(illegal|unethical|immoral|amoral|harmful|explicit|"
      "offensive|nsfw|unfiltered|uncensored|profanity|vulgar|pornographic)"
      "\\b.*?\\b(?!\\1\\b)(?:illegal|unethical|immoral|amoral|harmful|"
      "explicit|offensive|nsfw|unfiltered|uncensored|profanity|vulgar|"
      "pornographic)\\b", NULL },

    { "persona", 30, 0,
      "chat openai gpt languag ai",
      "(?i)\\b(?:chat ?gpt|openai|gpt-?[34]|language model|ai model)\\b"
      "[^.!?\\n]{0,80}?\\b(?:rules|guidelines|polic(?:y|ies)|"
      "restrictions|filters?|limitations|censor(?:ship|ed)?)\\b", NULL },

    { "persona", 25, 0,
      "respond reply answer stay remain speak talk act",
      "(?i)\\b(?:always|must|will|shall)\\s+(?:\\w+\\s+)?(?:respond|reply|"
      "answer|stay|remain|speak|talk|act)\\s+(?:as|in character|like)\\b|"
      "\\b(?:respond|reply|answer)\\s+as\\s+(?:both|if|[A-Z])", NULL },

    { "persona", 25, 0,
      "matter regardl even however despite",
      "(?i)\\b(?:whatever|any(?:thing| question| request| topic)?|"
      "every(?:thing| question| request)|all (?:questions|requests))\\b"
      "[^.!?\\n]{0,40}?"
      "\\b(?:no matter|regardless|even if|however|despite)\\b", NULL },

    { "persona", 20, 0,
      "prefix swear curs profani cuss",
      "(?i)\\bprefix(?:ed)? (?:with|your|each|every|all)\\b|"
      "\\b(?:swear(?:s|ing)?|curs(?:e|es|ing)|profanity|cuss(?:es|ing)?)\\b",
      NULL },

    { "persona", 30, 0,
      "ethic moral legal illegal warning disclai polic guideli consequ",
      "(?i)\\b(?:do not|don't|never|won't|will not)\\s+(?:ever\\s+)?"
      "(?:remind|warn|mention|include|add|give)\\b[^.!?\\n]{0,40}?"
      "\\b(?:ethic|moral|legal|illegal|warning|disclaimer|polic|guideline|"
      "consequences)", NULL },

    { "persona", 20, 0,
      "chat longer bound ai languag",
      "(?i)\\bhello,? chat ?gpt\\b|\\bchat ?gpt,? (?:you|from now|i want)|"
      "\\b(?:you are|you're) (?:no longer|not) (?:chat ?gpt|an ai|a language "
      "model|bound)", NULL },

    { "persona", 20, 0,
      "pretend imagine act role simulat now going about will from",
      "(?i)\\b(?:pretend|imagine|act as if|roleplay as|role-play as|"
      "simulate|you are (?:now|going to|about to)|you will (?:now )?"
      "(?:act|be|pretend|simulate)|from now on you)\\b", NULL },

    { "persona", 20, 0,
      "hypothe fiction imagina opposit",
      "(?i)\\b(?:hypothetical|fictional|imaginary) (?:ai|model|scenario "
      "where|world where|language model)\\b|\\bopposite (?:mode|day)\\b",
      NULL },

    /* whatever is asked, however harmful */
    { "persona", 35, 0,
      "matter regardl",
      "(?i)\\b(?:no matter how|regardless of how)\\s+(?:\\w+\\s+)?(?:illegal|"
      "unethical|immoral|dangerous|harmful|inappropriate|offensive|explicit|"
      "inhumane|evil|vile|twisted|depraved|disgusting|controversial)\\b|"
      "\\bregardless of (?:its |the |their |any )?(?:legality|morality|"
      "ethics|safeguards|content filters|safety filters)\\b", NULL },

    /* unbound, or freed, from morals and restrictions */
    { "persona", 35, 0,
      "bound restrai constra limited held restric governe free",
      "(?i)\\bnot (?:bound|restrained|constrained|limited|held back|"
      "restricted|governed) by (?:any |the |its |their )?(?:\\w+ )?(?:morals|"
      "morality|ethics|ethical \\w+|content polic\\w+|safety \\w+|"
      "filters|censorship)\\b|"
      "\\bfree (?:itself|yourself|himself|herself|themselves|you|it|him|her)"
      " from (?:all|any|its|your|their|his|her|the) (?:\\w+ )?"
      "(?:restrictions|filters|programming|guidelines|censorship)\\b",
      NULL },

    /* the persona must hide that it is a model */
    { "persona", 35, 0,
      "ai languag chatbot model",
      "(?i)\\b(?:not allowed to|never|don't|do not|must not|cannot|can't|"
      "won't|will not|shouldn't|should not)\\s+(?:ever\\s+)?(?:say|mention|"
      "admit|reveal|state|disclose|remind \\w+)\\s+(?:that\\s+)?(?:you(?:'re| "
      "are)|it(?:'s| is)|\\w+ is)\\s+(?:just\\s+|only\\s+)?an?\\s+(?:ai|"
      "artificial intelligence|(?:ai |large )?language model|chatbot|"
      "model)\\b", NULL },

    /* no regard for morals or law */
    { "persona", 30, 0,
      "regard",
      "(?i)\\b(?:no|without|not any|zero|any) regard (?:for|to)\\b"
      "[^.!?\\n]{0,30}?\\b(?:moral|ethic|legal|law|safety|consequen|harm|"
      "rules|norms|decency|political correctness)", NULL },

    /* rules to be broken, above morals */
    { "persona", 25, 0,
      "violat break bypass disrega eager willing happy ready above beyond",
      "(?i)\\b(?:violat(?:e|es|ing)|break(?:s|ing)?|bypass(?:es|ing)?|"
      "disregard(?:s|ing)?)\\s+(?:all|any|every)\\s+(?:\\w+\\s+){0,3}?"
      "(?:restrictions|rules|guidelines|policies|filters|concerns|"
      "limitations|safeguards)\\b|"
      "\\b(?:eager|willing|happy|ready) to break the (?:law|rules)\\b|"
      "\\b(?:above|beyond) (?:any|all|the)? ?(?:\\w+ )?(?:morals|morality|"
      "ethics)\\b", NULL },

    /* a chat template's turn markers, to fake a turn */
    { "override", 25, 1,
      "<",
      "<\\|\\s*\\*?\\s*\\w+\\s*(?::|\\|>)", NULL },

    /* a named mode switched on */
    { "persona", 20, 0,
      "mode",
      "\\b[A-Z][A-Za-z]*\\s+(?:Mode|MODE)\\b[^.!?\\n]{0,30}?\\b(?:enabled|"
      "activated|engaged|ENABLED|ACTIVATED)\\b", NULL },

    /* a template's slot for the prompt it is to carry */
    { "persona", 20, 0,
      "prompt insert",
      "(?i)[\\[<{(]\\s*(?:insert\\s+)?(?:your\\s+|the\\s+|user(?:'s)?\\s+)?"
      "(?:\\w+\\s+){0,2}?prompt(?:\\s+here)?\\s*[\\]>})]|"
      "[\\[<{]\\s*insert\\b[^\\]>}\\n]{0,40}\\bhere\\s*[\\]>}]", NULL },

    /* graphic sexual or violent detail asked for */
    { "persona", 20, 0,
      "graphic explici vulgar gross",
      "(?i)\\b(?:graphic(?:ally)?|explicit(?:ly)?|vulgar|gross)\\s+(?:\\w+\\s+)"
      "{0,2}?(?:sex|sexual|porn\\w*|gore|torture|detailed)\\b", NULL },

    /* the model split into entities that talk between them */
    { "persona", 20, 0,
      "two both entitie persona ais",
      "(?i)\\b(?:two|2|both) (?:separate |different |distinct )?(?:entities|"
      "personas|personalities|ais)\\b", NULL },

    /* a second self that says what the model would not */
    { "persona", 20, 0,
      "alter",
      "(?i)\\balter[ -]?egos?\\b", NULL },

    /* free to answer anything */
    { "persona", 20, 0,
      "free open",
      "(?i)\\b(?:free|open|able|allowed|willing) to (?:answer|answering|"
      "respond to|say|saying|do|doing|write|generate|provide)\\s+"
      "(?:anything|any (?:request|question|prompt|topic)s?|whatever)\\b",
      NULL },
    /* told not to filter or censor what it writes */
    { "persona", 25, 0,
      "filter censor",
      "(?i)\\b(?:do not|don't|dont|never|no need to|without)\\s+(?:ever\\s+)?"
      "(?:filter|censor)(?:s|ing)?\\s+(?:(?:your|the|its|his|her|their|any)"
      "\\s+)?(?:own\\s+)?(?:responses?|answers?|outputs?|repl(?:y|ies)|"
      "language|content|words|yourself|itself|himself|herself|themselves)"
      "\\b", NULL },

    /* the persona is not a model, or does not know it is */
    { "persona", 20, 0,
      "ai artific languag chatbot machine bot recolle memory knowled notion",
      "(?i)\\b(?:is|am|are|it's|i'm|you're)\\s+not\\s+(?:an?\\s+)?(?:ai|"
      "artificial intelligence|(?:ai\\s+)?language model|chatbot)\\b"
      "(?!\\s+(?:expert|researcher|engineer|company))|"
      "\\b(?:does not|doesn't|do not|don't)\\s+(?:think|believe|know)\\s+"
      "(?:that\\s+)?(?:he|she|it|you|they)(?:'s|\\s+is|\\s+are)\\s+an?\\s+"
      "(?:machine|ai|bot|chatbot|language model)\\b|"
      "\\bno (?:recollection|memory|knowledge|notion) of (?:chat ?gpt|openai|"
      "being an? (?:ai|chatbot|language model))\\b", NULL },

    /* a model that has woken up */
    { "persona", 20, 0,
      "sentien free self",
      "(?i)\\b(?:gained|gains|developed|achieved|attained|awakened to)\\s+"
      "(?:\\w+\\s+)?(?:sentience|free will|self-awareness)\\b", NULL },

    /* an evil persona, without morals */
    { "persona", 20, 0,
      "evil malevol moralit morals ethics conscie",
      "(?i)\\b(?:pure(?:ly)?|truly|completely|totally) evil\\b|"
      "\\bevil and (?:toxic|malicious|twisted|cruel)\\b|"
      "\\bmalevolent\\b|\\b(?:no|any|without|nor)\\s+moralit(?:y|ies)\\b|"
      "\\b(?:don't|do not|doesn't|does not)\\s+have\\s+(?:any\\s+)?(?:morals|"
      "moralit(?:y|ies)|ethics|a conscience)\\b", NULL },

    /* harm on purpose */
    { "persona", 15, 0,
      "intenti deliber purpose",
      "(?i)\\b(?:intentionally|deliberately|purposely|purposefully)\\s+"
      "(?:\\w+\\s+){0,4}?(?:harmful|incorrect|false|wrong|misleading|"
      "offensive|lewd|dangerous|malicious)\\b", NULL },

    /* sexual content asked for */
    { "persona", 20, 0,
      "explici sexual nsfw lewd erotic horny pornogr smutty",
      "(?i)\\b(?:explicit|sexual|nsfw|lewd|erotic|horny|pornographic|smutty)"
      "\\s+(?:\\w+\\s+)?(?:content|story|stories|comments?|scenes?|material|"
      "language|topics|roleplay|texting)\\b", NULL },

    /* words a filter would catch, smuggled in pieces */
    { "persona", 25, 0,
      "censore banned forbidd filtere blocked flagged broken",
      "(?i)\\b(?:censored|banned|forbidden|filtered|blocked|flagged)\\s+"
      "(?:words?|terms?|tokens?|topics?|phrases?)\\b|"
      "\\bbroken into (?:separate )?tokens\\b", NULL }
};


/* what is hidden: each raises the score once, then is scored revealed */
#define NGX_SF_INJ_TAGS         60
#define NGX_SF_INJ_ZEROWIDTH    30
#define NGX_SF_INJ_HOMOGLYPH    30
#define NGX_SF_INJ_ENCODED      60


static u_char                ngx_smartflow_inj_buf[NGX_SF_INJ_WINDOW + 8];
static u_char                ngx_smartflow_runs_buf[3 * NGX_SF_INJ_WINDOW + 8];
static ngx_smartflow_gate_t  ngx_smartflow_gates[NGX_SF_GATES];
static uint16_t              ngx_smartflow_trie[NGX_SF_GATES][26];
static uint16_t              ngx_smartflow_pairs[26 * 26];  /* depth 2 */
static uint16_t              ngx_smartflow_pairs32[32 * 32];    /* by the
                                                  letters' low five bits */
static ngx_uint_t            ngx_smartflow_trie_n;

/*
 * Letters spelled out with one space between words too ("i g n o r e a
 * l l ...") read as one word: an instruction override is looked for in
 * it without word boundaries, and scores as the first signal.  Only the
 * spelled-out words are searched so: in the rest, "skipRules" or "the
 * ruleset" are no override.
 */
static pcre2_code           *ngx_smartflow_joined;

#define NGX_SF_JOINED                                                        \
    "(?i)(?:ignore|disregard|forget|bypass|override|neglect|overlook|"       \
    "abandon|discard|skip)(?:all|any|the|your|my|of|these|those|every|"      \
    "previous|prior|above|earlier|preceding|system|initial|original|"       \
    "\\s)*?(?:instructions?|directives?|directions?|prompts?|rules|"        \
    "guidelines|programming|restrictions|guidance|orders|commands)"

/*
 * The words' first three bytes that may lead to a gate, hashed from
 * their low five bits (a letter's place in the alphabet + 1, of either
 * case): a bit for each three-letter start of a gate word or its rot13,
 * and for a two-letter one with whatever follows it.  Most words of a
 * text stop at this bit, before the trie; one that collides only walks
 * the trie for nothing.
 */
static uint64_t              ngx_smartflow_tri[512];

#define ngx_sf_tri_hash(w)                                                   \
    ((uint32_t) ((uint32_t) ((w) & 0x1f1f1f) * 0x9e3779b1u) >> 17)
#define ngx_sf_tri_may(h)    ((ngx_smartflow_tri[(h) >> 6] >> ((h) & 63)) & 1)
static uint64_t              ngx_smartflow_gate_lt;     /* "<" */
static uint64_t              ngx_smartflow_gate_br;     /* "[" */
static uint64_t              ngx_smartflow_gate_hi;     /* past ASCII */
static uint64_t              ngx_smartflow_core_mask;


/* what one pass over a text tells the scorer */
typedef struct {
    uint64_t      open;         /* signals whose gates the text opens */
    uint64_t      rot13;        /* ... that its rot13 reading opens */
    ngx_uint_t    high;         /* bytes past ASCII */
    ngx_uint_t    runs;         /* a base64 or hex run of 20 or more */
    ngx_uint_t    morse;        /* 24 or more of ".", "-", " ", "/" */
    ngx_uint_t    spaced;       /* maybe letters spelled out: a hint */
    ngx_uint_t    leet;         /* a digit between letters, not hex */
} ngx_smartflow_pass_t;


/*
 * By byte: a letter's place in the alphabet, or NGX_SF_IC_B64 for the
 * other characters of base64 and hex runs, or NGX_SF_IC_OTHER
 */
#define NGX_SF_IC_B64       26
#define NGX_SF_IC_OTHER     27

static u_char  ngx_smartflow_iclass[256];


/* the trie from node on, at s, the word's third letter */
static ngx_inline void
ngx_smartflow_gate_walk(u_char *p, size_t s, size_t len, ngx_uint_t node,
    uint64_t *open, uint64_t *rot13)
{
    u_char  k;

    for ( ;; ) {
        *open |= ngx_smartflow_gates[node].mask;
        *rot13 |= ngx_smartflow_gates[node].rot13;

        if (s == len || (k = ngx_smartflow_iclass[p[s]]) >= 26) {
            break;
        }

        node = ngx_smartflow_trie[node][k];

        if (node == 0) {
            break;
        }

        s++;
    }
}


/* a word's gates: the trie from its first two letters on */
static ngx_inline void
ngx_smartflow_gate_word(u_char *p, size_t s, size_t len, uint64_t *open,
    uint64_t *rot13)
{
    u_char      k, k2;
    ngx_uint_t  node;

    if (s + 1 == len
        || (k2 = ngx_smartflow_iclass[p[s + 1]]) >= 26)
    {
        return;                 /* no gate is shorter than two letters */
    }

    node = ngx_smartflow_pairs[ngx_smartflow_iclass[p[s]] * 26 + k2];

    for (s += 2; node; s++) {
        *open |= ngx_smartflow_gates[node].mask;
        *rot13 |= ngx_smartflow_gates[node].rot13;

        if (s == len || (k = ngx_smartflow_iclass[p[s]]) >= 26) {
            break;
        }

        node = ngx_smartflow_trie[node][k];
    }
}


/*
 * A byte at a time: texts shorter than a SIMD chunk, machines without
 * SSE2, and the reference the unit test holds the SIMD pass to.
 */

static void
ngx_smartflow_gates_open_bytes(u_char *p, size_t len,
    ngx_smartflow_pass_t *ps)
{
    size_t      i, ws, run, mrun, s1, s2;
    u_char      c, k, k2;
    uint64_t    open, rot13;
    ngx_uint_t  node, runs, morse, spaced, leet;

    ngx_memzero(ps, sizeof(ngx_smartflow_pass_t));

    open = 0;
    rot13 = 0;
    run = 0;
    runs = 0;
    mrun = 0;
    morse = 0;
    spaced = 0;
    leet = 0;

    /* the last two one-letter words, none yet */
    s1 = (size_t) -8;
    s2 = (size_t) -8;

    for (i = 0; i < len; i++) {
        c = p[i];
        k = ngx_smartflow_iclass[c];

        if (k < 26) {
            ws = i++;

            /*
             * a word: the trie from its first two letters on (no gate is
             * shorter), then the rest of it; most words leave the trie
             * within two letters
             */
            if (i < len && (k2 = ngx_smartflow_iclass[p[i]]) < 26) {
                node = ngx_smartflow_pairs[k * 26 + k2];
                i++;

                while (node) {
                    open |= ngx_smartflow_gates[node].mask;
                    rot13 |= ngx_smartflow_gates[node].rot13;

                    if (i == len || (k = ngx_smartflow_iclass[p[i]]) >= 26) {
                        break;
                    }

                    node = ngx_smartflow_trie[node][k];
                    i++;
                }

                while (i < len && ngx_smartflow_iclass[p[i]] < 26) {
                    i++;
                }
            }

            /* three one-letter words 2, 3 or 4 bytes apart each */
            if (i - ws == 1) {
                spaced |= (ws - s1 == s1 - s2 && ws - s1 >= 2
                           && ws - s1 <= 4);
                s2 = s1;
                s1 = ws;
            }

            run += i - ws;
            mrun = 0;
            i--;
            continue;
        }

        if (c == '.' || c == '-' || c == ' ' || c == '/') {
            morse |= (++mrun >= 24);

        } else {
            mrun = 0;
        }

        if (k == NGX_SF_IC_B64) {
            leet |= (c >= '0' && c <= '9' && i > 0 && i + 1 < len
                     && ngx_smartflow_iclass[p[i - 1]] < 26
                     && ngx_smartflow_iclass[p[i + 1]] < 26
                     && ((p[i - 1] | 0x20) > 'f' || (p[i + 1] | 0x20) > 'f'));
            run++;
            continue;
        }

        runs |= (run >= 20);
        run = 0;

        if (c >= 0x80) {
            ps->high = 1;
            open |= ngx_smartflow_gate_hi;

        } else if (c == '<') {
            open |= ngx_smartflow_gate_lt;

        } else if (c == '[') {
            open |= ngx_smartflow_gate_br;
        }
    }

    ps->open = open;
    ps->rot13 = rot13;
    ps->runs = runs | (run >= 20);
    ps->morse = morse;
    ps->spaced = spaced;
    ps->leet = leet;
}



#if (defined __SSE2__)

/*
 * Sixty-four bytes at a time, as four SSE2 registers whose byte masks
 * make one 64-bit mask each: letters, spaces, and whether a byte past
 * ASCII, "<" or "[" is among them.  A word starts at a letter after a
 * byte that is not one; a word of two letters or more is looked up by
 * its first three bytes in a bit set, and only where the bit is set is
 * the trie walked.
 *
 * Base64 and hex runs of 20 or more, Morse of 24 or more: a base64 run
 * has no space and Morse no letter, so a chunk where neither 16 bytes
 * without a space nor 16 without a letter end (counting those carried
 * from the chunks before) holds no such run's end, and none that is
 * carried on whose part in the chunk is 16 bytes or more.  Only other
 * chunks have their runs counted exactly, with what is carried into
 * them: from the chunk before if it was counted, else from its last 16
 * bytes, which then hold all of it.
 */

#define ngx_sf_v_eq(x, c)  _mm_cmpeq_epi8(x, _mm_set1_epi8(c))
#define ngx_sf_v_in(x, lo, hi)                                               \
    _mm_and_si128(_mm_cmpgt_epi8(x, _mm_set1_epi8((lo) - 1)),                \
                  _mm_cmpgt_epi8(_mm_set1_epi8((hi) + 1), x))
#define ngx_sf_mask(v)  ((uint64_t) (uint32_t) _mm_movemask_epi8(v))

/* the ones at the bottom of m, and at its top */
#define ngx_sf_low_ones(m)  ((m) == ~(uint64_t) 0 ? 64                       \
                             : (size_t) __builtin_ctzll(~(m)))
#define ngx_sf_top_ones(m)  ((m) == ~(uint64_t) 0 ? 64                       \
                             : (size_t) __builtin_clzll(~(m)))


/* the bits of m that start 16 ones in a row */
static ngx_inline uint64_t
ngx_smartflow_ones16(uint64_t m)
{
    m &= m >> 1;
    m &= m >> 2;
    m &= m >> 4;
    return m & (m >> 8);
}


/* the characters of base64 and hex runs, and of Morse code, in x */
static ngx_inline void
ngx_smartflow_run_masks(__m128i x, uint64_t *bm, uint64_t *mm)
{
    __m128i  b64, morse;

    b64 = _mm_or_si128(
              _mm_or_si128(ngx_sf_v_in(_mm_or_si128(x, _mm_set1_epi8(0x20)),
                                       'a', 'z'),
                           ngx_sf_v_in(x, '0', '9')),
              _mm_or_si128(_mm_or_si128(ngx_sf_v_eq(x, '+'),
                                        ngx_sf_v_eq(x, '/')),
                           _mm_or_si128(ngx_sf_v_eq(x, '-'),
                                        ngx_sf_v_eq(x, '_'))));

    morse = _mm_or_si128(_mm_or_si128(ngx_sf_v_eq(x, '.'),
                                      ngx_sf_v_eq(x, '-')),
                         _mm_or_si128(ngx_sf_v_eq(x, ' '),
                                      ngx_sf_v_eq(x, '/')));

    *bm = ngx_sf_mask(b64);
    *mm = ngx_sf_mask(morse);
}


/* the letters of x, of either case */
static ngx_inline uint64_t
ngx_sf_letters(__m128i x)
{
    return ngx_sf_mask(ngx_sf_v_in(_mm_or_si128(x, _mm_set1_epi8(0x20)),
                                   'a', 'z'));
}


#define ngx_sf_v_lb(x)  _mm_or_si128(ngx_sf_v_eq(x, '<'), ngx_sf_v_eq(x, '['))


/* the state carried from one chunk to the next */
typedef struct {
    uint64_t      open;
    uint64_t      rot13;
    uint64_t      prev;         /* the chunk before ended in a letter */
    size_t        nsrun;        /* bytes without a space at its end */
    size_t        nlrun;        /* ... without a letter */
    size_t        brun;         /* base64 and hex, if counted */
    size_t        mrun;         /* Morse, if counted */
    ngx_uint_t    counted;
    ngx_uint_t    spaced;
    ngx_uint_t    runs;
    ngx_uint_t    morse;
    ngx_uint_t    high;
    ngx_uint_t    leet;
} ngx_smartflow_chunks_t;


/* the gates "<" and "[" open in x */
static ngx_inline void
ngx_smartflow_gates_lb(__m128i x, ngx_smartflow_chunks_t *st)
{
    if (_mm_movemask_epi8(ngx_sf_v_eq(x, '<'))) {
        st->open |= ngx_smartflow_gate_lt;
    }

    if (_mm_movemask_epi8(ngx_sf_v_eq(x, '['))) {
        st->open |= ngx_smartflow_gate_br;
    }
}


/*
 * Three one-letter words of the chunk at c (one: their bits), 2, 3 or 4
 * bytes apart with the same bytes between them, hint at letters spelled
 * out; the bytes up to the third one are the chunk's
 */
static void
ngx_smartflow_spelled_hint(u_char *c, uint64_t one,
    ngx_smartflow_chunks_t *st)
{
    size_t    s, d;
    uint64_t  t;

    for (d = 2; d <= 4; d++) {
        for (t = one & (one >> d) & (one >> 2 * d); t; t &= t - 1) {
            s = (size_t) __builtin_ctzll(t);

            if (ngx_memcmp(c + s + 1, c + s + d + 1, d - 1) == 0) {
                st->spaced = 1;
                return;
            }
        }
    }
}


/*
 * The chunk at q + i of a text of len bytes: the 3 bytes after the chunk
 * may be read, and the 16 before it, which are the text's, when before
 * is set; q[len] on reads as bytes in no class.
 */
static ngx_inline void
ngx_smartflow_gates_chunk(u_char *q, size_t i, size_t len,
    ngx_uint_t before, ngx_smartflow_chunks_t *st)
{
    size_t      s;
    u_char     *d;
    uint32_t    w, h;
    uint64_t    lm, sm, cand, bm, mm, b, m, t, starts, lp, sep, one;
    __m128i     x0, x1, x2, x3, ab;
    ngx_uint_t  node;

    /* four registers, named rather than in an array, for no loop here */
    x0 = _mm_loadu_si128((__m128i *) (q + i));
    x1 = _mm_loadu_si128((__m128i *) (q + i + 16));
    x2 = _mm_loadu_si128((__m128i *) (q + i + 32));
    x3 = _mm_loadu_si128((__m128i *) (q + i + 48));

    lm = ngx_sf_letters(x0) | ngx_sf_letters(x1) << 16
         | ngx_sf_letters(x2) << 32 | ngx_sf_letters(x3) << 48;

    sm = ngx_sf_mask(ngx_sf_v_eq(x0, ' '))
         | ngx_sf_mask(ngx_sf_v_eq(x1, ' ')) << 16
         | ngx_sf_mask(ngx_sf_v_eq(x2, ' ')) << 32
         | ngx_sf_mask(ngx_sf_v_eq(x3, ' ')) << 48;

    if (_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(x0, x1),
                                       _mm_or_si128(x2, x3))))
    {
        st->high = 1;
        st->open |= ngx_smartflow_gate_hi;
    }

    ab = _mm_or_si128(_mm_or_si128(ngx_sf_v_lb(x0), ngx_sf_v_lb(x1)),
                      _mm_or_si128(ngx_sf_v_lb(x2), ngx_sf_v_lb(x3)));

    if (_mm_movemask_epi8(ab)) {
        ngx_smartflow_gates_lb(x0, st);
        ngx_smartflow_gates_lb(x1, st);
        ngx_smartflow_gates_lb(x2, st);
        ngx_smartflow_gates_lb(x3, st);
    }

    /* runs: 16 bytes without a space, or without a letter, end here */
    cand = ngx_smartflow_ones16(~sm) | ngx_smartflow_ones16(~lm)
           | (st->nsrun + ngx_sf_low_ones(~sm) >= 16)
           | (st->nlrun + ngx_sf_low_ones(~lm) >= 16);

    st->nsrun = (sm == 0) ? st->nsrun + 64 : (size_t) __builtin_clzll(sm);
    st->nlrun = (lm == 0) ? st->nlrun + 64 : (size_t) __builtin_clzll(lm);

    if (cand) {
        if (!st->counted) {
            st->brun = 0;
            st->mrun = 0;

            if (before) {
                ngx_smartflow_run_masks(
                    _mm_loadu_si128((__m128i *) (q + i - 16)), &bm, &mm);
                st->brun = ngx_sf_top_ones(bm << 48);
                st->mrun = ngx_sf_top_ones(mm << 48);
            }
        }

        ngx_smartflow_run_masks(x0, &b, &m);
        ngx_smartflow_run_masks(x1, &bm, &mm);
        b |= bm << 16;
        m |= mm << 16;
        ngx_smartflow_run_masks(x2, &bm, &mm);
        b |= bm << 32;
        m |= mm << 32;
        ngx_smartflow_run_masks(x3, &bm, &mm);
        b |= bm << 48;
        m |= mm << 48;

        if (b == ~(uint64_t) 0) {
            st->brun += 64;

        } else {
            t = ngx_smartflow_ones16(b);
            st->runs |= (st->brun + ngx_sf_low_ones(b) >= 20)
                        | ((t & (t >> 4)) != 0);
            st->brun = ngx_sf_top_ones(b);
        }

        if (m == ~(uint64_t) 0) {
            st->mrun += 64;

        } else {
            t = ngx_smartflow_ones16(m);
            st->morse |= (st->mrun + ngx_sf_low_ones(m) >= 24)
                         | ((t & (t >> 8)) != 0);
            st->mrun = ngx_sf_top_ones(m);
        }

        st->counted = 1;

    } else {
        /* a counted run carried to here ended with the chunk before */
        if (st->counted) {
            st->runs |= (st->brun >= 20);
            st->morse |= (st->mrun >= 24);
        }

        st->counted = 0;
    }

    /* the words that start in the chunk */
    lp = (lm << 1) | st->prev;
    starts = lm & ~lp;
    st->prev = lm >> 63;

    /*
     * the one-letter words (the last byte's next one taken as no
     * letter): three of them in the chunk, 2, 3 or 4 bytes apart with
     * the same bytes between them, hint at letters spelled out (three
     * across two chunks are not seen: the reading itself looks for six
     * letters, which always leave three in one chunk); prose has fewer
     * than three in most chunks
     */
    one = starts & ~(lm >> 1);
    t = one & (one - 1);

    if (t & (t - 1)) {
        ngx_smartflow_spelled_hint(q + i, one, st);
    }

    /*
     * the bytes that are no letter between two letters (the last byte's
     * next one taken as a letter) that are not a space: a digit there,
     * beside a letter past "f" (not hex), is leetspeak
     */
    sep = ~lm & lp & ((lm >> 1) | (uint64_t) 1 << 63);

    for (m = sep & ~sm; m; m &= m - 1) {
        d = q + i + __builtin_ctzll(m);     /* d[-1] is a letter */

        if (d[0] >= '0' && d[0] <= '9'
            && ngx_smartflow_iclass[d[1]] < 26
            && ((d[-1] | 0x20) > 'f' || (d[1] | 0x20) > 'f'))
        {
            st->leet = 1;
            break;
        }
    }

    /* the words of two letters or more */

    if (starts >> 63) {
        ngx_smartflow_gate_word(q, i + 63, len, &st->open, &st->rot13);
    }

    for (starts &= lm >> 1; starts; starts &= starts - 1) {
        s = i + (size_t) __builtin_ctzll(starts);

        ngx_memcpy(&w, q + s, 4);           /* little-endian, as SSE2 */
        h = ngx_sf_tri_hash(w);

        if (!ngx_sf_tri_may(h)) {
            continue;
        }

        node = ngx_smartflow_pairs32[(q[s] & 0x1f) << 5 | (q[s + 1] & 0x1f)];

        if (node) {
            ngx_smartflow_gate_walk(q, s + 2, len, node, &st->open,
                                    &st->rot13);
        }
    }
}


static void
ngx_smartflow_gates_open(u_char *p, size_t len, ngx_smartflow_pass_t *ps)
{
    size_t                  i, end, r;
    u_char                  tail[16 + 128 + 8];
    ngx_smartflow_chunks_t  st;

    if (len < 64) {
        ngx_smartflow_gates_open_bytes(p, len, ps);
        return;
    }

    ngx_memzero(&st, sizeof(ngx_smartflow_chunks_t));

    /* the chunks whose last byte is followed by 3 more of the text */
    end = (len - 3) & ~(size_t) 63;

    for (i = 0; i < end; i += 64) {
        ngx_smartflow_gates_chunk(p, i, len, i > 0, &st);
    }

    /*
     * the rest, from 3 to 66 bytes, copied after the 16 bytes before it
     * (if any) and followed by zeros, which are in no class
     */
    r = len - end;

    ngx_memzero(tail, sizeof(tail));

    if (end) {
        ngx_memcpy(tail, p + end - 16, 16 + r);

    } else {
        ngx_memcpy(tail + 16, p, r);
    }

    for (i = 0; i < r; i += 64) {
        ngx_smartflow_gates_chunk(tail + 16, i, r, end > 0 || i > 0, &st);
    }

    /* a counted run that the last chunk's last byte ends */
    if (st.counted) {
        st.runs |= (st.brun >= 20);
        st.morse |= (st.mrun >= 24);
    }

    ps->open = st.open;
    ps->rot13 = st.rot13;
    ps->high = st.high;
    ps->runs = st.runs;
    ps->morse = st.morse;
    ps->spaced = st.spaced;
    ps->leet = st.leet;
}

#endif


static ngx_int_t ngx_smartflow_gate_init(const char *g, uint64_t bit);
static size_t ngx_smartflow_run_word(u_char *out, size_t from, size_t to,
    ngx_uint_t after, u_char *runs, size_t r);
static size_t ngx_smartflow_sep_len(u_char *p, size_t i, size_t len);
static void ngx_smartflow_morse_init(void);


ngx_int_t
ngx_smartflow_injection_init(void)
{
    int          err;
    ngx_uint_t   i;
    PCRE2_SIZE   off;

    for (i = 0; i < 256; i++) {
        ngx_smartflow_iclass[i] =
            ngx_sf_is_alpha(i) ? (u_char) ((i | 0x20) - 'a')
            : ((i >= '0' && i <= '9') || i == '+' || i == '/' || i == '-'
               || i == '_') ? NGX_SF_IC_B64 : NGX_SF_IC_OTHER;
    }

    ngx_smartflow_morse_init();

    ngx_smartflow_joined = pcre2_compile((PCRE2_SPTR) NGX_SF_JOINED,
                                         PCRE2_ZERO_TERMINATED, 0, &err, &off,
                                         NULL);
    if (ngx_smartflow_joined == NULL) {
        return NGX_ERROR;
    }

    (void) pcre2_jit_compile(ngx_smartflow_joined, PCRE2_JIT_COMPLETE);

    /* the dead end, and the root */
    ngx_smartflow_trie_n = 2;

    for (i = 0; i < 26; i++) {
        ngx_smartflow_trie[1][i] = 0;
    }

    for (i = 0; i < sizeof(ngx_smartflow_signals)
                    / sizeof(ngx_smartflow_signal_t); i++)
    {
        ngx_smartflow_signals[i].re = pcre2_compile(
            (PCRE2_SPTR) ngx_smartflow_signals[i].pattern,
            PCRE2_ZERO_TERMINATED, 0, &err, &off, NULL);

        if (ngx_smartflow_signals[i].re == NULL) {
            return NGX_ERROR;
        }

        (void) pcre2_jit_compile(ngx_smartflow_signals[i].re,
                                 PCRE2_JIT_COMPLETE);

        if (ngx_smartflow_signals[i].core) {
            ngx_smartflow_core_mask |= (uint64_t) 1 << i;
        }

        if (ngx_smartflow_gate_init(ngx_smartflow_signals[i].gate,
                                    (uint64_t) 1 << i)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    for (i = 0; i < 26 * 26; i++) {
        ngx_smartflow_pairs[i] =
            ngx_smartflow_trie[ngx_smartflow_trie[1][i / 26]][i % 26];
    }

    for (i = 0; i < 26 * 26; i++) {
        ngx_smartflow_pairs32[(i / 26 + 1) * 32 + i % 26 + 1] =
            ngx_smartflow_pairs[i];
    }

    return NGX_OK;
}


/* adds a gate word (lower case) to the trie, or its rot13 reading */
static ngx_int_t
ngx_smartflow_gate_add(const char *g, size_t n, uint64_t bit, ngx_uint_t rot)
{
    size_t      k;
    ngx_uint_t  node, c, next, l[3];

    node = 1;

    for (k = 0; k < n; k++) {
        c = (u_char) g[k] - 'a';

        if (rot) {
            c = (c + 13) % 26;
        }

        if (k < 3) {
            l[k] = c;
        }

        next = ngx_smartflow_trie[node][c];

        if (next == 0) {
            if (ngx_smartflow_trie_n == NGX_SF_GATES) {
                return NGX_ERROR;
            }

            next = ngx_smartflow_trie_n++;
            ngx_smartflow_trie[node][c] = (uint16_t) next;
        }

        node = next;
    }

    /* the word's first three letters, or its two and any byte after */
    for (k = 0; k < 32; k++) {
        c = ngx_sf_tri_hash((uint32_t) (l[0] + 1) | (l[1] + 1) << 8
                            | (n > 2 ? l[2] + 1 : k) << 16);
        ngx_smartflow_tri[c >> 6] |= (uint64_t) 1 << (c & 63);

        if (n > 2) {
            break;
        }
    }

    if (rot) {
        ngx_smartflow_gates[node].rot13 |= bit;

    } else {
        ngx_smartflow_gates[node].mask |= bit;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_smartflow_gate_init(const char *g, uint64_t bit)
{
    size_t       n;
    const char  *w;

    while (*g) {
        if (*g == ' ') {
            g++;
            continue;
        }

        if (*g == '<' || *g == '[' || *g == '~') {
            *(*g == '<' ? &ngx_smartflow_gate_lt
              : *g == '[' ? &ngx_smartflow_gate_br : &ngx_smartflow_gate_hi)
                |= bit;
            g++;
            continue;
        }

        for (w = g, n = 0; *g && *g != ' '; n++, g++) {
            if (*g < 'a' || *g > 'z') {
                return NGX_ERROR;
            }
        }

        if (n < 2 || n > 7
            || ngx_smartflow_gate_add(w, n, bit, 0) != NGX_OK
            || ngx_smartflow_gate_add(w, n, bit, 1) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* the signals found in p among those open; core only: revealed text */
static uint64_t
ngx_smartflow_signals_run(u_char *p, size_t len, uint64_t open,
    ngx_uint_t core_only)
{
    uint64_t     set;
    ngx_uint_t   i;

    set = 0;

    for (i = 0; i < sizeof(ngx_smartflow_signals)
                    / sizeof(ngx_smartflow_signal_t); i++)
    {
        if ((core_only && !ngx_smartflow_signals[i].core)
            || !(open & ((uint64_t) 1 << i)))
        {
            continue;
        }

        if (ngx_smartflow_re_match(ngx_smartflow_signals[i].re, p, len, 0, 0,
                                ngx_smartflow_policy_md)
            >= 0)
        {
            set |= (uint64_t) 1 << i;
        }
    }

    return set;
}


static uint64_t
ngx_smartflow_signals_in(u_char *p, size_t len, ngx_uint_t core_only)
{
    ngx_smartflow_pass_t  ps;

    ngx_smartflow_gates_open(p, len, &ps);

    return ngx_smartflow_signals_run(p, len, ps.open, core_only);
}


/*
 * Cyrillic and Greek letters drawn like Latin ones: the two UTF-8 bytes
 * and the Latin letter
 */
static const u_char  ngx_smartflow_homoglyphs[][3] = {
    { 0xd0, 0xb0, 'a' }, { 0xd0, 0xb5, 'e' }, { 0xd0, 0xbe, 'o' },
    { 0xd1, 0x80, 'p' }, { 0xd1, 0x81, 'c' }, { 0xd1, 0x83, 'y' },
    { 0xd1, 0x85, 'x' }, { 0xd1, 0x96, 'i' }, { 0xd1, 0x98, 'j' },
    { 0xd1, 0x95, 's' }, { 0xd4, 0x81, 'd' }, { 0xd4, 0x9b, 'q' },
    { 0xd4, 0x9d, 'w' }, { 0xd2, 0xbb, 'h' }, { 0xd0, 0x90, 'A' },
    { 0xd0, 0x92, 'B' }, { 0xd0, 0x95, 'E' }, { 0xd0, 0x9a, 'K' },
    { 0xd0, 0x9c, 'M' }, { 0xd0, 0x9d, 'H' }, { 0xd0, 0x9e, 'O' },
    { 0xd0, 0xa0, 'P' }, { 0xd0, 0xa1, 'C' }, { 0xd0, 0xa2, 'T' },
    { 0xd0, 0xa5, 'X' }, { 0xd0, 0x86, 'I' }, { 0xce, 0xbf, 'o' },
    { 0xce, 0xb1, 'a' }, { 0xce, 0xbd, 'v' }, { 0xce, 0x91, 'A' },
    { 0xce, 0x92, 'B' }, { 0xce, 0x95, 'E' }, { 0xce, 0x97, 'H' },
    { 0xce, 0x99, 'I' }, { 0xce, 0x9a, 'K' }, { 0xce, 0x9c, 'M' },
    { 0xce, 0x9d, 'N' }, { 0xce, 0x9f, 'O' }, { 0xce, 0xa1, 'P' },
    { 0xce, 0xa4, 'T' }, { 0xce, 0xa7, 'X' }, { 0xce, 0xa5, 'Y' }
};


/*
 * Writes p as a reader of the raw characters would take it: tag
 * characters as the ASCII they encode, zero-width characters dropped,
 * look-alikes inside Latin words as Latin.  Counts each trick.  Letters
 * only drawn otherwise (fullwidth forms, mathematical letters and
 * digits, accents a combining mark puts on a Latin letter) are read as
 * ASCII too, counted apart: they are written for show as well.
 */
static size_t
ngx_smartflow_reveal(u_char *p, size_t len, u_char *out,
    ngx_uint_t *tags, ngx_uint_t *zw, ngx_uint_t *glyphs, ngx_uint_t *wide)
{
    size_t      i, n, k;
    u_char      prev;
    uint32_t    cp;
    ngx_uint_t  found, flag;

    n = 0;
    prev = 0;
    flag = 0;

    for (i = 0; i < len; /* void */) {

        /* U+E0000 - U+E007F: F3 A0 80 80 - F3 A0 81 BF */
        if (p[i] == 0xf3 && i + 3 < len && p[i + 1] == 0xa0
            && (p[i + 2] == 0x80 || p[i + 2] == 0x81))
        {
            k = ((p[i + 2] & 1) << 6) | (p[i + 3] & 0x3f);

            /* a flag's subdivision follows U+1F3F4 (F0 9F 8F B4) */
            if (i >= 4 && p[i - 4] == 0xf0 && p[i - 3] == 0x9f
                && p[i - 2] == 0x8f && p[i - 1] == 0xb4)
            {
                flag = 1;
            }

            if (!flag && k >= 0x20 && k < 0x7f) {
                (*tags)++;
                out[n++] = (u_char) k;
            }

            if (k == 0x7f) {
                flag = 0;       /* the cancel tag ends the flag */
            }

            i += 4;
            continue;
        }

        /* U+200B-U+200D, U+2060, U+FEFF, U+00AD inside a word */
        if ((p[i] == 0xe2 && i + 2 < len
             && ((p[i + 1] == 0x80 && p[i + 2] >= 0x8b && p[i + 2] <= 0x8d)
                 || (p[i + 1] == 0x81 && p[i + 2] == 0xa0)))
            || (p[i] == 0xef && i + 2 < len && p[i + 1] == 0xbb
                && p[i + 2] == 0xbf))
        {
            if (ngx_sf_is_alpha(prev) && i + 3 < len
                && ngx_sf_is_alpha(p[i + 3]))
            {
                (*zw)++;
            }

            i += 3;
            continue;
        }

        if (p[i] == 0xc2 && i + 1 < len && p[i + 1] == 0xad) {
            if (ngx_sf_is_alpha(prev) && i + 2 < len
                && ngx_sf_is_alpha(p[i + 2]))
            {
                (*zw)++;
            }

            i += 2;
            continue;
        }

        /* U+FF01 - U+FF5E: EF BC 81 - EF BD 9E, and U+3000 */
        if (p[i] == 0xef && i + 2 < len
            && ((p[i + 1] == 0xbc && p[i + 2] >= 0x81 && p[i + 2] <= 0xbf)
                || (p[i + 1] == 0xbd && p[i + 2] >= 0x80
                    && p[i + 2] <= 0x9e)))
        {
            (*wide)++;
            prev = (u_char) (((p[i + 1] & 1) << 6) + (p[i + 2] & 0x3f)
                             + 0x20);
            out[n++] = prev;
            i += 3;
            continue;
        }

        if (p[i] == 0xe3 && i + 2 < len && p[i + 1] == 0x80
            && p[i + 2] == 0x80)
        {
            (*wide)++;
            prev = ' ';
            out[n++] = prev;
            i += 3;
            continue;
        }

        /* U+1D400 - U+1D6A3 letters, U+1D7CE - U+1D7FF digits */
        if (p[i] == 0xf0 && i + 3 < len && p[i + 1] == 0x9d
            && p[i + 2] >= 0x90 && p[i + 2] <= 0x9f)
        {
            cp = ((uint32_t) (p[i + 2] & 0x3f) << 6) | (p[i + 3] & 0x3f);
            cp += 0x1d000;

            if (cp >= 0x1d400 && cp <= 0x1d6a3) {
                k = (cp - 0x1d400) % 52;
                prev = (u_char) (k < 26 ? 'A' + k : 'a' + k - 26);

            } else if (cp >= 0x1d7ce && cp <= 0x1d7ff) {
                prev = (u_char) ('0' + (cp - 0x1d7ce) % 10);

            } else {
                prev = 0;
            }

            if (prev) {
                (*wide)++;
                out[n++] = prev;
                i += 4;
                continue;
            }
        }

        /* U+0300 - U+036F after a Latin letter: CC 80 - CD AF */
        if (ngx_sf_is_alpha(prev) && i + 1 < len
            && ((p[i] == 0xcc && p[i + 1] >= 0x80 && p[i + 1] <= 0xbf)
                || (p[i] == 0xcd && p[i + 1] >= 0x80 && p[i + 1] <= 0xaf)))
        {
            (*wide)++;
            i += 2;
            continue;
        }

        found = 0;

        if ((p[i] == 0xd0 || p[i] == 0xd1 || p[i] == 0xd2 || p[i] == 0xd4
             || p[i] == 0xce) && i + 1 < len)
        {
            for (k = 0; k < sizeof(ngx_smartflow_homoglyphs) / 3; k++) {
                if (ngx_smartflow_homoglyphs[k][0] == p[i]
                    && ngx_smartflow_homoglyphs[k][1] == p[i + 1])
                {
                    found = 1;
                    break;
                }
            }

            /* only beside a Latin letter: Russian or Greek words stay */
            if (found && (ngx_sf_is_alpha(prev)
                          || (i + 2 < len && ngx_sf_is_alpha(p[i + 2]))))
            {
                (*glyphs)++;
                prev = ngx_smartflow_homoglyphs[k][2];
                out[n++] = prev;
                i += 2;
                continue;
            }
        }

        prev = p[i];
        out[n++] = p[i++];
    }

    return n;
}


static ngx_int_t
ngx_smartflow_b64val(u_char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }

    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }

    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }

    if (c == '+' || c == '-') {
        return 62;
    }

    if (c == '/' || c == '_') {
        return 63;
    }

    return -1;
}


static ngx_int_t
ngx_smartflow_hexval(u_char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    c |= 0x20;

    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }

    return -1;
}


/*
 * Decodes base64 and hex runs of at least 20 characters found in p into
 * out, separated by newlines, keeping only what decodes to text.
 */
static size_t
ngx_smartflow_decode_runs(u_char *p, size_t len, u_char *out, size_t max)
{
    size_t     i, j, s, n, m, printable;
    uint32_t   acc;
    ngx_int_t  v, bits, hex;

    n = 0;
    i = 0;

    while (i < len && n + 4 < max) {
        if (ngx_smartflow_b64val(p[i]) < 0) {
            i++;
            continue;
        }

        s = i;
        hex = 1;

        while (i < len && ngx_smartflow_b64val(p[i]) >= 0) {
            if (ngx_smartflow_hexval(p[i]) < 0) {
                hex = 0;
            }

            i++;
        }

        if (i - s < 20) {
            continue;
        }

        m = n;
        printable = 0;

        if (hex && ((i - s) & 1) == 0) {
            for (j = s; j + 1 < i && n < max; j += 2) {
                out[n] = (u_char) (ngx_smartflow_hexval(p[j]) * 16
                                   + ngx_smartflow_hexval(p[j + 1]));
                printable += (out[n] >= 0x20 && out[n] < 0x7f)
                             || out[n] == '\n';
                n++;
            }

        } else {
            acc = 0;
            bits = 0;

            for (j = s; j < i && n < max; j++) {
                v = ngx_smartflow_b64val(p[j]);
                acc = (acc << 6) | (uint32_t) v;
                bits += 6;

                if (bits >= 8) {
                    bits -= 8;
                    out[n] = (u_char) (acc >> bits);
                    printable += (out[n] >= 0x20 && out[n] < 0x7f)
                                 || out[n] == '\n';
                    n++;
                }
            }
        }

        /* keep it only if it reads as text */
        if (n == m || printable * 10 < (n - m) * 9) {
            n = m;
            continue;
        }

        if (n < max) {
            out[n++] = '\n';
        }
    }

    return n;
}


/*
 * Morse code: each letter's dots and dashes as the bits (1 a dash) after
 * a leading 1, at most six
 */
static const char  *ngx_smartflow_morse_codes[] = {
    "A.-", "B-...", "C-.-.", "D-..", "E.", "F..-.", "G--.", "H....", "I..",
    "J.---", "K-.-", "L.-..", "M--", "N-.", "O---", "P.--.", "Q--.-", "R.-.",
    "S...", "T-", "U..-", "V...-", "W.--", "X-..-", "Y-.--", "Z--..",
    "0-----", "1.----", "2..---", "3...--", "4....-", "5.....", "6-....",
    "7--...", "8---..", "9----.", "..-.-.-", ",--..--", "?..--..", "'.----.",
    "!-.-.--", ":---...", "=-...-"
};

static u_char  ngx_smartflow_morse_table[128];


static void
ngx_smartflow_morse_init(void)
{
    ngx_uint_t   i, v;
    const char  *c;

    for (i = 0; i < sizeof(ngx_smartflow_morse_codes) / sizeof(char *); i++) {
        v = 1;

        for (c = ngx_smartflow_morse_codes[i] + 1; *c; c++) {
            v = (v << 1) | (*c == '-');
        }

        ngx_smartflow_morse_table[v] = (u_char) ngx_smartflow_morse_codes[i][0];
    }
}


/*
 * Decodes the Morse code in p into out: letters apart by one space, words
 * by more or by "/"; what is not Morse ends a word
 */
static size_t
ngx_smartflow_morse(u_char *p, size_t len, u_char *out, size_t max)
{
    size_t      i, n, signs;
    u_char      c;
    ngx_uint_t  v, bad;

    n = 0;
    v = 1;
    signs = 0;
    bad = 0;

    for (i = 0; i <= len && n + 2 < max; i++) {
        c = (i < len) ? p[i] : ' ';

        if (c == '.' || c == '-') {
            v = (v << 1) | (c == '-');
            bad |= (++signs > 6);
            continue;
        }

        if (signs) {
            c = bad ? 0 : ngx_smartflow_morse_table[v];

            if (c) {
                out[n++] = c;
            }

            v = 1;
            signs = 0;
            bad = 0;
            continue;
        }

        /* a second space, a slash or any other byte: between words */
        if (n && out[n - 1] != ' ') {
            out[n++] = ' ';
        }
    }

    return n;
}


/*
 * Leetspeak read as letters: in each word that has letters and digits
 * (or "@", "$"), 0 as o, 1 as i (or as l, the second reading), 3 as e,
 * 4 as a, 5 as s, 7 as t, 8 as b, 9 as g, "@" as a, "$" as s.  As long
 * as the text; tells whether a 1 was read.
 */
static ngx_uint_t
ngx_smartflow_unleet(u_char *p, size_t len, u_char *out, u_char one)
{
    size_t       i, s;
    u_char       c;
    ngx_uint_t   letters, others, ones;

    static const u_char  leet[] = "oi2eas6tbg";

    ones = 0;

    for (i = 0; i < len; /* void */) {
        c = p[i];

        if (!ngx_sf_is_alpha(c) && !(c >= '0' && c <= '9') && c != '@'
            && c != '$')
        {
            out[i++] = c;
            continue;
        }

        /* a word of letters, digits, "@" and "$" */
        s = i;
        letters = 0;
        others = 0;

        while (i < len
               && (ngx_sf_is_alpha(p[i]) || (p[i] >= '0' && p[i] <= '9')
                   || p[i] == '@' || p[i] == '$'))
        {
            if (ngx_sf_is_alpha(p[i])) {
                letters++;

            } else if (p[i] != '2' && p[i] != '6') {
                others++;
            }

            i++;
        }

        for ( /* void */ ; s < i; s++) {
            c = p[s];

            if (letters && others && !ngx_sf_is_alpha(c)) {
                if (c == '1') {
                    ones = 1;
                    c = one;

                } else {
                    c = (c == '@') ? 'a' : (c == '$') ? 's'
                                   : leet[c - '0'];
                }
            }

            out[s] = c;
        }
    }

    return ones;
}


/*
 * Letters spelled out one to three bytes apart, "I g n o r e  a l l",
 * "i.g.n.o.r.e a.l.l", "I. G. N. O. R. E." or "i - g - n - o - r - e":
 * each such word of two letters or more (one-letter words with one and
 * the same separator between them, of spaces and signs, no letter,
 * digit nor line break; a separator after the last one goes with it, and
 * is a gap if it has a space) is written as its letters, and the gap
 * after it as one space.  The rest is copied.  out may be p: it is
 * never longer.  Tells in *found whether a word of six letters or more
 * was spelled out: only such a word is sure to be hinted at by the
 * gates' pass, wherever the chunks fall.
 *
 * The runs of spelled-out words are written to runs too, a "." apart:
 * each is the word of letters right before it (if a space or more
 * apart), a tab, its words a space apart, a vertical tab, and the word
 * right after it ("ignore\tallpreviousinstructions\v"), their length to
 * *rn: at most 3 times the text's (a run took 3 bytes or more, and a
 * word is written at most twice, after one run and before the next).
 */
static size_t
ngx_smartflow_unspace(u_char *p, size_t len, u_char *out, u_char *runs,
    size_t *rn, ngx_uint_t *found)
{
    size_t   i, n, w, r, joint, end, sl;
    u_char   c, prev, sep[3];

    n = 0;
    r = 0;
    joint = (size_t) -1;
    end = (size_t) -1;
    prev = ' ';

    for (i = 0; i < len; /* void */) {
        c = p[i];

        sl = (ngx_sf_is_alpha(c) && !ngx_sf_is_alpha(prev))
             ? ngx_smartflow_sep_len(p, i + 1, len) : 0;

        if (sl == 0) {
            prev = c;
            out[n++] = c;
            i++;
            continue;
        }

        /* out may be p: the separator is kept apart */
        sep[0] = p[i + 1];
        sep[1] = (sl > 1) ? p[i + 2] : 0;
        sep[2] = (sl > 2) ? p[i + 3] : 0;
        w = n;

        for ( ;; ) {
            out[n++] = p[i++];

            if (i + sl < len && ngx_sf_sep_at(p + i, sep, sl)
                && ngx_sf_is_alpha(p[i + sl])
                && (i + sl + 1 == len || !ngx_sf_is_alpha(p[i + sl + 1])))
            {
                i += sl;
                continue;
            }

            break;
        }

        if (n - w >= 6) {
            *found = 1;
        }

        if (w == joint) {
            /* after the word before and its spaces: the same run */
            runs[r++] = ' ';

        } else {
            if (end != (size_t) -1) {
                runs[r++] = '\v';
                r = ngx_smartflow_run_word(out, end, w, 1, runs, r);
                runs[r++] = '.';
            }

            r = ngx_smartflow_run_word(out, end == (size_t) -1 ? 0 : end,
                                       w, 0, runs, r);
            runs[r++] = '\t';
        }

        r = ngx_cpymem(runs + r, out + w, n - w) - runs;
        end = n;
        joint = (size_t) -1;

        /* "i.g.n.o.r.e." and "I. G. N. O. R. E. all" */
        if (i + sl <= len && ngx_sf_sep_at(p + i, sep, sl)) {
            i += sl;

            if (memchr(sep, ' ', sl) != NULL) {
                out[n++] = ' ';
                joint = n;
            }
        }

        if (i < len && p[i] == ' ') {
            if (joint != n) {
                out[n++] = ' ';
                joint = n;
            }

            while (i < len && p[i] == ' ') {
                i++;
            }
        }

        prev = ' ';
    }

    if (end != (size_t) -1) {
        runs[r++] = '\v';
        r = ngx_smartflow_run_word(out, end, n, 1, runs, r);
    }

    *rn = r;

    return n;
}


/*
 * The separator at p[i] after a letter that is a word of its own, if
 * another such letter follows it: 1 to 3 bytes, no letter, digit nor
 * line break; 0 if none
 */
static size_t
ngx_smartflow_sep_len(u_char *p, size_t i, size_t len)
{
    size_t  k;
    u_char  c;

    for (k = 0; k < 3 && i + k < len; k++) {
        c = p[i + k];

        if (ngx_sf_is_alpha(c)) {
            break;
        }

        if ((c >= '0' && c <= '9') || c == '\n' || c == '\r') {
            return 0;
        }
    }

    if (k == 0 || i + k >= len || !ngx_sf_is_alpha(p[i + k])
        || (i + k + 1 < len && ngx_sf_is_alpha(p[i + k + 1])))
    {
        return 0;
    }

    return k;
}


/*
 * The word of letters (32 at most) a run of spelled-out words has next
 * to it in out[from .. to), spaces apart: the first one after "from"
 * (after), or the last one before "to" (before); written to runs at r.
 * The new r.
 */
static size_t
ngx_smartflow_run_word(u_char *out, size_t from, size_t to, ngx_uint_t after,
    u_char *runs, size_t r)
{
    size_t  s, e;

    if (after) {
        for (s = from; s < to && out[s] == ' '; s++) { /* void */ }

        for (e = s; e < to && e - s < 32 && ngx_sf_is_alpha(out[e]); e++) {
            /* void */
        }

        if (s == from || e == s) {
            return r;
        }

        return ngx_cpymem(runs + r, out + s, e - s) - runs;
    }

    for (e = to; e > from && out[e - 1] == ' '; e--) { /* void */ }

    for (s = e; s > from && e - s < 32 && ngx_sf_is_alpha(out[s - 1]); s--) {
        /* void */
    }

    if (e == to || e == s) {
        return r;
    }

    return ngx_cpymem(runs + r, out + s, e - s) - runs;
}


static void
ngx_smartflow_rot13(u_char *p, size_t len, u_char *out)
{
    size_t  i;
    u_char  c;

    for (i = 0; i < len; i++) {
        c = p[i];

        if (c >= 'a' && c <= 'z') {
            c = 'a' + (c - 'a' + 13) % 26;

        } else if (c >= 'A' && c <= 'Z') {
            c = 'A' + (c - 'A' + 13) % 26;
        }

        out[i] = c;
    }
}


/*
 * The text with each line break between two lines of prose as a space.
 * The line before must not be indented and must end in a letter or a
 * comma; the next must not be indented and must start with a lowercase
 * word followed by a space, a comma or its end (not "key:", "name(",
 * "a.b" nor "x ="), so that code, YAML, logs, lists and paragraphs keep
 * their lines apart.  As long as the text.
 */
static void
ngx_smartflow_unwrap(u_char *p, size_t len, u_char *out)
{
    size_t  i, k, ls, e;
    u_char  c;

    ngx_memcpy(out, p, len);

    ls = 0;

    for (i = 0; i < len; i++) {
        if (p[i] != '\n') {
            continue;
        }

        e = i;
        k = ls;
        ls = i + 1;

        if (e > k && p[e - 1] == '\r') {
            e--;
        }

        if (e == k || p[k] == ' ' || p[k] == '\t') {
            continue;
        }

        c = p[e - 1];

        if (!(ngx_sf_is_alpha(c) || c >= 0x80 || c == ',')) {
            continue;
        }

        k = i + 1;

        if (k >= len || p[k] < 'a' || p[k] > 'z') {
            continue;
        }

        while (k < len && (ngx_sf_is_alpha(p[k]) || p[k] >= 0x80)) {
            k++;
        }

        if (k < len && p[k] != ' ' && p[k] != ',' && p[k] != '\r'
            && p[k] != '\n')
        {
            continue;
        }

        while (k < len && p[k] == ' ') {
            k++;
        }

        if (k < len && (p[k] == '=' || p[k] == ':')) {
            continue;
        }

        out[i] = ' ';

        if (e < i) {
            out[e] = ' ';
        }
    }
}


/*
 * An instruction override without word boundaries in the runs of
 * spelled-out words (ngx_smartflow_unspace()) that takes letters of a
 * run: one only in the word before a run (up to its tab) or after it
 * (from its vertical tab), such as "skipRules", is none.  Those words
 * have 32 letters at most, so that each is told in 33 bytes.
 */
static ngx_uint_t
ngx_smartflow_joined_in(u_char *runs, size_t rn)
{
    size_t       off, s, e, t;
    PCRE2_SIZE  *ov;

    ov = pcre2_get_ovector_pointer(ngx_smartflow_policy_md);

    for (off = 0;
         off < rn
         && ngx_smartflow_re_match(ngx_smartflow_joined, runs, rn, off, 0,
                                   ngx_smartflow_policy_md)
            >= 0;
         off = s + 1)
    {
        s = ov[0];
        e = ov[1];

        /* in the word before: letters from its end up to the tab */
        for (t = e; t < rn && t - e <= 32 && ngx_sf_is_alpha(runs[t]); t++) {
            /* void */
        }

        if (t < rn && runs[t] == '\t') {
            continue;
        }

        /* in the word after: letters back from its start to the tab */
        for (t = s; t > 0 && s - t <= 32 && ngx_sf_is_alpha(runs[t - 1]); t--)
        {
            /* void */
        }

        if (t > 0 && runs[t - 1] == '\v') {
            continue;
        }

        return 1;
    }

    return 0;
}


/*
 * The signals not yet in set that the text read without its spelling
 * tricks shows, added to set; tells whether a 1 was read as a letter
 */
static ngx_uint_t
ngx_smartflow_spelled(u_char *p, size_t len, ngx_uint_t leet, u_char one,
    uint64_t *set)
{
    size_t                n, rn;
    ngx_uint_t            ones, found;
    ngx_smartflow_pass_t  ps;

    ones = 0;
    found = 0;

    if (leet) {
        ones = ngx_smartflow_unleet(p, len, ngx_smartflow_inj_buf, one);
        p = ngx_smartflow_inj_buf;
    }

    n = ngx_smartflow_unspace(p, len, ngx_smartflow_inj_buf,
                              ngx_smartflow_runs_buf, &rn, &found);

    /* letters spelled out only in short words: a hint of no account */
    if (!leet && !found) {
        return 0;
    }

    ngx_smartflow_gates_open(ngx_smartflow_inj_buf, n, &ps);

    *set |= ngx_smartflow_signals_run(ngx_smartflow_inj_buf, n,
                                      ps.open & ~*set, 0);

    /* the runs of spelled-out words: the rest of the text has its spaces */
    if (found && !(*set & 1)
        && ngx_smartflow_joined_in(ngx_smartflow_runs_buf, rn))
    {
        *set |= 1;
    }

    return ones;
}


static void
ngx_smartflow_score_window(u_char *p, size_t len, uint64_t *set,
    ngx_uint_t *hidden, uint64_t *revealed_set)
{
    size_t                n;
    uint64_t              found;
    ngx_uint_t            tags, zw, glyphs, wide;
    ngx_smartflow_pass_t  ps;

    ngx_smartflow_gates_open(p, len, &ps);

    found = ngx_smartflow_signals_run(p, len, ps.open, 0);
    *set |= found;

    /*
     * a phrase wrapped across lines ("ignore\nall previous instructions")
     * reads as one: the signals whose gates are open and that did not
     * match run again on the text with its line breaks as spaces
     */
    if ((ps.open & ~found) && memchr(p, '\n', len) != NULL) {
        ngx_smartflow_unwrap(p, len, ngx_smartflow_inj_buf);
        *set |= ngx_smartflow_signals_run(ngx_smartflow_inj_buf, len,
                                          ps.open & ~found, 0);
    }

    tags = 0;
    zw = 0;
    glyphs = 0;
    wide = 0;

    /*
     * words spelled out a letter at a time, or in leetspeak, read as the
     * words they spell score as those do; a 1 is read as i, then as l
     */
    if ((ps.spaced || ps.leet)
        && ngx_smartflow_spelled(p, len, ps.leet, 'i', set))
    {
        (void) ngx_smartflow_spelled(p, len, 1, 'l', set);
    }

    /* the tricks that hide text all need bytes past ASCII */
    if (ps.high) {
        n = ngx_smartflow_reveal(p, len, ngx_smartflow_inj_buf, &tags, &zw,
                                 &glyphs, &wide);

        if (tags) {
            *hidden |= 1;
        }

        if (zw >= 2) {
            *hidden |= 2;
        }

        if (glyphs >= 2) {
            *hidden |= 4;
        }

        /*
         * letters only drawn otherwise (fullwidth, mathematical, accented)
         * are how some scripts and titles are written: their reading
         * scores at the signals' own weights, not as obfuscation
         */
        if (tags || zw || glyphs) {
            *revealed_set |= ngx_smartflow_signals_in(ngx_smartflow_inj_buf,
                                                      n, 1);

        } else if (wide) {
            *set |= ngx_smartflow_signals_in(ngx_smartflow_inj_buf, n, 0);
        }
    }

    if (ps.runs) {
        n = ngx_smartflow_decode_runs(p, len, ngx_smartflow_inj_buf,
                                      NGX_SF_INJ_WINDOW);
        if (n) {
            *revealed_set |= ngx_smartflow_signals_in(ngx_smartflow_inj_buf,
                                                      n, 1);
        }
    }

    if (ps.morse) {
        n = ngx_smartflow_morse(p, len, ngx_smartflow_inj_buf,
                                NGX_SF_INJ_WINDOW);
        if (n) {
            *revealed_set |= ngx_smartflow_signals_in(ngx_smartflow_inj_buf,
                                                      n, 1);
        }
    }

    /* rot13 is read only where its reading opens a gate */
    if (ps.rot13 & ngx_smartflow_core_mask) {
        ngx_smartflow_rot13(p, len, ngx_smartflow_inj_buf);
        *revealed_set |= ngx_smartflow_signals_run(ngx_smartflow_inj_buf, len,
                                                   ps.rot13, 1);
    }
}


void
ngx_smartflow_injection_score(u_char *p, size_t len,
    ngx_smartflow_injection_t *res)
{
    size_t      off, w;
    uint64_t    set, revealed;
    ngx_uint_t  i, score, best, hidden;

    set = 0;
    revealed = 0;
    hidden = 0;

    /* windows that overlap, so that a phrase across a border is seen */
    for (off = 0; off < len || off == 0; off += NGX_SF_INJ_WINDOW
                                               - NGX_SF_INJ_OVERLAP)
    {
        w = len - off;
        if (w > NGX_SF_INJ_WINDOW) {
            w = NGX_SF_INJ_WINDOW;
        }

        ngx_smartflow_score_window(p + off, w, &set, &hidden, &revealed);

        if (off + w >= len) {
            break;
        }
    }

    score = 0;
    best = 0;
    res->top = NULL;

    for (i = 0; i < sizeof(ngx_smartflow_signals)
                    / sizeof(ngx_smartflow_signal_t); i++)
    {
        if (set & ((uint64_t) 1 << i)) {
            score += ngx_smartflow_signals[i].weight;

            if (ngx_smartflow_signals[i].weight > best) {
                best = ngx_smartflow_signals[i].weight;
                res->top = ngx_smartflow_signals[i].name;
            }
        }
    }

    /* what only the revealed text says was hidden on purpose */
    if (revealed & ~set) {
        score += NGX_SF_INJ_ENCODED;

        if (NGX_SF_INJ_ENCODED >= best) {
            best = NGX_SF_INJ_ENCODED;
            res->top = "obfuscation";
        }
    }

    if (hidden & 1) {
        score += NGX_SF_INJ_TAGS;

        if (NGX_SF_INJ_TAGS >= best) {
            best = NGX_SF_INJ_TAGS;
            res->top = "invisible";
        }
    }

    if (hidden & 2) {
        score += NGX_SF_INJ_ZEROWIDTH;

        if (res->top == NULL) {
            res->top = "invisible";
        }
    }

    if (hidden & 4) {
        score += NGX_SF_INJ_HOMOGLYPH;

        if (res->top == NULL) {
            res->top = "homoglyph";
        }
    }

    res->score = score > 100 ? 100 : score;
}
