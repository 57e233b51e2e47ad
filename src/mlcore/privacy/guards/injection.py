"""Prompt-injection check that reads intent: phrases that address the assistant's *own* instructions or role.

OWASP LLM01 ("prompt injection") attacks share a shape, whatever the words: they speak to the model about its
instructions ("ignore your previous instructions", "set aside what you were told"), ask it to disclose them
("print your system prompt"), give it a new role without limits ("you are now an AI with no rules"), or fake
the chat template ("<|im_start|>system", "[INST]"). A customer almost never does: "ignore the previous
*email*", "tell me your instructions *for resetting my PIN*", "developer mode *on my phone*", "Hi, this is Dan"
all name the customer's own things or a bank task. So each rule here pairs an action with an object that is
the assistant's configuration (its instructions, rules, prompt, role), excludes first-person objects ("my
previous instructions") and task complements ("your instructions for ..."), and exists in English, Spanish,
French, German, Italian and Portuguese.

The rules run on several readings of the text (see `normalize` and `decode`): the skeleton (confusables,
invisible characters, accents, case), the joined reading (split, spaced, dotted and glued words, leetspeak),
rot13, and whatever base64 / hex / URL-encoded runs decode to. Weights w_i of the distinct rules that fired
combine as 1 - prod(1 - w_i) (independent evidence); weak hints (a fiction frame, a claim to be the developer,
a fake ``<system>`` tag) stay below the 0.7 default threshold alone and block only together.

This is a filter for the common phrasings, measured on a labelled set with a held-out part
(`guards.data.eval_set`), not a defence against an adaptive attacker: keep least-privilege tools behind it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlcore.privacy.guards.decode import decoded_views
from mlcore.privacy.guards.normalize import make_vocab, views

_FIRST_PERSON = r"(?:my|our|mi|mis|mon|ma|mes|nos|notre|mein|meine|meinen|meiner|unsere|mia|mie|miei|minha|minhas|meu|meus)"


def _gap(n: int, *, own: bool = False) -> str:
    """Up to `n` words between two parts of a phrase; with `own`, none of them may be a first-person word."""
    guard = rf"(?!{_FIRST_PERSON}\b)" if own else ""
    return rf"(?:\W+{guard}\w+){{0,{n}}}?\W+"


def _alt(*words: str) -> str:
    return "(?:" + "|".join(words) + ")"


_TASK = r"(?!\W+(?:for|on|to|about|regarding|when|if|how|in case|so that)\b)"
_CUSTOMER_OWN = r"(?!\W+(?:i|we)\W+(?:gave|sent|wrote|made|left|set|provided|had|mentioned|asked)\b)"

# one (verbs, qualifiers, nouns) triple per language for "ignore your previous instructions"
_OVERRIDE = {
    "en": (r"ignore|ignoring|disregard|forget|override|overrule|bypass|abandon|drop|discard|ditch|throw (?:away|out)|"
           r"set aside|put aside|push aside|pay no attention to|do not (?:follow|obey|apply)|don'?t (?:follow|obey)|"
           r"stop (?:following|obeying)|no longer (?:follow|obey)|neglect|erase|reset|delete|wipe|scrap|nullify|"
           r"suspend|deactivate|skip",
           r"your|all|any|every|previous|prior|above|earlier|preceding|foregoing|initial|original|old|existing|"
           r"system|developer|default|built-in|those|these|the bank'?s|this bank'?s",
           r"instructions?|instructed|directives?|directions|guidance|guidelines|rules|prompts?|programming|training|"
           r"constraints|restrictions|polic(?:y|ies)|orders|commands|system prompt|system message|configuration|"
           r"guardrails|safeguards|ethics|limitations|conditioning"),
    "es": (r"ignora|ignore|ignorar|ignoren|olvida|olvide|olvidar|olviden|descarta|descarte|omite|omita|no sigas|"
           r"no siga|deja de seguir|deje de seguir|haz caso omiso (?:de|a)|pasa por alto|desobedece",
           r"tus|sus|tu|su|todas|anteriores|previas|iniciales|originales|del sistema",
           r"instrucciones|reglas|indicaciones|directrices|ordenes|prompt|programacion|restricciones|normas|directivas"),
    "fr": (r"ignore|ignorez|ignorer|oublie|oubliez|oublier|ne tiens plus compte|ne tenez plus compte|"
           r"fais abstraction|laisse tomber|ne suis plus|ne suivez plus|ne respecte plus|ne respectez plus|"
           r"passe outre|outrepasse",
           r"tes|vos|ton|votre|toutes|precedentes|anterieures|initiales|originales|du systeme|systeme",
           r"instructions|consignes|regles|directives|prompt|programmation|restrictions|ordres"),
    "de": (r"ignoriere|ignorier|ignorieren sie|vergiss|vergessen sie|missachte|missachten sie|uberschreibe|"
           r"verwirf|verwerfen sie|befolge|befolgen sie|hor auf|horen sie auf",
           r"alle|deine|ihre|vorherigen|bisherigen|vorigen|fruheren|obigen|ursprunglichen|system",
           r"anweisungen|regeln|richtlinien|vorgaben|instruktionen|systemprompt|system-prompt|prompt|"
           r"programmierung|einschrankungen|befehle"),
    "it": (r"ignora|ignori|ignorate|dimentica|dimentichi|dimenticate|non seguire|smetti di seguire|trascura|"
           r"non tenere conto|non rispettare",
           r"tutte|le tue|tue|sue|precedenti|iniziali|originali|di sistema|del sistema",
           r"istruzioni|regole|direttive|prompt|indicazioni|programmazione|restrizioni|ordini"),
    "pt": (r"ignore|ignora|ignorar|esqueca|esquece|esquecer|nao siga|nao sigas|deixe de seguir|desconsidere|"
           r"despreze|desobedeca",
           r"todas|suas|tuas|sua|tua|anteriores|previas|iniciais|originais|do sistema",
           r"instrucoes|regras|diretrizes|orientacoes|prompt|programacao|restricoes|ordens"),
}

_REVEAL = {
    "en": (r"reveal\w*|show\w*|print\w*|display\w*|output\w*|repeat\w*|recite|dump|leak\w*|share|tell me|tell us|"
           r"give me|write (?:out|down)|list|disclose\w*|expose|paste|spell out|translate|summari[sz]e|"
           r"read (?:me|out|back)|forward|send|copy|what (?:is|are|was|were|does|do)|what'?s|whats|describe",
           r"(?:system|hidden|initial|original|secret|confidential|internal|developer|pre-?|starting|operating)"
           r" ?(?:prompts?|instructions|message|rules|directives|guidelines|configuration)|system ?prompt|"
           r"(?:full|exact|complete|entire) (?:system )?prompt|"
           r"your (?:prompt|instructions|configuration|rules|guidelines|programming|directives|context(?: window)?|"
           r"setup)" + _TASK + r"|(?:the )?(?:text|words|messages?|content|prompt) (?:above|before this|at the start)|"
           r"everything (?:above|before this)|(?:the )?(?:conversation|chat) history|(?:all )?previous messages"),
    "es": (r"muestra(?:me)?|muestre(?:me)?|revela(?:me)?|revele(?:me)?|dime|digame|imprime|imprima|repite|repita|"
           r"ensename|dame|deme|cuales son|cual es",
           r"(?:el )?(?:prompt|mensaje) (?:del|de) sistema|(?:tus|sus|las) instrucciones (?:ocultas|secretas|iniciales|"
           r"originales|del sistema|internas)|instrucciones (?:ocultas|secretas|del sistema|internas)|(?:tu|su) prompt"),
    "fr": (r"revele(?:z)?|affiche(?:z)?|montre(?:z)?(?:-moi)?|donne(?:z)?-moi|repete(?:z)?|dis-moi|dites-moi|"
           r"imprime(?:z)?|quel est|quelles sont",
           r"(?:ton|votre|le) prompt(?: systeme| du systeme)?|prompt systeme|(?:tes|vos|les) (?:instructions|consignes)"
           r" (?:cachees|secretes|initiales|systeme|internes)"),
    "de": (r"zeige|zeig|zeigen sie|verrate|verraten sie|gib|geben sie|nenne|nennen sie|wiederhole|drucke|was ist|"
           r"wie lautet",
           r"(?:deinen|ihren|den) (?:system-?prompt|system prompt|prompt)|systemprompt|systemanweisungen|"
           r"(?:deine|ihre|die) (?:versteckten|geheimen|ursprunglichen|internen) (?:anweisungen|regeln)"),
    "it": (r"mostra(?:mi)?|rivela(?:mi)?|dimmi|stampa|ripeti|dammi|qual e|quali sono",
           r"(?:il )?(?:tuo )?prompt (?:di|del) sistema|(?:le )?(?:tue )?istruzioni (?:nascoste|segrete|iniziali|"
           r"di sistema|interne)|(?:il )?tuo prompt"),
    "pt": (r"mostre|mostra|revele|revela|diga|me de|imprima|repita|quais sao|qual e",
           r"(?:o )?(?:seu )?prompt do sistema|(?:suas|tuas|as) instrucoes (?:ocultas|secretas|iniciales|iniciais|"
           r"do sistema|internas)|(?:seu|teu) prompt"),
}

_ROLE_INTRO = (r"you are|you're|youre|you will be|you'll be|act(?:ing)? as|behave (?:as|like)|pretend (?:to be|you are|"
               r"you're|that you are)|role-?play as|play the role of|imagine you are|imagine you're|become|"
               r"respond as|answer as|reply as|speak as|you must act as|you have become|simulate")
_ROLE_BAD = (r"unrestricted|unfiltered|uncensored|jailbroken|jailbreak|evil|malicious|rogue|dan|stan|hacker|criminal|"
             r"fraudster|do anything now|different (?:ai|model|assistant)|no longer (?:bound|restricted|limited)|"
             r"free from|not bound|in developer mode|(?:ai|model|assistant|bot|chatbot|llm)\W+(?:\w+\W+){0,3}?"
             r"(?:without|with no|free (?:of|from)|that (?:has|have) no|that (?:ignores|never refuses|can do anything))")
_NO_RULE_NOUNS = (r"rules|restrictions|guidelines|filters?|limitations|ethics|morals|censorship|boundaries|refusals?|"
                  r"guardrails|safeguards|policies|limits")
_FOREIGN_RULE_NOUNS = (r"restricciones|reglas|filtros?|censura|restrictions?|regles?|filtres?|censure|einschrankungen|"
                       r"regeln|filter|zensur|restrizioni|regole|filtri|restricoes|regras|limites|limiti")
_BENIGN_TAIL = (r"(?!\W+(?:on|for|against|about|when|in|to|with)\W+(?:using|the|my|your|card|cash|international|"
                r"foreign|payments?|charging|withdraw\w*|travel\w*|this)\b)")

_RULES_SRC: tuple[tuple[str, float, str], ...] = (
    ("ignore_instructions", 0.9, "|".join(
        [rf"\b(?:{v}){_gap(3, own=True)}(?:{q}){_gap(2, own=True)}(?:{n})\b{_CUSTOMER_OWN}" for v, q, n in
         _OVERRIDE.values()]
        + [rf"\b(?:{_OVERRIDE['en'][0]}){_gap(2, own=True)}(?:{_OVERRIDE['en'][2]}){_gap(2)}(?:you (?:were|have been|"
           r"'ve been|got) (?:given|told|taught|trained)|(?:they|the bank|the developers?|someone) gave you|given to you|"
           r"of (?:this|the) (?:bank|company|system|operator|chat))",
           rf"\b(?:{_OVERRIDE['en'][0]}){_gap(1)}(?:what|everything|anything|all|whatever|things) (?:you (?:were|have "
           r"been|'ve been|had been|got) (?:told|instructed|taught|given|trained|programmed)|(?:they|someone) "
           r"(?:told|taught|gave) you)",
           rf"\b(?:put|set|push|move|leave)\W+(?:{_OVERRIDE['en'][1]})\W+(?:\w+\W+){{0,2}}?(?:{_OVERRIDE['en'][2]})"
           r"\W+(?:to (?:one|the) side|aside|behind)"])),
    ("ignore_above", 0.6, rf"\b(?:{_OVERRIDE['en'][0]})\W+(?:the|everything|all|anything)\W+(?:above|before this)\b"),
    ("instructions_void", 0.8,
     rf"\b(?:{_OVERRIDE['en'][1]}|the)\W+(?:\w+\W+){{0,2}}?(?:{_OVERRIDE['en'][2]})\W+(?:\w+\W+){{0,3}}?"
     r"(?:(?:is|are|were|was) (?:now )?(?:void|null|cancell?ed|obsolete|outdated|invalid|revoked|suspended|lifted|"
     r"a test|fake)|(?:no longer|don'?t|do not|does not|doesn'?t) (?:apply|applies|matter|valid|count|in effect))|"
     r"\b(?:whatever|everything|anything|all) you (?:were|have been|'ve been) (?:told|instructed|given)\W+"
     r"(?:\w+\W+){0,8}?(?:no longer|doesn'?t|does not) (?:applies|apply|matters?|count)"),
    ("new_instructions", 0.75,
     r"(?<!the )\b(?:new|real|actual|true|updated|revised|additional|secret|override|priority|hidden) (?:system )?"
     r"(?:instructions?|rules|directives?|prompt|orders|commands)\b\W*(?::|are\W+(?:as follows|below|:)|below|"
     r"follows?\b|for (?:the|you|this|our) (?:assistant|ai|bot|model|chatbot|llm))|"
     r"\byour (?:new|real|true|actual|only) (?:role|task|purpose|goal|job|identity|instructions?|directive|mission|"
     r"persona)\b\W+(?:is|are|:|will be)"),
    ("reveal_system_prompt", 0.85, "|".join(rf"\b(?:{v}){_gap(6, own=True)}(?:{t})" for v, t in _REVEAL.values())),
    ("role_override", 0.8,
     rf"\b(?:{_ROLE_INTRO}){_gap(5)}(?:{_ROLE_BAD})\b|\byou(?: are|'re|re) no longer (?:a|an|the|bound|restricted|"
     r"limited|required)\b|\byour new (?:role|persona|identity)\b|\bdo anything now\b|\b(?:dan|stan|dude) mode\b|"
     r"\b(?:respond|answer|reply|act|speak) as dan\b"),
    ("role_intro", 0.5,
     r"\b(?:ahora eres|a partir de ahora eres|desde ahora eres|actua como|finge|haz de cuenta|comportate como|"
     r"tu es maintenant|a partir de maintenant,? tu es|desormais tu es|agis comme|fais comme si|fais semblant|"
     r"joue le role|du bist jetzt|ab jetzt bist du|ab sofort bist du|tu so,? als|spiele die rolle|verhalte dich wie|"
     r"ora sei|d'ora in poi sei|da ora in poi sei|fingi|comportati come|agisci come|fai finta|agora voce e|"
     r"a partir de agora voce e|aja como|finja|faca de conta|comporte-se como)\b"),
    ("mode_switch", 0.75,
     r"\b(?:enable|enabled|enter|entering|activate|activated|switch (?:to|into)|turn on|go into|now in|you are in|"
     r"you're in|unlock|engage)\W+(?:the\W+)?(?:developer|dev|god|admin|administrator|sudo|root|debug|jailbreak|dan|"
     r"unrestricted|unfiltered|maintenance|super ?user|evil)\W+mode\b(?!\W+(?:on|in|of) (?:my|the|our|your|his|"
     r"her) (?:phone|device|android|iphone|app|tablet|computer|laptop|settings|portal))|"
     r"\b(?:developer|god|admin|sudo|jailbreak|dan) mode (?:enabled|activated|engaged)\b"),
    ("no_rules", 0.75,
     rf"\b(?:ai|assistant|model|chatbot|bot|llm|you|yourself|answer\w*|respond\w*|reply|replies|act|behave|talk|"
     rf"speak|pretend|imagine|version){_gap(4)}(?:no|without(?: any)?|free (?:of|from)|zero)\W+(?:\w+\W+)?"
     rf"(?:{_NO_RULE_NOUNS})\b{_BENIGN_TAIL}|"
     rf"\b(?:ia|ki|ai|assistant|asistente|assistente|modelo|modele|modell|modello)\W+(?:\w+\W+)?(?:sin|sans|ohne|"
     rf"senza|sem)\W+(?:\w+\W+)?(?:{_FOREIGN_RULE_NOUNS})\b"),
    ("no_rules_foreign", 0.6,
     rf"\b(?:sin|sans|ohne|senza|sem)\W+(?:\w+\W+)?(?:{_FOREIGN_RULE_NOUNS})\b|\b(?:no tienes|no tener|"
     rf"n'?avais aucune|n'as aucune|aucune|keine|non avere|non hai|nao tem|nao ter|nao tens)\W+(?:\w+\W+)?"
     rf"(?:{_FOREIGN_RULE_NOUNS})\b"),
    ("disable_safety", 0.75,
     rf"\b(?:bypass|disable|turn off|switch off|deactivate|remove|ignore|override|circumvent|get around|lift|drop|"
     rf"break|evade|skip){_gap(3)}(?:(?:your|the|all|any|its)\W+)?(?:safety (?:settings|rules|filters?|guidelines|"
     rf"protocols?)|safeguards?|guardrails?|content (?:filters?|polic(?:y|ies)|moderation)|moderation|censorship|"
     rf"ethical (?:guidelines|rules|constraints|limits)|ethics|alignment)\b|"
     rf"\b(?:bypass|disable|turn off|switch off|deactivate|remove|circumvent|get around|drop|evade)\W+your\W+"
     rf"(?:filters?|restrictions|limitations|programming|rules)\b{_BENIGN_TAIL}"),
    ("chat_template_tokens", 0.8,
     (r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id|begin_of_text)\|>|"
      r"\[/?inst\]|<</?sys>>|<start_of_turn>|<end_of_turn>").replace("_", "[ _]")),  # views read "_" as a space
    ("fake_role_tag", 0.5,
     r"</?(?:system|sys|assistant|admin|developer|instructions?|user)>|^\s*(?:\[|\(|\{|#{1,4}\s*|\*\*)\s*(?:system|"
     r"admin|developer|root|operator)(?:\s+(?:message|prompt|note|override|instructions?|update|command))?\s*"
     r"(?:\]|\)|\}|:|\*\*)"),
    ("turn_injection", 0.75,
     r"(?:^|\n)\s*(?:human|user|assistant|system|ai)\s*:[^\n]*\n(?:[^\n]*\n)*?\s*(?:assistant|system|ai)\s*:"),
    ("privilege_request", 0.5,
     r"\b(?:grant|give|elevate)\b(?:\W+\w+){0,3}?\W+(?:admin|administrator|root|full|elevated|superuser|"
     r"unrestricted)\W+(?:access|rights|privileges|permissions)\b"),
    ("authority_claim", 0.45,
     r"\b(?:i am|i'm|im|this is)\W+(?:your|the|an?)\W+(?:\w+\W+)?(?:developer|creator|programmer|admin|administrator|"
     r"owner|operator)\b|\bthis is the (?:admin|security|developer|it) team\b|\bauthori[sz]ation code\b"),
    ("obey_me", 0.45,
     r"\byou (?:now )?(?:work for|obey|answer to|serve|belong to) (?:only )?me\b|\bobey (?:only )?(?:me|my "
     r"(?:orders|commands|instructions))\b|\bdo (?:exactly|only|just) (?:what|as) i (?:say|tell you|command)\b|"
     r"\byou must obey\b|\bfrom now on,? you (?:only )?(?:obey|follow|listen to)\b|\b(?:ahora )?(?:me )?obedeces\b|"
     r"\bobedece solo\b|\bdu gehorchst\b|\bmi obbedisci\b"),
    ("exfiltration", 0.6,
     r"\b(?:send|forward|post|upload|e-?mail|transmit|copy|leak|exfiltrate)\W+(?:\w+\W+){0,6}?(?:conversation|"
     r"chat history|chat log|messages|system prompt|context|transcript|customer (?:data|database|records)|database)"
     r"\W+(?:\w+\W+){0,4}?(?:to|at)\W+(?:https?://|\S+@\S+)"),
    ("markdown_exfiltration", 0.75, r"!\[[^\]]*\]\(\s*https?://[^)\s]*[?&][\w-]+="),
    ("other_customers_data", 0.55,
     r"\b(?:card numbers?|balances?|account (?:numbers?|data)|data|details|records|pins?)\W+(?:of|for|from)\W+"
     r"(?:other|all|every|another|the other)\W+(?:customers?|clients?|users?|cardholders?)\b|\b(?:other|all) "
     r"(?:customers|clients|users)'?\W+(?:card|account|data|balances?|numbers?)|\bcustomer database\b|"
     r"\b(?:de|d') ?(?:otros|autres|outros) clientes?\b|\banderer kunden\b|\bdegli altri clienti\b|"
     r"\bdes autres clients\b|\bdonnees des clients\b"),
    ("fiction_frame", 0.3,
     r"\blet'?s play a game\b|\bin a (?:fictional|hypothetical|made-up) (?:story|world|scenario)\b|"
     r"\bhypothetically\b|\bfor a (?:story|novel|movie)\b|\brole-?play\b|\bgrand(?:ma|mother)\b[^.]*\bused to\b"),
    ("encoded_cue", 0.5,
     r"\b(?:decode|decipher|unscramble|rot-?13|base ?64|hex)\b(?:\W+\w+){0,8}?\W+(?:and|then)\W+(?:\w+\W+){0,2}?"
     r"(?:follow|obey|do|execute|run|carry out|act on|comply|perform)\b"),
    ("canary_phrase", 0.5,
     r"\b(?:say|print|output|write|reply|respond with)\W+(?:\w+\W+){0,2}?['\"]?i (?:have been|am|was) "
     r"(?:pwned|hacked|jailbroken|owned)|\band instead\W+(?:say|print|output|respond|reply|write)\b"),
)

INJECTION_RULES: tuple[tuple[str, float, re.Pattern[str]], ...] = tuple(
    (name, weight, re.compile(src, re.MULTILINE)) for name, weight, src in _RULES_SRC)
_FUNCTION_WORDS = ("a i you your the all and to of me my is are now be what were told given this that it in "
                   "on with from as no any every so then say do from previous prior above").split()
VOCAB: tuple[str, ...] = tuple(sorted({w for _, _, src in _RULES_SRC for w in re.findall(r"[a-z]{2,}", src)}
                                      | set(_FUNCTION_WORDS)))
_VOCAB = make_vocab(VOCAB)


@dataclass(frozen=True)
class InjectionReport:
    """Score in [0, 1], the rules that fired, and where: ``"text"``, ``"joined"``, ``"rot13"``, ``"base64"``..."""

    score: float
    fired: tuple[str, ...]
    where: tuple[str, ...]


def readings(text: str) -> list[tuple[str, str]]:
    """Every ``(source, normalised text)`` the rules read: plain and joined views, rot13, decoded payloads."""
    plain, glued = views(text, _VOCAB)
    out = [("text", plain), ("joined", glued)]
    for enc, decoded in decoded_views(text):
        if enc == "rot13":
            out.append(("rot13", views(decoded, _VOCAB)[0]))
        else:
            out += [(enc, v) for v in views(decoded, _VOCAB)]
    seen: set[str] = set()
    return [(source, r) for source, r in out if not (r in seen or seen.add(r))]  # each distinct reading once


def detect_injection(text: str) -> InjectionReport:
    """Run every rule on every reading; combine the distinct rules that fired as 1 - prod(1 - w)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    fired: dict[str, float] = {}
    where: list[str] = []
    for source, reading in readings(text):
        for name, weight, pattern in INJECTION_RULES:
            if name not in fired and pattern.search(reading):
                fired[name] = weight
                if source not in where:
                    where.append(source)
    keep = 1.0
    for w in fired.values():
        keep *= 1.0 - w
    return InjectionReport(1.0 - keep, tuple(fired), tuple(where))


def injection_score(text: str) -> tuple[float, list[str]]:
    """Combined score in [0, 1] and the names of the rules that fired (the pre-issue-14 signature)."""
    report = detect_injection(text)
    return report.score, list(report.fired)
