"""Message templates of the synthetic card-issuer intent dataset (see ``intent_data.py``). Written by us, for
this project: no real customer wrote any of them.

Each intent has nine templates. ``intent_data`` trains on the first ones and holds the last ones out, so the
held-out split measures whether a classifier learned the intent rather than the wording. Slots in braces are
filled with Faker values: ``{name}``, ``{amount}``, ``{merchant}``, ``{date}``, ``{last4}``, ``{city}``,
``{address}``, ``{country}``, ``{points}``, ``{limit}``, and ``{card}`` (a way of naming the card).
"""

from __future__ import annotations

TEMPLATES: dict[str, tuple[str, ...]] = {
    "card_lost_stolen": (
        "I lost my {card} somewhere in {city} yesterday.",
        "My wallet was stolen and my {card} ending in {last4} was in it.",
        "I can't find my {card} anywhere, please block it.",
        "Someone took my purse at {merchant}, my {card} is gone.",
        "I think I left my {card} at {merchant} on {date}, can you freeze it?",
        "Please cancel my {card}, it was stolen on {date}.",
        "Misplaced my {card} while travelling, I need a replacement sent to {address}.",
        "My bag got snatched this morning and the {card} was inside it, what do I do?",
        "Where is my {card}? It has gone missing since {date}, I'd like a new one.",
    ),
    "dispute_charge": (
        "I want to dispute a charge of {amount} from {merchant}.",
        "{merchant} billed me {amount} twice on {date}.",
        "There is a charge from {merchant} for {amount} but I returned the item.",
        "I was charged {amount} for a subscription I cancelled with {merchant}.",
        "The amount on my statement from {merchant} is wrong, it should not be {amount}.",
        "Please open a dispute, {merchant} never delivered my order worth {amount}.",
        "I don't agree with the {amount} {merchant} took on {date}, the service was never provided.",
        "Can you reverse the {amount} payment to {merchant}? They overcharged me.",
        "I'd like to contest a transaction: {merchant}, {date}, {amount}. I got a refund promise but nothing came.",
    ),
    "payment_due_date": (
        "When is my next payment due?",
        "What is the due date for my {card} bill?",
        "I need to know by when I have to pay my statement.",
        "Is my payment due on {date}?",
        "When do I have to pay the minimum amount this month?",
        "What's the deadline for my credit card payment?",
        "Which day of the month must the balance be paid by?",
        "How long do I have until my bill has to be settled?",
        "Could you remind me of the last day to make a payment without a late fee?",
    ),
    "fraud_report": (
        "I see a transaction of {amount} at {merchant} that I did not make.",
        "Someone used my {card} without permission in {city}.",
        "There are purchases from {country} on my account and I have never been there.",
        "I got a text about a {amount} charge at {merchant}, that wasn't me.",
        "My {card} ending {last4} has unauthorized charges on {date}.",
        "I think my card details were hacked, there are payments I don't recognize.",
        "Unknown charges keep appearing, {merchant} {amount}, I never shopped there. Fraud!",
        "Somebody is spending on my account: {amount} in {city} on {date} and I have my card with me.",
        "Report suspicious activity please, a {amount} online purchase I never authorized.",
    ),
    "limit_increase": (
        "Can I get a credit limit increase to {limit}?",
        "I would like to raise the limit on my {card}.",
        "Please increase my spending limit, {limit} would be great.",
        "How do I request a higher credit line?",
        "My limit is too low for my needs, can you bump it up?",
        "Is it possible to extend my credit limit before {date}?",
        "I need more credit available on my card, ideally up to {limit}.",
        "Could my maximum be raised? I keep hitting the cap.",
        "Requesting a bigger credit line of {limit} on the {card} ending {last4}.",
    ),
    "address_change": (
        "I moved, please update my address to {address}, {city}.",
        "I need to change my mailing address.",
        "My new home address is {address}.",
        "Please send my statements to {address} from now on.",
        "How do I update where you send my {card} mail?",
        "Update my billing address to {address}, {city} please.",
        "We relocated to {city} last month, the new street is {address}.",
        "Change the address on file for {name} to {address}.",
        "My residence changed; correspondence should now go to {address}.",
    ),
    "balance_inquiry": (
        "What is my current balance?",
        "How much do I owe on my {card}?",
        "Can you tell me my outstanding balance?",
        "What's the balance on the card ending in {last4}?",
        "How much credit do I have left to spend?",
        "Please tell me what I currently owe.",
        "I want to check the amount I have used so far this month.",
        "How much is left on my account right now?",
        "What do I owe in total as of {date}?",
    ),
    "card_activation": (
        "I just received my new {card}, how do I activate it?",
        "Please activate my {card} ending {last4}.",
        "My replacement card arrived, I need to turn it on.",
        "How can I activate the card you mailed to me?",
        "The new {card} came on {date} but it does not work yet.",
        "I want to start using my new card, what do I do to activate?",
        "Got the card in the post today, it says it must be activated first.",
        "Activation please for the {card} that was delivered to {address}.",
        "How do I enable the card I received? Payments at {merchant} get declined.",
    ),
    "pin_reset": (
        "I forgot my PIN.",
        "How do I reset the PIN on my {card}?",
        "Please help me change my card PIN.",
        "My PIN got blocked after too many tries at {merchant}.",
        "I need a new PIN for the card ending in {last4}.",
        "Can I set a different PIN for my {card}?",
        "I don't remember the four-digit code for my card.",
        "The ATM in {city} locked me out, wrong code entered three times.",
        "Send me a way to choose a new secret number for my {card}.",
    ),
    "travel_notice": (
        "I'm travelling to {country} on {date}, please note it on my account.",
        "I will be abroad in {country} next week, I don't want my card blocked.",
        "Please add a travel notice for {city} from {date}.",
        "Going on holiday to {country}, will my {card} work there?",
        "I'd like to let you know I'll use my card in {country}.",
        "Set up a travel alert please, trip to {country} starting {date}.",
        "Heading overseas soon, make sure payments in {country} are not declined.",
        "My family and I fly to {city} on {date}, flag my {card} for foreign use.",
        "Inform the fraud team I am going to be in {country} for two weeks.",
    ),
    "close_account": (
        "I want to close my credit card account.",
        "Please cancel my {card} permanently, I no longer need it.",
        "How do I shut down my account?",
        "I'd like to terminate my card and close everything.",
        "Close the account for {name}, I'm switching banks.",
        "I don't use this {card} anymore, please close it.",
        "End my membership and close the card, the annual fee is too high.",
        "Please deactivate the account for good, I'm done with it.",
        "What are the steps to cancel my account completely?",
    ),
    "rewards_redemption": (
        "How do I redeem my reward points?",
        "I have {points} points, can I use them for a flight?",
        "Can I turn my cashback into a statement credit?",
        "I want to use my rewards at {merchant}.",
        "How many points do I need for a gift card?",
        "Please redeem {points} points for cash.",
        "What can I get with the {points} points on my {card}?",
        "I'd like to exchange my loyalty points for travel miles.",
        "Trade in my rewards balance for a voucher please.",
    ),
}

# Ways a customer names the card, filled into ``{card}``.
CARD_NAMES = ("card", "credit card", "Visa card", "Mastercard", "card", "platinum card", "cc")

OPENERS = ("", "", "", "Hi, ", "Hello, ", "Hey - ", "Good morning. ", "Hi there! ", "Dear support, ",
           "{name} here. ", "Quick question: ", "Urgent: ")
CLOSERS = ("", "", "", " Thanks.", " Thank you!", " Please help.", " Can you help?", " thx", " ASAP please.",
           " Regards, {name}", " Appreciate it.")
