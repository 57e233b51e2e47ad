"""Hand-written card-issuer customer messages with holes ``{KIND}`` for labelled values (see `heldout`).

Written to sound like real customers and agents (disputes, lost cards, payments, limits, travel, account
changes), with words that brush against the recognizers' context words ("card", "number", "account",
"order", "reference") in places where no value follows. The dev and held-out lists share no template.
"""

DEV_TEMPLATES: tuple[str, ...] = (
    "Hi, my card {CARD} was declined at the pharmacy this morning, can you check?",
    "I lost my wallet yesterday. Please block card number {CARD} and send a new one.",
    "Refund the duplicate charge to {IBAN} please, the order number is 55123.",
    "My SSN is {SSN} and my date of birth is {DATE_OF_BIRTH}.",
    "You can reach me on {PHONE} after 6pm, or email {EMAIL}.",
    "Card {CARD} exp {CARD_EXPIRY} cvv {CARD_CVV}",
    "Routing number {ABA_ROUTING}, account ending in 4432 (checking).",
    "Sort code {UK_SORT_CODE}, I moved banks last month.",
    "My national insurance number is {UK_NINO} if you need it for the form.",
    "The login from {IP_ADDRESS} was not me!! please lock everything",
    "Our app config still had {SECRET} in the log, rotate it",
    "Travelling to Portugal next week, passport number {PASSPORT}, please don't block my card.",
    "Social insurance number {CA_SIN} for the tax slip.",
    "Please raise my limit to 5000, my card is {CARD} and my phone is {PHONE}.",
    "Dispute: charged twice, card {CARD}, reference 2024-11-03 / 88213.",
    "Wire it to {IBAN}, thanks. My phone number is {PHONE}.",
)

HELDOUT_TEMPLATES: tuple[str, ...] = (
    "hey so i tried paying with {CARD} and it said invalid?? i have money on it",
    "Please cancel the card ending 1234, the full number is {CARD}, it was stolen in Rome.",
    "Two cards on file: {CARD} and {CARD}. Remove the second one.",
    "Transfer 250 EUR from my savings to {IBAN} (rent for December).",
    "IBAN {IBAN}\nBIC DEUTDEFF\nReference: invoice 4471",
    "For verification: {SSN}, born {DATE_OF_BIRTH}, phone {PHONE}.",
    "my number is {PHONE} call me back please, it's about the late fee",
    "New email address for statements: {EMAIL}",
    "card {CARD} / {CARD_EXPIRY} / {CARD_CVV} - please charge the annual fee to this one",
    "The ABA routing no. is {ABA_ROUTING} for the direct deposit form.",
    "Account switch: sort code {UK_SORT_CODE}, and my NI number is {UK_NINO}.",
    "Suspicious sign-in from {IP_ADDRESS} at 03:12, was that you guys?",
    "The vendor emailed a connection string {SECRET} to the whole team.",
    "I'll be abroad until March; passport no. {PASSPORT} in case you need to verify me.",
    "My SIN is {CA_SIN}, the employer needs it for the T4.",
    "Hello, I want to dispute order 1120-3381 from last week, I never received it.",
    "Why was my card charged 19.99 twice on 2024-10-02? Transaction ref 7781239.",
    "I'm going to Japan from 12/03 to 28/03, please note it on my account.",
    "My limit is 3,500.00 but I need 5,000.00 for the holidays.",
    "Can you send the replacement to my new address? Same card, just lost it on the bus.",
    "Payment of 1,250.00 to {IBAN} failed with code 0411, can you check?",
    "Reach me at {EMAIL} or {PHONE}.",
)
